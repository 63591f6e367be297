"""The tinygpt task: the stdlib byte corpus, training the tiny preset, the cache, and the Task's pieces."""
import json
import math
import re

import pytest
import torch

from condense.core.task import Task
from condense.data.stdlib_source import corpus, separator, split_of
from condense.errors import CondenseError
from condense.tasks import get_task
from condense.tasks import tinygpt as tg
from condense.tasks.gpt import GPT, generate

PRESET = tg.PRESETS["tiny"]
T = PRESET.model.block_size


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny preset trained once into an empty cache: (model, cached metadata with loss curve and metrics)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONDENSE_CACHE", str(tmp_path_factory.mktemp("tinygpt-cache")))
        model = tg.load_tinygpt("tiny")
        meta = json.loads(tg.cache_paths("tiny")[1].read_text())
        yield model, meta


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CONDENSE_CACHE", str(tmp_path))
    return tmp_path


# -- corpus -----------------------------------------------------------------------------------------------------
def _files(data) -> set[str]:
    return set(re.findall(rb"\n# file: (\S+)\n", data.tobytes()))


def test_corpus_split_by_file_is_disjoint_and_capped():
    train, val = corpus("train", 300_000), corpus("val", 100_000)
    assert train.dtype.name == "uint8" and train.shape == (300_000,) and val.shape[0] <= 100_000
    first = re.match(rb"\n# file: (\S+)\n", train.tobytes()).group(1).decode()
    assert train[: len(separator(first))].tobytes() == separator(first)
    train_files, val_files = _files(train), _files(val)
    assert train_files and val_files and not (train_files & val_files)
    assert all(split_of(f.decode()) == "train" for f in train_files)
    assert all(split_of(f.decode()) == "val" for f in val_files)
    assert corpus("val", 100_000) is val  # cached
    with pytest.raises(CondenseError, match="train, val"):
        corpus("test", 10)


# -- training ---------------------------------------------------------------------------------------------------
def test_training_tiny_lowers_loss_and_beats_uniform_bytes(trained):
    model, meta = trained
    losses = meta["train"]["losses"]
    assert len(losses) == PRESET.steps
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first
    bpb = meta["metrics"]["bits_per_byte"]
    assert bpb < 6.0  # uniform over 256 bytes is 8 bits
    metrics = make_tiny_task().metrics(model)
    assert metrics["bits_per_byte"] == pytest.approx(bpb, rel=1e-6)
    assert metrics["perplexity"] == pytest.approx(2 ** bpb, rel=1e-9)
    assert metrics["loss"] == pytest.approx(bpb * math.log(2), rel=1e-9)


def test_evaluate_matches_model_loss_on_the_same_windows(trained):
    model, _ = trained
    val = tg.byte_tensor("val", PRESET.val_bytes)
    n = 5
    chunk = torch.stack([val[i * T: i * T + T + 1] for i in range(n)]).long()  # non-overlapping windows
    with torch.no_grad():
        _, loss = model(chunk[:, :-1], chunk[:, 1:])
    got = tg.evaluate_lm(model, val, T, max_windows=n, batch_size=2)
    assert got["loss"] == pytest.approx(float(loss), rel=1e-5)
    with torch.no_grad():
        assert float(tg.lm_loss(model, (chunk[:, :-1], chunk[:, 1:]))) == pytest.approx(float(loss), rel=1e-6)


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    lrs = [tg.cosine_lr(s, 100, 1.0, 10, 0.1) for s in range(100)]
    assert lrs[9] == pytest.approx(1.0) and lrs[0] == pytest.approx(0.1)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert tg.cosine_lr(100, 100, 1.0, 10, 0.1) == pytest.approx(0.1)


# -- cache ------------------------------------------------------------------------------------------------------
def test_training_is_deterministic():
    def run():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(PRESET.seed)
            model = GPT(PRESET.model)
        data = tg.random_windows(tg.byte_tensor("train", PRESET.train_bytes), 4, T, seed=PRESET.seed)
        return tg.train_lm(model, data, 5, warmup_steps=2, progress=False), model.state_dict()

    (losses_a, state_a), (losses_b, state_b) = run(), run()
    assert losses_a == losses_b
    assert all(torch.equal(v, state_b[k]) for k, v in state_a.items())


def test_second_load_reads_the_cache_without_training(trained, monkeypatch):
    model, meta = trained
    weights, meta_path = tg.cache_paths("tiny")  # the fixture's cache folder is still active
    assert weights.exists() and meta_path.exists()
    assert PRESET.key() in weights.name and "tiny" in weights.name
    assert meta["key"] == PRESET.key() and meta["params"] == sum(p.numel() for p in model.parameters())

    def no_training(*args, **kwargs):
        raise AssertionError("trained although the cache holds the model")

    monkeypatch.setattr(tg, "train_lm", no_training)
    again = tg.load_tinygpt("tiny", train_if_missing=False)
    assert not again.training
    reference = model.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in again.state_dict().items())


def test_missing_cache_without_training_names_the_fix(fresh_cache):
    with pytest.raises(CondenseError, match="condense prepare tinygpt --task-option preset=tiny"):
        tg.load_tinygpt("tiny", train_if_missing=False)
    assert not list(fresh_cache.iterdir())


def test_corrupt_cache_names_the_fix(fresh_cache):
    weights, meta = tg.cache_paths("tiny")
    weights.write_bytes(b"not safetensors")
    meta.write_text("{}")
    with pytest.raises(CondenseError, match="condense prepare tinygpt --task-option preset=tiny"):
        tg.load_tinygpt("tiny")


def test_cache_key_follows_the_preset_config():
    from dataclasses import replace
    assert PRESET.key() == tg.TinyGPTPreset(**{**PRESET.__dict__}).key()
    assert replace(PRESET, steps=PRESET.steps + 1).key() != PRESET.key()
    assert tg.PRESETS["default"].key() != PRESET.key()


def test_unknown_preset_lists_the_valid_ones():
    for call in (tg.make_task, tg.load_tinygpt):
        with pytest.raises(CondenseError, match="default, tiny"):
            call("huge")


# -- the task ---------------------------------------------------------------------------------------------------
def make_tiny_task() -> Task:
    return tg.make_task("tiny")


def test_making_the_task_trains_nothing(fresh_cache, monkeypatch):
    monkeypatch.setattr(tg, "train_lm", lambda *a, **k: pytest.fail("make_task trained a model"))
    task = tg.make_task("default")
    assert (task.name, task.primary_metric, task.higher_is_better) == ("tinygpt", "bits_per_byte", False)
    assert task.batch_sizes == (1, 32) and task.description
    assert not list(fresh_cache.iterdir())
    via_registry = get_task("tinygpt", preset="tiny")
    assert via_registry.spec == {"name": "tinygpt", "options": {"preset": "tiny"}}


def test_inputs_are_deterministic_val_windows():
    task = make_tiny_task()
    batch = task.batch(3)
    assert batch.dtype == torch.long and batch.shape == (3, T)
    val = tg.byte_tensor("val", PRESET.val_bytes)
    assert torch.equal(batch[1], val[T: 2 * T].long())
    assert torch.equal(task.batch(3), batch)


def test_calibration_and_train_data_come_from_train_bytes():
    task = make_tiny_task()
    calib = list(task.calibration_data())
    assert len(calib) == 16 and all(b.shape == (8, T) and b.dtype == torch.long for b in calib)
    assert torch.equal(torch.cat(calib), torch.cat(list(task.calibration_data())))
    train = tg.byte_tensor("train", PRESET.train_bytes)
    row = calib[0][0].to(torch.uint8)
    windows = train.unfold(0, T, 1)  # every window of the train bytes, (N-T+1, T)
    assert bool((windows == row).all(dim=1).any())
    x, y = next(iter(task.train_data()))
    assert x.shape == y.shape == (PRESET.batch_size, T)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_task_generate_counts_tokens_and_runs_the_model(trained):
    model, _ = trained
    task = make_tiny_task()
    assert task.generate(model, 2, 7) == 14
    out = task.run_batch(model, task.batch(2))
    assert out.shape == (2, T, 256)
    prompt = torch.tensor([list(tg.PROMPT)])
    assert torch.equal(generate(model, prompt, T - 4), generate(model, prompt, T - 4, use_cache=False))
