"""`measure(model, task)`: parameters, size on disk, MACs, latency, throughput, memory and quality, measured.

Every figure comes from running the model on this machine; the record says which threads, batch sizes, device and
library versions produced it.
"""
from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from condense import progress
from condense.core.config import check_float, check_int, config, show
from condense.core.task import Task, to_device
from condense.errors import ConfigError
from condense.measurement.bandwidth import memory_bandwidth, roofline_fraction, weight_bytes
from condense.measurement.counts import count_parameters
from condense.measurement.machine import machine_info
from condense.measurement.macs import count_macs
from condense.measurement.memory import peak_memory
from condense.measurement.timing import time_call

MAX_BATCH = 1 << 20  # the largest batch size a measurement times (larger ones only run out of memory)


@config
class MeasureConfig:
    """What to measure and how hard.

    Args:
        batch_sizes: batch sizes to time (default: the task's).
        warmup: untimed runs before timing.
        repeats: minimum timed runs per batch size; timing also continues until `min_time_s` has passed.
        min_time_s: minimum timed seconds per batch size.
        threads: torch intra-op threads while measuring (default: torch's current setting).
        device: "cpu" or "cuda[:N]".
        quality: evaluate the task's metrics.
        generate_tokens: new tokens per timed generation (generative tasks: tokens/s at `generate_batch_sizes`).

    Example:
        >>> MeasureConfig(batch_sizes=(1, 32), threads=2).batch_sizes
        (1, 32)
    """

    batch_sizes: tuple[int, ...] | None = None
    warmup: int = 3
    repeats: int = 10
    min_time_s: float = 1.0
    threads: int | None = None
    device: str = "cpu"
    quality: bool = True
    memory: bool = True
    size: bool = True
    macs: bool = True
    generate_tokens: int = 32
    generate_batch_sizes: tuple[int, ...] = (1,)

    def __post_init__(self) -> None:
        for name in ("batch_sizes", "generate_batch_sizes"):
            v = getattr(self, name)
            if isinstance(v, list):
                v = tuple(v)
                object.__setattr__(self, name, v)
            if not (isinstance(v, tuple) or (v is None and name == "batch_sizes")):
                raise ConfigError(f"MeasureConfig.{name} must be a list of batch sizes, got {show(v)}; "
                                  f"e.g. {name}=(1, 32)")
            if any(isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_BATCH for b in v or ()):
                raise ConfigError(f"MeasureConfig.{name}: each batch size must be a positive integer up to "
                                  f"{MAX_BATCH}, got {show(v)}; e.g. --batch-sizes 1,32")
        check_int(self, "warmup", lo=0, hi=1_000_000, example=3)
        check_int(self, "repeats", lo=1, hi=1_000_000, example=10)
        check_float(self, "min_time_s", lo=0, hi=3600, example=1.0)
        check_int(self, "threads", lo=1, hi=4096, optional=True, example=2)
        check_int(self, "generate_tokens", lo=1, hi=1_000_000, example=32)
        if not isinstance(self.device, str):
            raise ConfigError(f"MeasureConfig.device must be a string, got {show(self.device)}; e.g. device='cpu'")
        try:
            dev = torch.device(self.device)
        except RuntimeError:
            raise ConfigError(f"unknown device {self.device!r}; use 'cpu' or 'cuda'") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")


@dataclass
class Measurement:
    """One model's measured figures. Batch-size keyed dicts use string keys (JSON)."""

    label: str
    task: str
    primary_metric: str
    higher_is_better: bool
    params_total: int
    params_nonzero: int
    size_bytes: int | None = None
    macs_per_sample: int | None = None
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    throughput: dict[str, float] = field(default_factory=dict)
    tokens_per_s: dict[str, float] = field(default_factory=dict)
    decode: dict[str, dict[str, float]] = field(default_factory=dict)  # batch -> ttft_s, roofline, bytes, bandwidth
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    measure_wall_s: float = 0.0

    @property
    def primary(self) -> float | None:
        return self.quality.get(self.primary_metric)

    def p50(self, batch_size: int) -> float | None:
        lat = self.latency.get(str(batch_size))
        return None if lat is None else lat["p50_s"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Measurement":
        return cls(**d)


def _decode_position(task: Task, model: nn.Module, batch: int, tokens_per_s: float, device: torch.device
                     ) -> dict[str, float]:
    """Time to first token (a generation of one new token: prefill + one step) and, where the model's weights are
    torch tensors, the share of the memory roof its decode reached (`condense.measurement.bandwidth`)."""
    ttft = time_call(lambda: task.generate(model, batch, 1), warmup=1, repeats=3, device=device).p50
    out = {"ttft_s": ttft}
    nbytes = weight_bytes(model)
    if nbytes:
        bw = memory_bandwidth(device)
        out.update(weight_bytes=float(nbytes), bandwidth_bps=bw,
                   roofline=roofline_fraction(tokens_per_s, batch, nbytes, bw))
    return out


@contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Set torch's intra-op threads for a block and restore them after."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def artifact_bytes(model: nn.Module) -> int:
    """Size on disk of `model` saved as a condense artifact (saved to a temporary folder and removed)."""
    from condense.core.artifact import artifact_size, save

    with tempfile.TemporaryDirectory(prefix="condense-size-") as d:
        return artifact_size(save(model, os.path.join(d, "a")))


def measure(model: nn.Module, task: Task, config: MeasureConfig = MeasureConfig(), *,
            label: str = "model") -> Measurement:
    """Measure `model` on `task`; nothing is estimated.

    Example:
        >>> import torch, condense
        >>> net = torch.nn.Linear(8, 2)
        >>> task = condense.Task("toy", net, evaluate=lambda m: {"acc": 1.0}, primary_metric="acc",
        ...                      inputs=torch.zeros(1, 8))
        >>> m = measure(net, task, MeasureConfig(batch_sizes=(1,), repeats=3, min_time_s=0, size=False))
        >>> m.params_total, m.macs_per_sample
        (18, 16)
    """
    device = torch.device(config.device)
    batch_sizes = tuple(config.batch_sizes or task.batch_sizes)
    if device.type != "cpu":
        model = model.to(device)
    model.eval()
    t0 = time.perf_counter()
    gen_sizes = tuple(config.generate_batch_sizes) if task.generate is not None else ()
    n_steps = 2 + len(batch_sizes) + len(gen_sizes) + int(config.quality)
    with torch_threads(config.threads) as threads, progress.steps(f"measuring {label}", n_steps) as bar:
        total, nonzero = count_parameters(model)
        m = Measurement(label=label, task=task.name, primary_metric=task.primary_metric,
                        higher_is_better=task.higher_is_better, params_total=total, params_nonzero=nonzero,
                        machine=machine_info(device), config=config.to_dict())
        m.machine["torch_threads"] = threads
        bar.start("size and MACs")
        if config.size:
            m.size_bytes = artifact_bytes(model)
        if config.macs:
            one = to_device(task.batch(1), device)
            with torch.inference_mode():
                m.macs_per_sample = count_macs(model, lambda: task.run_batch(model, one))
        bar.advance()
        with torch.inference_mode():
            for bs in batch_sizes:
                bar.start(f"latency @ batch {bs}")
                batch = to_device(task.batch(bs), device)
                stats = time_call(lambda: task.run_batch(model, batch), warmup=config.warmup,
                                  repeats=config.repeats, min_time_s=config.min_time_s, device=device)
                m.latency[str(bs)] = stats.to_dict()
                m.throughput[str(bs)] = bs / stats.p50
                if config.memory:
                    m.memory[str(bs)] = peak_memory(lambda: task.run_batch(model, batch), device)
                bar.advance()
            for bs in gen_sizes:
                bar.start(f"generation @ batch {bs}")
                produced = [0]

                def gen() -> None:
                    produced[0] = task.generate(model, bs, config.generate_tokens)

                stats = time_call(gen, warmup=1, repeats=max(3, config.repeats // 3), device=device)
                m.tokens_per_s[str(bs)] = produced[0] / stats.p50
                m.decode[str(bs)] = _decode_position(task, model, bs, m.tokens_per_s[str(bs)], device)
                bar.advance()
        if config.quality:
            bar.start("quality")
            m.quality = task.metrics(model)
            bar.advance()
        bar.advance()
    m.measure_wall_s = time.perf_counter() - t0
    return m
