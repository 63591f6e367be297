"""The tinygpt task: the stdlib byte corpus, training the tiny preset, the cache, and the Task's pieces."""
import json
import math
import random
import re
from dataclasses import replace

import pytest
import torch

from condense.core.task import Task
from condense.data.manpages import MAN_ROOT, page_files, text_corpus
from condense.data.stdlib_source import corpus, separator, split_of
from condense.errors import CondenseError
from condense.tasks import get_task
from condense.tasks import tinygpt as tg
from condense.tasks.gpt import GPT, generate, num_params
from condense.train.loop import lr_factor

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


@pytest.mark.parametrize("name", sorted(tg.PRESETS))
def test_preset_trains_with_warm_up_then_cosine_decay_to_the_floor(name):
    """The engine's schedule for a preset equals the hand-written one the presets were tuned with."""
    p = tg.PRESETS[name]
    cfg = p.fit_config()
    assert (cfg.steps, cfg.lr, cfg.seed, cfg.grad_clip) == (p.steps, p.lr, p.seed, p.grad_clip)
    assert (cfg.optimizer, cfg.betas, cfg.weight_decay, cfg.decay_matrices_only) == ("adamw", (0.9, 0.95),
                                                                                     p.weight_decay, True)

    def reference(step: int) -> float:
        if step < p.warmup_steps:
            return (step + 1) / p.warmup_steps
        t = (step - p.warmup_steps) / (p.steps - p.warmup_steps)
        return p.min_lr_ratio + (1 - p.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    for step in range(p.steps):
        assert lr_factor(step, cfg) == pytest.approx(reference(step), rel=1e-12, abs=1e-15)
    assert lr_factor(p.steps, cfg) == pytest.approx(p.min_lr_ratio)


# -- cache ------------------------------------------------------------------------------------------------------
def _reference_training(p: tg.TinyGPTPreset) -> GPT:
    """The hand-written loop the cached weights were first made with (before training moved onto condense.train)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(p.seed)
        model = GPT(p.model)
    data = tg.random_windows(tg.byte_tensor("train", p.train_bytes), p.batch_size, T, seed=p.seed)
    params = list(model.parameters())
    opt = torch.optim.AdamW([{"params": [q for q in params if q.dim() >= 2], "weight_decay": p.weight_decay},
                             {"params": [q for q in params if q.dim() < 2], "weight_decay": 0.0}],
                            lr=p.lr, betas=(0.9, 0.95))
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(p.train_threads or threads)  # as train_tinygpt: the bits depend on the thread count
    for step, batch in zip(range(p.steps), data):
        if step < p.warmup_steps:
            lr = p.lr * (step + 1) / p.warmup_steps
        else:
            t = (step - p.warmup_steps) / max(1, p.steps - p.warmup_steps)
            lr = p.lr * (p.min_lr_ratio + (1 - p.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = tg.lm_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, p.grad_clip)
        opt.step()
    torch.set_num_threads(threads)
    return model.eval()


def test_training_reproduces_the_cached_weights_and_leaves_the_callers_rng_alone(monkeypatch):
    """Bit for bit what the loop the cache format was made with gives (else `_FORMAT` must be bumped)."""
    short = replace(PRESET, steps=PRESET.warmup_steps + 5)  # the warm-up, where the LRs' last bits differ, and more
    monkeypatch.setitem(tg.PRESETS, "tiny", short)
    torch.manual_seed(123)
    random.seed(123)
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    model, meta = tg.train_tinygpt("tiny")
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state
    assert len(meta["train"]["losses"]) == short.steps and not model.training
    reference = _reference_training(short).state_dict()  # a second, independent run from the same seed
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())


def test_second_load_reads_the_cache_without_training(trained, monkeypatch):
    model, meta = trained
    weights, meta_path = tg.cache_paths("tiny")  # the fixture's cache folder is still active
    assert weights.exists() and meta_path.exists()
    assert PRESET.key() in weights.name and "tiny" in weights.name
    assert meta["key"] == PRESET.key() and meta["params"] == sum(p.numel() for p in model.parameters())

    def no_training(*args, **kwargs):
        raise AssertionError("trained although the cache holds the model")

    monkeypatch.setattr(tg, "train_tinygpt", no_training)
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


def test_cache_key_follows_the_preset_config_and_the_format(monkeypatch):
    assert PRESET.key() == tg.TinyGPTPreset(**{**PRESET.__dict__}).key()
    assert replace(PRESET, steps=PRESET.steps + 1).key() != PRESET.key()
    assert tg.PRESETS["default"].key() != PRESET.key()
    key = PRESET.key()
    monkeypatch.setattr(tg, "_FORMAT", tg._FORMAT - 1)  # weights cached by older training code use other files
    assert PRESET.key() != key


def test_unknown_preset_lists_the_valid_ones():
    for call in (tg.make_task, tg.load_tinygpt):
        with pytest.raises(CondenseError, match="default, tiny"):
            call("huge")


# -- the task ---------------------------------------------------------------------------------------------------
def make_tiny_task() -> Task:
    return tg.make_task("tiny")


def test_making_the_task_trains_nothing(fresh_cache, monkeypatch):
    monkeypatch.setattr(tg, "train_tinygpt", lambda *a, **k: pytest.fail("make_task trained a model"))
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


def test_large_preset_is_a_memory_bound_model_of_at_least_25m_parameters_without_training_it():
    """Built from its config only (untrained): >= 25 M parameters, >= 100 MB of fp32 weights."""
    p = tg.PRESETS["large"]
    n = num_params(GPT(p.model))
    assert n >= 25_000_000 and n * 4 >= 100_000_000
    assert p.model.n_embd % 32 == 0 and p.steps * p.batch_size * p.model.block_size <= p.train_bytes


@pytest.mark.skipif(len(page_files(MAN_ROOT)) < 100, reason="this machine has few English man pages")
def test_offsource_metric_is_the_same_score_on_manual_page_text_none_of_it_in_training():
    p = tg.get_preset("tiny")
    task = tg.make_task("tiny")
    assert task.offsource_metric == "bits_per_byte_offsource"
    torch.manual_seed(0)
    model = GPT(p.model).eval()  # untrained weights: the score only has to be the same computation
    out = task.metrics(model)
    n = p.eval_windows * p.model.block_size + 1
    text = text_corpus(n)
    want = tg.evaluate_lm(model, torch.tensor(list(text), dtype=torch.uint8), p.model.block_size, p.eval_windows)
    assert {k: out[k + "_offsource"] for k in want} == pytest.approx(want, rel=1e-6)
    assert set(out) == {"bits_per_byte", "perplexity", "loss"} | {k + "_offsource" for k in want}
    train = corpus("train", p.train_bytes).tobytes()
    lines = [ln for ln in text.decode().splitlines() if len(ln) > 60]
    assert len(lines) > 5 and not [ln for ln in lines if ln[:60].encode() in train]  # no sentence in training
