"""SearchConfig: what an accuracy-budgeted search may try, and how hard it measures each trial."""
from __future__ import annotations

import math
from typing import Any

from condense.core.config import Renamed, check_float, check_int, check_nested, config, merged, show
from condense.errors import ConfigError
from condense.train.loop import FitConfig


def _from_recovery_steps(steps: Any) -> Any:
    """The recovery run the old `recovery_steps` field meant (0: none)."""
    if isinstance(steps, str) and steps.strip().isascii() and steps.strip().isdigit():  # YAML or --set: "200"
        steps = int(steps)
    if steps == 0:
        return None
    ok = isinstance(steps, int) and not isinstance(steps, bool) and steps > 0
    return {"steps": steps, "lr": 2e-4, "schedule": "cosine", **({"warmup_steps": min(20, steps // 10)} if ok else {})}


def parse_budget(text: Any) -> float:
    """A relative quality budget: "1%" -> 0.01, "0.5 %" -> 0.005, 0.02 -> 0.02.

    Example:
        >>> parse_budget("1%"), parse_budget(0.02)
        (0.01, 0.02)
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        try:
            value = float(text)
        except OverflowError:
            value = math.inf
    elif not isinstance(text, str):
        raise ConfigError(f"budget must be a relative loss such as 1% or 0.01, got {show(text)}; e.g. --budget 1%")
    else:
        s = str(text).strip()
        try:
            value = float(s[:-1].strip()) / 100 if s.endswith("%") else float(s)
        except ValueError:
            raise ConfigError(f"budget {text!r} is not a number; give a relative loss such as 1% or 0.01") from None
    if not 0 <= value < 1:
        raise ConfigError(f"budget must be in [0%, 100%), got {show(text)}; e.g. --budget 1%")
    return value


@config
class SearchConfig:
    """An accuracy-budgeted search over compression knobs (optuna, multi-objective).

    Args:
        budget: allowed relative loss of the task's primary metric vs the baseline (0.01 = 1%; "1%" accepted).
        trials: total trials of the study (across workers and resumed runs): those that ran to their end count,
            completed or failed on their own; a trial cut short (Ctrl-C, kill, a dead worker) does not.
        knobs: knob names to search (see `condense.searching.KNOBS`), or ("auto",): every knob whose technique
            is installed and applies to the task.
        batch_size: batch size whose latency the search minimises.
        threads: torch threads while timing (None: torch's current setting).
        timing_repeats / timing_min_s: the cheap timing used for each trial; the final pick is re-measured with
            `final_repeats` and `final_min_s` side by side with the baseline.
        finetune: the recovery run: fine-tuning after structured pruning or layer drop, and the training of a
            distilled student (None: no recovery after pruning; a student then trains with DistillConfig's default
            run). Deprecated old names: `recovery_steps` (finetune.steps, with lr 2e-4, a cosine schedule and
            min(20, steps // 10) warm-up steps; 0: None) and `recovery_lr` (finetune.lr).
        sensitivity: run per-layer probes (quantization and pruning) first and use them to narrow the knobs.
        prune_importance: structured-pruning importances to try ("l2" is cheapest; "activation" and "obs" use
            calibration data and refit the consumers by least squares; "obs" is the most accurate and slowest).
        max_probes: at most this many probes per kind: with more layers, layers are probed in groups by name
            prefix (e.g. one transformer block at a time).
        max_prune_ratio: upper end of the structured-pruning ratio range (narrowed further by the probe).
        seed: sampler seed.
        distill_layers: block counts a distilled student may keep (the distill knob picks one per trial).
        stage_dir: folder where models after a slow prefix of steps (pruning + recovery, a distilled student)
            are saved, so other workers on this machine and a resumed or repeated search load them instead of
            training again; `search(out_dir=...)` defaults it to out_dir/stages. None: memory only (per worker).
        heartbeat_s: workers report liveness this often (database storage); a trial whose worker died is
            marked failed after 3x this, so a shared or resumed search never waits on it.

    Example:
        >>> SearchConfig(budget="1%", trials=20).budget
        0.01
    """

    budget: float | str = 0.01  # a string such as "1%" becomes a float here
    trials: int = 20
    knobs: tuple[str, ...] = ("auto",)
    batch_size: int = 32
    threads: int | None = None
    timing_repeats: int = 3
    timing_min_s: float = 0.3
    final_repeats: int = 10
    final_min_s: float = 1.0
    finetune: FitConfig | None = None
    sensitivity: bool = True
    max_prune_ratio: float = 0.7
    prune_importance: tuple[str, ...] = ("l2", "obs")
    max_probes: int = 12
    seed: int = 0
    heartbeat_s: int = 30
    distill_layers: tuple[int, ...] = (2, 3, 4)
    stage_dir: str | None = None
    renamed = (
        Renamed("recovery_steps", "finetune", convert=lambda steps, ft: _from_recovery_steps(steps),
                read=lambda cfg: cfg.finetune.steps if cfg.finetune is not None else 0,
                path="finetune.steps (0: finetune=None)"),
        Renamed("recovery_lr", "finetune", convert=lambda lr, ft: merged(ft, lr=lr),
                read=lambda cfg: cfg.finetune.lr if cfg.finetune is not None else 2e-4, path="finetune.lr"),
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "budget", parse_budget(self.budget))
        for name in ("knobs", "prune_importance", "distill_layers"):
            v = getattr(self, name)
            if isinstance(v, str) and name != "distill_layers":
                v = (v,)
            if not isinstance(v, (tuple, list)):
                raise ConfigError(f"SearchConfig.{name} must be a list, got {show(v)}; e.g. "
                                  f"{name}={SearchConfig.__dataclass_fields__[name].default!r}")
            object.__setattr__(self, name, tuple(v))
        check_int(self, "trials", lo=1, hi=1_000_000, example=20)
        check_int(self, "batch_size", lo=1, hi=1_000_000, example=32)
        check_int(self, "threads", lo=1, hi=4096, optional=True, example=2)
        check_int(self, "timing_repeats", lo=1, example=3)
        check_int(self, "final_repeats", lo=1, example=10)
        check_float(self, "timing_min_s", lo=0, hi=3600, example=0.3)
        check_float(self, "final_min_s", lo=0, hi=3600, example=1.0)
        check_nested(self, "finetune", FitConfig, optional=True)
        check_float(self, "max_prune_ratio", lo=0, hi=1, lo_open=True, hi_open=True, example=0.7)
        if not self.prune_importance or any(not isinstance(p, str) for p in self.prune_importance):
            raise ConfigError(f"SearchConfig.prune_importance needs at least one of 'l2', 'activation', 'obs', got "
                              f"{show(self.prune_importance)}; e.g. prune_importance=('l2',)")
        check_int(self, "max_probes", lo=1, hi=100_000, example=12)
        check_int(self, "seed", lo=0, hi=2**31 - 1, example=0)
        if not self.distill_layers or any(isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 100_000
                                          for n in self.distill_layers):
            raise ConfigError(f"SearchConfig.distill_layers must be block counts >= 1, got "
                              f"{show(self.distill_layers)}; e.g. distill_layers=(3, 4)")
        check_int(self, "heartbeat_s", lo=1, hi=86_400, example=30)
        from condense.searching.knobs import KNOBS  # read when checked: knobs a plugin registered count too

        valid = ", ".join(["auto", *KNOBS])
        if not self.knobs:
            raise ConfigError(f"knobs is empty; name at least one of: {valid} (auto: every knob that applies to the "
                              "task), e.g. --knobs prune,quantize")
        if any(not isinstance(k, str) for k in self.knobs):
            raise ConfigError(f"SearchConfig.knobs must be knob names, got {show(self.knobs)}; choose from: {valid}")
        if self.stage_dir is not None and not isinstance(self.stage_dir, str):
            raise ConfigError(f"SearchConfig.stage_dir must be a folder path or None, got {show(self.stage_dir)}; "
                              "e.g. stage_dir='runs/s1/stages'")
        bad = [k for k in self.knobs if k != "auto" and k not in KNOBS]
        if bad:
            raise ConfigError(f"unknown knob(s) {', '.join(map(repr, bad))}; choose from: {valid}")
