"""The knobs a search turns: each one proposes (or skips) one pipeline step per trial.

A knob names the config class it builds as "module:Class" and resolves it only when used, so techniques built
elsewhere (distillation, factorization, early exit) join the search by being installed, with no central switch.
`Space` carries what the sensitivity probes learned (layers too sensitive to quantize, groups too sensitive to
prune, which kinds apply to this task at all), so trials are not wasted on steps that cannot meet the budget.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from condense.core.registry import Registry
from condense.errors import CondenseError


@dataclass
class Space:
    """What the knobs may propose for this task (filled from the search config and the sensitivity probes)."""

    cfg: Any  # SearchConfig
    prune_kinds: tuple[str, ...] = ()  # applicable pruning kinds, e.g. ("structured", "layer-drop")
    quant_schemes: tuple[str, ...] = ()  # applicable quantization schemes, e.g. ("dynamic", "ort")
    prune_exclude: tuple[str, ...] = ()  # structured groups whose pruning alone breaks the budget
    quant_exclude: tuple[str, ...] = ()  # layers whose quantization alone breaks the budget
    max_prune_ratio: float = 0.7
    max_layer_drop: int = 2
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Knob:
    """One searchable step.

    Args:
        name: knob name (optuna parameters are prefixed with it).
        order: position of its step in a trial's pipeline (lower first).
        configs: the config classes it may build, {short name: "module:Class"} (resolved lazily).
        suggest: `suggest(trial, space) -> config or None` (None: no step this trial).
        examples: {short name: fields} of one config per class, built before a search to check that the
            technique is installed and takes the fields this knob sets.
    """

    name: str
    order: int
    configs: dict[str, str]
    suggest: Callable[[Any, Space], Any]
    examples: dict[str, dict[str, Any]] = field(default_factory=dict)

    def available(self) -> tuple[bool, str]:
        """Whether every config class it needs imports and accepts the knob's fields (if not: False, why)."""
        for short, path in self.configs.items():
            try:
                build(path, **self.examples.get(short, {}))
            except (ImportError, AttributeError) as e:
                return False, f"{path} is not available ({type(e).__name__}: {e})"
            except Exception as e:  # noqa: BLE001  (installed but its fields differ from what the knob sets)
                return False, str(e)
        return True, ""


KNOBS: Registry[Knob] = Registry("search knob")


def resolve(path: str) -> type:
    """The class at "module:Class"."""
    mod, _, name = path.partition(":")
    return getattr(importlib.import_module(mod), name)


def build(path: str, **fields: Any) -> Any:
    """Instantiate the config at `path` with `fields`; a mismatch names the knob to fix."""
    cls = resolve(path)
    try:
        return cls(**fields)
    except TypeError as e:
        raise CondenseError(f"search knob cannot build {path}({fields}): {e}; update its knob in "
                            "condense/searching/knobs.py") from None


def _recovery(space: Space) -> Any:
    from condense.train.loop import FitConfig

    steps = space.cfg.recovery_steps
    if steps <= 0:
        return None
    return FitConfig(steps=steps, lr=space.cfg.recovery_lr, schedule="cosine", warmup_steps=min(20, steps // 10))


# -- pruning ----------------------------------------------------------------------------------------------------
PRUNE = {"structured": "condense.prune.structured:StructuredConfig",
         "layer-drop": "condense.prune.layers:LayerDropConfig",
         "unstructured": "condense.prune.unstructured:UnstructuredConfig"}


def suggest_prune(trial: Any, space: Space) -> Any:
    kind = trial.suggest_categorical("prune.kind", ["none", *space.prune_kinds])
    if kind == "structured":
        hi = max(0.1, round(round(space.max_prune_ratio / 0.05) * 0.05, 2))
        ratio = trial.suggest_float("prune.ratio", 0.1, hi, step=0.05)
        importance = trial.suggest_categorical("prune.importance", list(space.cfg.prune_importance))
        return build(PRUNE[kind], ratio=round(ratio, 4), importance=importance, reconstruct=importance != "l2",
                     exclude=tuple(space.prune_exclude), finetune=_recovery(space))
    if kind == "layer-drop":
        n = trial.suggest_int("prune.n_drop", 1, max(1, space.max_layer_drop))
        return build(PRUNE[kind], n_drop=n, finetune=_recovery(space))
    if kind == "unstructured":
        sparsity = trial.suggest_float("prune.sparsity", 0.2, 0.9, step=0.1)
        return build(PRUNE[kind], sparsity=round(sparsity, 4))
    return None


# -- quantization -----------------------------------------------------------------------------------------------
QUANT = {"dynamic": "condense.quantize.dynamic:DynamicInt8Config",
         "ort": "condense.quantize.ort:OrtInt8Config"}


def suggest_quantize(trial: Any, space: Space) -> Any:
    scheme = trial.suggest_categorical("quantize.scheme", ["none", *space.quant_schemes])
    if scheme == "none":
        return None
    keep = trial.suggest_categorical("quantize.keep_sensitive", [True, False]) if space.quant_exclude else False
    exclude = tuple(space.quant_exclude) if keep else ()
    if scheme == "ort":
        fc = trial.suggest_categorical("quantize.float_channels", [0, 4, 8]) if space.extra.get("ort_outliers") else 0
        return build(QUANT[scheme], float_channels=fc, exclude=exclude)
    return build(QUANT[scheme], exclude=exclude)


# -- techniques resolved lazily (built in their own packages) ---------------------------------------------------
def suggest_factorize(trial: Any, space: Space) -> Any:
    if not trial.suggest_categorical("factorize.use", [False, True]):
        return None
    return build(FACTORIZE, rank_ratio=round(trial.suggest_float("factorize.rank_ratio", 0.2, 0.8, step=0.1), 4))


def suggest_distill(trial: Any, space: Space) -> Any:
    if not trial.suggest_categorical("distill.use", [False, True]):
        return None
    # "subset": the blocks whose output is closest to the teacher's (MiniLM 3 of 6: MRR@10 88% of the teacher's
    # before training, vs 58% for evenly spread blocks)
    # the student trains with the search's recovery run (steps, lr) when one is set, else DistillConfig's default
    fit = _recovery(space)
    layers = trial.suggest_categorical("distill.layers", list(space.cfg.distill_layers))
    return build(DISTILL, layers=layers, layer_criterion="subset",
                 **({"fit": fit} if fit is not None else {}))


def suggest_early_exit(trial: Any, space: Space) -> Any:
    if not trial.suggest_categorical("early_exit.use", [False, True]):
        return None
    return build(EARLY_EXIT, threshold=round(trial.suggest_float("early_exit.threshold", 0.8, 0.99, step=0.01), 4))


FACTORIZE = "condense.factorize:FactorizeConfig"
DISTILL = "condense.distillation:DistillConfig"
EARLY_EXIT = "condense.early_exit:EarlyExitConfig"

KNOBS.register("distill", Knob("distill", 0, {"distill": DISTILL}, suggest_distill,
                               {"distill": {"layers": 2}}))
KNOBS.register("prune", Knob("prune", 10, PRUNE, suggest_prune,
                             {"structured": {"ratio": 0.5, "exclude": ()}, "layer-drop": {"n_drop": 1},
                              "unstructured": {"sparsity": 0.5}}))
KNOBS.register("factorize", Knob("factorize", 20, {"factorize": FACTORIZE}, suggest_factorize,
                                 {"factorize": {"rank_ratio": 0.5}}))
KNOBS.register("early_exit", Knob("early_exit", 30, {"early_exit": EARLY_EXIT}, suggest_early_exit,
                                  {"early_exit": {"threshold": 0.9}}))
KNOBS.register("quantize", Knob("quantize", 40, QUANT, suggest_quantize,
                                {"dynamic": {"exclude": ()}, "ort": {"float_channels": 0, "exclude": ()}}))


def select_knobs(names: tuple[str, ...]) -> tuple[list[Knob], dict[str, str]]:
    """The knobs to search, in pipeline order, and {name: why skipped} for "auto" knobs that are unavailable.

    An explicitly named knob that is unavailable is an error naming what is missing.
    """
    auto = "auto" in names
    wanted = [n for n, _ in KNOBS.items()] if auto else list(names)
    out, skipped = [], {}
    for n in wanted:
        knob = KNOBS.get(n)
        ok, why = knob.available()
        if ok:
            out.append(knob)
        elif auto:
            skipped[n] = why
        else:
            raise CondenseError(f"knob {n!r} cannot be used: {why}; install that technique or drop the knob")
    if not out:
        raise CondenseError(f"no search knob is available (skipped: {skipped})")
    return sorted(out, key=lambda k: k.order), skipped
