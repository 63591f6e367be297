"""The knobs a search turns: each one proposes (or skips) one pipeline step per trial.

A knob's choices are its transform family's methods registered with `search=True` (`register_transform`), read
from the registry when the search starts, so a technique joins its family's knob by registering.
`Space` carries what the sensitivity probes learned (layers too sensitive to quantize, groups too sensitive to
prune, which kinds apply to this task at all), so trials are not wasted on steps that cannot meet the budget.
A knob whose technique cannot apply to the task's model at all (distillation without a block list to drop from,
early exit without a splitter for the architecture) says so up front (`Knob.applies`) and is left out, with the
reason, instead of failing every trial that turns it on.
"""
from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

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
        check: `check(model, task, search_cfg)` raises an error saying why the knob's steps cannot apply to this
            model and task (None: they always can, or the sensitivity probes decide, as for prune and quantize).
    """

    name: str
    order: int
    configs: Mapping[str, str]
    suggest: Callable[[Any, Space], Any]
    examples: dict[str, dict[str, Any]] = field(default_factory=dict)
    check: Callable[[Any, Any, Any], None] | None = None

    def applies(self, model: Any, task: Any, cfg: Any) -> tuple[bool, str]:
        """Whether the knob's steps can apply to `model` on `task`, decided before any trial (if not: False, why)."""
        if self.check is None:
            return True, ""
        try:
            self.check(model, task, cfg)
        except Exception as e:  # noqa: BLE001  (any failure of the check means: every trial using it would fail)
            return False, str(e) if isinstance(e, CondenseError) else f"{type(e).__name__}: {e}"
        return True, ""

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


class Searchable(Mapping):
    """{method name: "module:Class"} of one transform family's methods registered with `search=True`, read from
    the transform registry when first used (so a technique joins its family's knob by registering)."""

    def __init__(self, family: str) -> None:
        self.family = family

    def _items(self) -> dict[str, str]:
        from condense.core.transforms import TRANSFORMS

        return {n: f"{t.config.__module__}:{t.config.__qualname__}"
                for n, t in TRANSFORMS.names(self.family).items() if t.search}

    def __getitem__(self, name: str) -> str:
        items = self._items()
        if name not in items:
            raise CondenseError(f"no searchable {self.family} method {name!r}; registered: {', '.join(items)}")
        return items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())

    def only(self) -> str:
        """The path of the family's single searchable method."""
        items = self._items()
        if len(items) != 1:
            raise CondenseError(f"expected one searchable {self.family} method, found {sorted(items)}")
        return next(iter(items.values()))


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
    """The search's recovery run (`SearchConfig.finetune`), or None when it has none or 0 steps."""
    ft = space.cfg.finetune
    return ft if ft is not None and ft.steps > 0 else None


# -- pruning ----------------------------------------------------------------------------------------------------
PRUNE = Searchable("prune")  # structured, layer-drop, unstructured


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
QUANT = Searchable("quantize")  # dynamic, ort, onednn


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
    return build(FACTORIZES.only(), rank_ratio=round(trial.suggest_float("factorize.rank_ratio", 0.2, 0.8, step=0.1), 4))


def suggest_distill(trial: Any, space: Space) -> Any:
    if not trial.suggest_categorical("distill.use", [False, True]):
        return None
    # "subset": the blocks whose output is closest to the teacher's (MiniLM 3 of 6: MRR@10 88% of the teacher's
    # before training, vs 58% for evenly spread blocks)
    # the student trains with the search's recovery run (steps, lr) when one is set, else DistillConfig's default
    fit = _recovery(space)
    choices = space.extra.get("distill_layers") or list(space.cfg.distill_layers)  # fewer blocks than the model's
    layers = trial.suggest_categorical("distill.layers", list(choices))
    return build(DISTILLS.only(), layers=layers, layer_criterion="subset",
                 **({"finetune": fit} if fit is not None else {}))


def suggest_early_exit(trial: Any, space: Space) -> Any:
    if not trial.suggest_categorical("early_exit.use", [False, True]):
        return None
    return build(EARLY_EXITS.only(), threshold=round(trial.suggest_float("early_exit.threshold", 0.8, 0.99, step=0.01), 4))


FACTORIZES = Searchable("factorize")
DISTILLS = Searchable("distill")
EARLY_EXITS = Searchable("early-exit")


# -- applicability: decided once, on the task's model, before any trial ------------------------------------------
def _needs_train_data(task: Any, what: str) -> None:
    if task is None or getattr(task, "train_data", None) is None:
        name = getattr(task, "name", None)
        raise CondenseError(f"{what} trains on the task's train_data, and task {name!r} has none")


def distill_choices(model: Any, cfg: Any) -> list[int]:
    """The student sizes in `cfg.distill_layers` that keep fewer blocks than `model` has (others are no student, or
    impossible); an error saying why when none does.

    Example:
        >>> from condense.searching.config import SearchConfig
        >>> from condense.tasks.gpt import GPT, GPTConfig
        >>> distill_choices(GPT(GPTConfig(block_size=8, n_layer=4, n_head=2, n_embd=8)), SearchConfig())
        [2, 3]
    """
    from condense.errors import ConfigError
    from condense.prune.layers import BLOCK_LIST_NAMES, find_block_list

    try:
        _, blocks = find_block_list(model)
    except ConfigError:
        raise CondenseError(f"a distilled student keeps some of the teacher's blocks, and {type(model).__name__} has "
                            f"no block list (a ModuleList named {'/'.join(BLOCK_LIST_NAMES)}, or of two or more "
                            "blocks of one class)") from None
    n = len(blocks)
    keep = [k for k in cfg.distill_layers if k < n]
    if not keep:
        fix = (f"set distill_layers to block counts below {n}, e.g. --set distill_layers=[{n - 1}]" if n > 1 else
               "a student needs fewer blocks than the teacher")
        raise CondenseError(f"the model has {n} block(s) and distill_layers {list(cfg.distill_layers)} keeps none "
                            f"fewer; {fix}")
    return keep


def check_distill(model: Any, task: Any, cfg: Any) -> None:
    from condense.distillation.students import student_from_teacher

    _needs_train_data(task, "distillation")
    student_from_teacher(model, build(DISTILLS.only(), layers=min(distill_choices(model, cfg))))  # builds it on a copy


def check_factorize(model: Any, task: Any, cfg: Any) -> None:
    from condense.factorize.api import plan_ranks

    plan_ranks(model, build(FACTORIZES.only(), rank_ratio=0.5))  # at least one Linear / Conv2d layer to factorize


def check_early_exit(model: Any, task: Any, cfg: Any) -> None:
    from condense.early_exit.model import with_exits

    _needs_train_data(task, "early exit")
    with_exits(copy.deepcopy(model), None, 0.9, "max_prob")  # a splitter for the architecture, heads sized on it


KNOBS.register("distill", Knob("distill", 0, DISTILLS, suggest_distill, {"kd": {"layers": 2}}, check_distill))
KNOBS.register("prune", Knob("prune", 10, PRUNE, suggest_prune,
                             {"structured": {"ratio": 0.5, "exclude": ()}, "layer-drop": {"n_drop": 1},
                              "unstructured": {"sparsity": 0.5}}))
KNOBS.register("factorize", Knob("factorize", 20, FACTORIZES, suggest_factorize, {"svd": {"rank_ratio": 0.5}},
                                 check_factorize))
KNOBS.register("early_exit", Knob("early_exit", 30, EARLY_EXITS, suggest_early_exit,
                                  {"confidence": {"threshold": 0.9}}, check_early_exit))
KNOBS.register("quantize", Knob("quantize", 40, QUANT, suggest_quantize,
                                {"dynamic": {"exclude": ()}, "ort": {"float_channels": 0, "exclude": ()},
                                 "onednn": {"exclude": ()}}))


def select_knobs(names: tuple[str, ...], *, model: Any = None, task: Any = None,
                 cfg: Any = None) -> tuple[list[Knob], dict[str, str]]:
    """The knobs to search, in pipeline order, and {name: why skipped} for "auto" knobs that are unavailable or
    (given the task's `model`, the `task` and the SearchConfig `cfg`) cannot apply to it.

    An explicitly named knob that is unavailable or cannot apply is an error naming why.

    Example:
        >>> from condense.tasks import get_task
        >>> from condense.searching.config import SearchConfig
        >>> task = get_task("condense.testing:tiny_task")
        >>> knobs, skipped = select_knobs(("auto",), model=task.build_model(), task=task, cfg=SearchConfig())
        >>> [k.name for k in knobs], sorted(skipped)
        (['prune', 'factorize', 'quantize'], ['distill', 'early_exit'])
    """
    if model is not None and cfg is None:
        raise CondenseError("select_knobs(model=...) needs the SearchConfig too (cfg=...): the checks read it")
    auto = "auto" in names
    wanted = [n for n, _ in KNOBS.items()] if auto else list(names)
    out, skipped = [], {}
    for n in wanted:
        knob = KNOBS.get(n)
        ok, why = knob.available()
        if ok and model is not None:
            ok, why = knob.applies(model, task, cfg)
            why = why and f"does not apply to task {getattr(task, 'name', None)!r}: {why}"
        if ok:
            out.append(knob)
        elif auto:
            skipped[n] = why
        else:
            raise CondenseError(f"knob {n!r} cannot be used: {why}; install that technique or drop the knob"
                                if not why.startswith("does not apply") else
                                f"knob {n!r} {why}; drop it from the knobs (--knobs)")
    if not out:
        raise CondenseError(f"no search knob is available (skipped: {skipped})")
    return sorted(out, key=lambda k: k.order), skipped
