"""The digits task's model: trained by condense's training engine, deterministic, cached under a versioned key."""
import json

import pytest
import torch

from condense.data.digits import digits_split
from condense.tasks import digits as dg

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dg.DigitsConfig(channels=(8, 8, 16), epochs=2)  # trains in well under a second


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CONDENSE_CACHE", str(tmp_path))
    return tmp_path


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


def test_fit_config_runs_every_epoch_with_one_cycle_adamw():
    cfg = dg.DigitsConfig(epochs=3, batch_size=64, lr=2e-3, seed=4).fit_config(1437)
    assert cfg.steps == 3 * 23  # 1437 images: 22 full batches of 64 and one of 29 per epoch
    assert (cfg.lr, cfg.seed, cfg.optimizer, cfg.schedule, cfg.grad_clip) == (2e-3, 4, "adamw", "onecycle", None)
    assert cfg.weight_decay == 1e-4 and not cfg.decay_matrices_only


def test_training_goes_through_the_engine_and_is_deterministic(monkeypatch):
    calls = []
    real_fit = dg.fit

    def spy(model, batches, loss_fn, cfg, **kw):
        calls.append(cfg)
        return real_fit(model, batches, loss_fn, cfg, **kw)

    monkeypatch.setattr(dg, "fit", spy)
    a, b = dg.train_digits(SMALL), dg.train_digits(SMALL)
    data = digits_split()
    assert calls == [SMALL.fit_config(data.x_train.shape[0])] * 2
    assert _same(a, b) and not a.training
    assert dg.accuracy(a, data.x_test, data.y_test) > 0.3  # it learns: chance is 0.1 (2 epochs give ~0.45)


def test_cache_is_keyed_by_config_and_training_format(fresh_cache, monkeypatch):
    model = dg.load_digits_model(SMALL)
    files = sorted(p.name for p in fresh_cache.iterdir())
    assert len(files) == 2 and files[0].startswith("digits-") and files[1].endswith(".safetensors")
    meta = json.loads((fresh_cache / files[0]).read_text())
    assert meta["format"] == dg._FORMAT and meta["config"]["channels"] == list(SMALL.channels)

    def trains(cfg):
        raise Trained

    monkeypatch.setattr(dg, "train_digits", trains)
    assert _same(dg.load_digits_model(SMALL), model)  # read from the cache, not trained again

    monkeypatch.setattr(dg, "_FORMAT", dg._FORMAT - 1)  # weights from older training code are not reused
    with pytest.raises(Trained):
        dg.load_digits_model(SMALL)


class Trained(Exception):
    pass
