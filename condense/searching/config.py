"""SearchConfig: what an accuracy-budgeted search may try, and how hard it measures each trial."""
from __future__ import annotations

from typing import Any

from condense.core.config import config
from condense.errors import ConfigError


def parse_budget(text: Any) -> float:
    """A relative quality budget: "1%" -> 0.01, "0.5 %" -> 0.005, 0.02 -> 0.02.

    Example:
        >>> parse_budget("1%"), parse_budget(0.02)
        (0.01, 0.02)
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        s = str(text).strip()
        try:
            value = float(s[:-1].strip()) / 100 if s.endswith("%") else float(s)
        except ValueError:
            raise ConfigError(f"budget {text!r} is not a number; give a relative loss such as 1% or 0.01") from None
    if not 0 <= value < 1:
        raise ConfigError(f"budget must be in [0%, 100%), got {text!r}; e.g. --budget 1%")
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
        recovery_steps: fine-tuning steps after structured pruning or layer drop, and the training of a distilled
            student (0: no recovery after pruning; a student then trains with DistillConfig's default run).
        recovery_lr: learning rate of that recovery.
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

    budget: float = 0.01
    trials: int = 20
    knobs: tuple[str, ...] = ("auto",)
    batch_size: int = 32
    threads: int | None = None
    timing_repeats: int = 3
    timing_min_s: float = 0.3
    final_repeats: int = 10
    final_min_s: float = 1.0
    recovery_steps: int = 0
    recovery_lr: float = 2e-4
    sensitivity: bool = True
    max_prune_ratio: float = 0.7
    prune_importance: tuple[str, ...] = ("l2", "obs")
    max_probes: int = 12
    seed: int = 0
    heartbeat_s: int = 30
    distill_layers: tuple[int, ...] = (2, 3, 4)
    stage_dir: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "budget", parse_budget(self.budget))
        object.__setattr__(self, "knobs", tuple(self.knobs))
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise ConfigError(f"trials must be a positive integer, got {self.trials!r}; e.g. --trials 20")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.timing_repeats < 1 or self.final_repeats < 1:
            raise ConfigError("timing_repeats and final_repeats must be >= 1")
        if self.recovery_steps < 0:
            raise ConfigError(f"recovery_steps must be >= 0, got {self.recovery_steps}")
        if not 0 < self.max_prune_ratio < 1:
            raise ConfigError(f"max_prune_ratio must be in (0, 1), got {self.max_prune_ratio}")
        object.__setattr__(self, "prune_importance", tuple(self.prune_importance))
        if not self.prune_importance or self.max_probes < 1:
            raise ConfigError("prune_importance needs at least one of 'l2', 'activation', 'obs' and max_probes >= 1")
        object.__setattr__(self, "distill_layers", tuple(self.distill_layers))
        if not self.distill_layers or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                                          for n in self.distill_layers):
            raise ConfigError(f"distill_layers must be block counts >= 1, got {self.distill_layers!r}; e.g. (3, 4)")
        if self.heartbeat_s < 1:
            raise ConfigError(f"heartbeat_s must be >= 1, got {self.heartbeat_s}")
        from condense.searching.knobs import KNOBS  # read when checked: knobs a plugin registered count too

        valid = ", ".join(["auto", *KNOBS])
        if not self.knobs:
            raise ConfigError(f"knobs is empty; name at least one of: {valid} (auto: every knob that applies to the "
                              "task), e.g. --knobs prune,quantize")
        bad = [k for k in self.knobs if not isinstance(k, str) or (k != "auto" and k not in KNOBS)]
        if bad:
            raise ConfigError(f"unknown knob(s) {', '.join(map(repr, bad))}; choose from: {valid}")
