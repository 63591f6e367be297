"""The built-in `tinygpt` task: a byte-level GPT trained on the standard library's sources (our generative load).

Why: compression of generative models is judged on two things this task measures with real data offline —
held-out bits per byte (quality) and decode tokens/s with a KV cache (speed). Held-out bytes of other stdlib files
are still Python, like the training text, so the same figures on English manual-page text (`*_offsource`) show
whether a step keeps quality on text of another kind. The model is trained once per
preset on first use and cached under `cache_dir()` as safetensors + JSON, so later runs start in seconds.

Example:
    >>> from condense.tasks.tinygpt import make_task
    >>> task = make_task("tiny")          # cheap: nothing is trained until a model is built
    >>> task.primary_metric, task.higher_is_better
    ('bits_per_byte', False)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from rich.console import Console
from safetensors.torch import load_file, save_file
from torch import nn

from condense.core.atomic import atomic_write, atomic_write_json
from condense.core.paths import cache_dir
from condense.core.task import Task
from condense.data.stdlib_source import corpus
from condense.errors import ArtifactError, CondenseError
from condense.tasks.gpt import GPT, GPTConfig, generate, num_params
from condense.train.loop import FitConfig, fit

# Part of the cache key: bump when the model or training code changes the weights a preset gives. Moving the
# training onto condense.train's engine did not: its learning rates round to the same float32 values as the old
# hand-written loop's at every step of both presets, and the trained weights are bit-identical.
_FORMAT = 1
PROMPT = b"def "
OFFSOURCE_SUFFIX = "_offsource"  # metrics on the second evaluation source (manual-page text)


@dataclass(frozen=True)
class TinyGPTPreset:
    """A model size plus how to train and evaluate it.

    Example:
        >>> PRESETS["tiny"].model.n_layer
        2
    """

    model: GPTConfig
    steps: int
    batch_size: int
    lr: float = 3e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    train_bytes: int = 4_000_000
    val_bytes: int = 200_000
    eval_windows: int = 256  # non-overlapping block_size windows of val bytes scored by evaluate()
    train_threads: int | None = None  # torch threads while training; None keeps the current setting

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the model config nested)."""
        return dataclasses.asdict(self)

    def fit_config(self) -> FitConfig:
        """How the preset trains: AdamW (betas 0.9, 0.95; decay on matrices only), gradients clipped, linear
        warm-up then cosine decay to `lr * min_lr_ratio`.

        Example:
            >>> PRESETS["tiny"].fit_config().schedule
            'cosine'
        """
        return FitConfig(steps=self.steps, lr=self.lr, optimizer="adamw", betas=(0.9, 0.95),
                         weight_decay=self.weight_decay, decay_matrices_only=True, grad_clip=self.grad_clip or None,
                         warmup_steps=self.warmup_steps, schedule="cosine", min_lr_ratio=self.min_lr_ratio,
                         seed=self.seed)

    def key(self) -> str:
        """Short stable hash of this preset (and the cache format), used in cache file names."""
        blob = json.dumps({"format": _FORMAT, **self.to_dict()}, sort_keys=True).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()[:12]


PRESETS: dict[str, TinyGPTPreset] = {
    # 1.34 M parameters, ~125 ms/step on 2 idle CPU threads: ~4 min to train, once (then cached)
    "default": TinyGPTPreset(GPTConfig(block_size=128, n_layer=4, n_head=4, n_embd=160), steps=1800,
                             batch_size=16),
    # a few seconds: for tests
    "tiny": TinyGPTPreset(GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=32), steps=150, batch_size=16,
                          lr=1e-2, warmup_steps=15, train_bytes=200_000, val_bytes=20_000, eval_windows=64,
                          train_threads=1),  # a model this small only loses from intra-op threads
    # 25.5 M parameters (102 MB fp32): decode at batch 1 reads more weight bytes than the CPU caches hold, the
    # regime where low-bit weights speed decoding up. ~6 s/step at batch 8 on 1 loaded thread here, so 300
    # steps fit in ~20 minutes on 2 cores: short of converged, which the quantization comparisons do not need.
    "large": TinyGPTPreset(GPTConfig(block_size=128, n_layer=8, n_head=8, n_embd=512), steps=300, batch_size=8,
                           lr=2e-3, warmup_steps=30),
}
_ETA = {"default": "about 4 minutes on 2 idle CPU cores", "tiny": "a few seconds",
        "large": "about 20 minutes on 2 idle CPU cores"}

_console = Console(stderr=True)


def get_preset(name: str) -> TinyGPTPreset:
    """The preset called `name`; an unknown name raises a CondenseError listing the valid ones."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise CondenseError(f"unknown tinygpt preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


# -- data -------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def byte_tensor(split: str, max_bytes: int) -> torch.Tensor:
    """The stdlib corpus `split` as a uint8 tensor (N,), shared: do not modify it in place."""
    return torch.from_numpy(corpus(split, max_bytes).copy())


@lru_cache(maxsize=8)
def offsource_bytes(n_bytes: int) -> torch.Tensor | None:
    """`n_bytes` of English manual-page text (condense.data.manpages) as a uint8 tensor: the second evaluation
    source, text that is not Python and that no training data comes from. None, with a warning once, where this
    machine has too few manual pages."""
    from condense.data.manpages import text_corpus, warn_missing

    try:
        data = text_corpus(n_bytes)
    except CondenseError as e:
        warn_missing("tinygpt", "bits_per_byte" + OFFSOURCE_SUFFIX, e)
        return None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def random_windows(data: torch.Tensor, batch_size: int, block_size: int, *, seed: int,
                   n_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield `(x, y)` LongTensors (B, T) of random windows of `data`, y shifted by one (deterministic per seed).

    Endless when `n_batches` is None.

    Example:
        >>> x, y = next(random_windows(torch.arange(100, dtype=torch.uint8), 2, 8, seed=0))
        >>> bool((x[:, 1:] == y[:, :-1]).all())
        True
    """
    if data.numel() < block_size + 2:
        raise CondenseError(f"need more than {block_size + 1} bytes for windows of {block_size}, got {data.numel()}")
    g = torch.Generator().manual_seed(seed)
    offsets = torch.arange(block_size + 1)  # (T+1,)
    i = 0
    while n_batches is None or i < n_batches:
        starts = torch.randint(data.numel() - block_size - 1, (batch_size,), generator=g)  # (B,)
        chunk = data[starts[:, None] + offsets].long()  # (B, T+1)
        yield chunk[:, :-1], chunk[:, 1:]
        i += 1


def _val_windows(data: torch.Tensor, start: int, count: int, block_size: int) -> torch.Tensor:
    """Non-overlapping windows start..start+count-1 of `data` (wrapping), each T+1 long: (count, T+1)."""
    n = (data.numel() - 1) // block_size
    idx = (torch.arange(start, start + count) % n)[:, None] * block_size + torch.arange(block_size + 1)
    return data[idx].long()


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _logits(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def lm_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean next-byte cross-entropy (nats) of `model` on one `(x, y)` batch, moved to the model's device.

    Example:
        >>> _ = torch.manual_seed(0)  # the value at init depends on the weights drawn
        >>> m = GPT(GPTConfig(block_size=8, n_layer=1, n_head=1, n_embd=8))
        >>> x = torch.zeros(2, 8, dtype=torch.long)
        >>> round(lm_loss(m, (x, x)).item(), 1)  # near ln(256) = 5.5 at init
        5.5
    """
    x, y = batch
    dev = model_device(model)
    logits = _logits(model(x.to(dev)))  # (B, T, V)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.to(dev).reshape(-1))


# -- evaluation -------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_lm(model: nn.Module, data: torch.Tensor, block_size: int, max_windows: int,
                batch_size: int = 32) -> dict[str, float]:
    """Mean next-byte loss over non-overlapping `block_size` windows of `data` (at most `max_windows`).

    Returns {"bits_per_byte", "perplexity" (per byte, 2**bpb), "loss" (nats)}.
    """
    n = min(max_windows, (data.numel() - 1) // block_size)
    if n < 1:
        raise CondenseError(f"evaluation needs more than {block_size} bytes, got {data.numel()}")
    dev = model_device(model)
    total, count = 0.0, 0
    for start in range(0, n, batch_size):
        chunk = _val_windows(data, start, min(batch_size, n - start), block_size).to(dev)  # (b, T+1)
        x, y = chunk[:, :-1], chunk[:, 1:]
        logits = _logits(model(x))  # (b, T, V)
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1),
                                       reduction="sum"))
        count += y.numel()
    loss = total / count
    bpb = loss / math.log(2)
    return {"bits_per_byte": bpb, "perplexity": 2.0 ** bpb, "loss": loss}


# -- cache ------------------------------------------------------------------------------------------------------
def cache_paths(preset: str = "default") -> tuple[Path, Path]:
    """(weights .safetensors, metadata .json) paths of a preset's cached model."""
    stem = cache_dir() / f"tinygpt-{preset}-{get_preset(preset).key()}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def train_tinygpt(preset: str = "default") -> tuple[GPT, dict[str, Any]]:
    """Train a preset from scratch with condense's training engine (`fit` with `preset.fit_config()`);
    deterministic, and the caller's RNG state is left as it was. Returns the model and a metadata dict."""
    p = get_preset(preset)
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(p.seed)
        model = GPT(p.model)
    data = random_windows(byte_tensor("train", p.train_bytes), p.batch_size, p.model.block_size, seed=p.seed)
    threads, py_rng = torch.get_num_threads(), random.getstate()
    t0 = time.perf_counter()
    try:
        torch.set_num_threads(p.train_threads or threads)
        with torch.random.fork_rng(devices=[]):  # the engine seeds torch and random: keep the caller's states
            losses = fit(model, data, lm_loss, p.fit_config(), description=f"training tinygpt {preset}")
    finally:
        torch.set_num_threads(threads)
        random.setstate(py_rng)
    model.eval()
    wall = time.perf_counter() - t0
    metrics = evaluate_lm(model, byte_tensor("val", p.val_bytes), p.model.block_size, p.eval_windows)
    meta = {"format": _FORMAT, "preset": preset, "key": p.key(), "config": p.to_dict(), "metrics": metrics,
            "train": {"wall_s": round(wall, 2), "threads": p.train_threads or threads, "steps": p.steps,
                      "first_loss_mean10": sum(losses[:10]) / len(losses[:10]),
                      "final_loss_mean10": sum(losses[-10:]) / len(losses[-10:]),
                      "losses": [round(x, 4) for x in losses]},
            "params": num_params(model), "torch": torch.__version__, "python": sys.version.split()[0]}
    return model, meta


def load_tinygpt(preset: str = "default", *, train_if_missing: bool = True) -> GPT:
    """The preset's trained model in eval mode on CPU: loaded from the cache, or trained once and cached.

    Example:
        >>> load_tinygpt("tiny").config.n_layer  # doctest: +SKIP
        2
    """
    p = get_preset(preset)
    weights, meta_path = cache_paths(preset)
    fix = "condense prepare tinygpt" + ("" if preset == "default" else f" --task-option preset={preset}")
    if weights.exists() and meta_path.exists():
        model = GPT(p.model)
        try:
            model.load_state_dict(load_file(str(weights)))
        except Exception as e:  # corrupt or from other model code
            raise ArtifactError(f"cached tinygpt weights {weights} cannot be loaded ({type(e).__name__}: {e}); "
                                f"delete {weights} and run `{fix}`") from None
        return model.eval()
    if not train_if_missing:
        raise CondenseError(f"tinygpt preset {preset!r} is not trained yet (no {weights.name} in {weights.parent}); "
                            f"run `{fix}` first")
    _console.print(f"training tinygpt preset {preset!r} ({_ETA.get(preset, 'a few minutes')}); "
                   f"cached afterwards in {weights.parent}")
    model, meta = train_tinygpt(preset)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(state, tmp, metadata={"preset": preset, "key": p.key()}))
    atomic_write_json(meta_path, meta)  # written last: its presence marks a complete cache entry
    m = meta["metrics"]
    _console.print(f"trained tinygpt {preset!r} in {meta['train']['wall_s']:.0f}s: "
                   f"val {m['bits_per_byte']:.3f} bits/byte")
    return model.eval()


# -- the task ---------------------------------------------------------------------------------------------------
def make_task(preset: str = "default") -> Task:
    """The tinygpt Task for `preset` ("default", "tiny" or "large"); cheap: the model is loaded or trained when built.

    Example:
        >>> make_task("tiny").batch(2).shape
        torch.Size([2, 64])
    """
    p = get_preset(preset)
    T = p.model.block_size

    def val() -> torch.Tensor:
        return byte_tensor("val", p.val_bytes)

    def train() -> torch.Tensor:
        return byte_tensor("train", p.train_bytes)

    def build() -> GPT:
        return load_tinygpt(preset)

    def evaluate(model: nn.Module) -> dict[str, float]:
        out = evaluate_lm(model, val(), T, p.eval_windows)
        off = offsource_bytes(p.eval_windows * T + 1)
        if off is not None:
            out.update({k + OFFSOURCE_SUFFIX: v for k, v in evaluate_lm(model, off, T, p.eval_windows).items()})
        return out

    def inputs(batch_size: int) -> torch.Tensor:
        return _val_windows(val(), 0, batch_size, T)[:, :-1].contiguous()  # (B, T)

    def run(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        dev = model_device(model)
        return model(batch if batch.device == dev else batch.to(dev))

    def calibration_data() -> Iterator[torch.Tensor]:
        for x, _ in random_windows(train(), 8, T, seed=p.seed + 1, n_batches=16):
            yield x

    def train_data() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return random_windows(train(), p.batch_size, T, seed=p.seed + 2, n_batches=p.steps)

    def gen(model: nn.Module, batch_size: int, new_tokens: int) -> int:
        prompt = torch.tensor(list(PROMPT), dtype=torch.long, device=model_device(model)).repeat(batch_size, 1)
        out = generate(model, prompt, new_tokens, use_cache=True)
        return (out.shape[1] - prompt.shape[1]) * batch_size

    return Task(name="tinygpt", model=build, evaluate=evaluate, primary_metric="bits_per_byte",
                higher_is_better=False, inputs=inputs, run=run, calibration_data=calibration_data,
                train_data=train_data, loss=lm_loss, generate=gen, skeleton=lambda: GPT(p.model),
                batch_sizes=(1, 32),
                description=f"byte-level GPT ({preset}) on stdlib sources; val bits per byte (and on manual-page "
                            "text: bits_per_byte_offsource), decode tokens/s",
                spec={"name": "tinygpt", "options": {"preset": preset}},
                extras={"preset": preset, "block_size": T}, input_kind="tokens",
                offsource_metric="bits_per_byte" + OFFSOURCE_SUFFIX)
