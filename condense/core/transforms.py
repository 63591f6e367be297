"""One registry of transforms keyed by config *type*: family, name, handler and replay registered in one place.

A technique registers each config class once:

    @register_transform(DynamicInt8Config, family="quantize", name="dynamic", replay=_replay)
    def quantize_dynamic(model, cfg, ctx): ...

and everything else reads from that entry: `apply_` (and the verbs `quantize_`, `prune_`, ... built on it), the
CLI's `--scheme`/`--method` choices, recipe step kinds, search knobs and artifact replay. A handler never records
lineage itself: `apply_` appends the config and whatever the handler passed to `ctx.record(...)`, so a transform
applied through any verb saves and loads the same way.

A handler is `handler(model, config, ctx) -> model`; a replay is `replay(skeleton, config, details) -> model`
and rebuilds the architecture (without data) so an artifact's weights fit. `ctx` carries the data a transform may
need (calibration batches, training batches, how to run the model on a batch), so configs stay pure data.

Example:
    >>> import torch
    >>> from condense.core.config import config
    >>> @config
    ... class _ScaleExample:
    ...     factor: float = 2.0
    >>> def _replay(model, cfg, details): return model
    >>> @register_transform(_ScaleExample, family="example", name="scale", replay=_replay)
    ... def _scale(model, cfg, ctx):
    ...     with torch.no_grad():
    ...         model.weight.mul_(cfg.factor)
    ...     ctx.record(scaled=["weight"])
    ...     return model
    >>> net = apply_(torch.nn.Linear(2, 2, bias=False), _ScaleExample())
    >>> from condense.core.lineage import lineage
    >>> lineage(net)["transforms"][0]["details"]
    {'scaled': ['weight']}
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from condense.core import lineage, plugins
from condense.core.task import run_batch
from condense.errors import ConfigError, CondenseError

Handler = Callable[[nn.Module, Any, "TransformContext"], nn.Module]
Replay = Callable[[nn.Module, Any, dict], nn.Module]


@dataclass(frozen=True)
class Family:
    """A group of transforms chosen by one parameter (`condense quantize --scheme X`, recipe `scheme: X`).

    Args:
        name: the family (also the CLI command and the recipe step kind), e.g. "quantize".
        key: the parameter naming a method in recipes ("scheme", "method", "format").
        default: the method used when none is named (None: one must be named).
        noun: for messages ("quantization config").
    """

    name: str
    key: str = "method"
    default: str | None = None
    noun: str = ""


@dataclass(frozen=True)
class Transform:
    """One registered config type and everything that serves it."""

    config: type
    family: str
    name: str
    handler: Handler
    replay: Replay
    also: tuple[tuple[str, str], ...] = ()  # other (family, name) it is offered under, e.g. ("export", "onnx-int8")
    search: bool = False  # offered by `condense search` as a choice of its family's knob
    listed: bool = True  # False: applied by other transforms only (not a CLI/recipe choice)


class TransformRegistry:
    """Config type -> Transform, resolved through the MRO; family -> name -> Transform for the CLI and recipes."""

    def __init__(self) -> None:
        self._by_type: dict[type, Transform] = {}
        self._families: dict[str, Family] = {}

    # -- registering ---------------------------------------------------------------------------------------
    def add_family(self, family: Family) -> Family:
        old = self._families.get(family.name)
        if old is not None and old != family:
            raise KeyError(f"transform family {family.name!r} is registered twice, differently")
        self._families[family.name] = family
        return family

    def add(self, t: Transform) -> Transform:
        if not isinstance(t.config, type):
            raise TypeError(f"register_transform needs a config class, got {t.config!r}")
        if t.config in self._by_type:
            raise KeyError(f"transform for {t.config.__name__} is registered twice")
        if not callable(t.handler) or not callable(t.replay):
            raise TypeError(f"{t.config.__name__}: handler and replay must be callables")
        for fam, name in ((t.family, t.name), *t.also):
            if t.listed and name in self._names(fam):
                raise KeyError(f"{fam} method {name!r} is registered twice "
                               f"({self._names(fam)[name].config.__name__} and {t.config.__name__})")
        self._by_type[t.config] = t
        return t

    # -- looking up ------------------------------------------------------------------------------------------
    def find(self, config_or_type: Any) -> Transform | None:
        """The transform for a config (or config class), or None; imports the config's package on a miss."""
        t = config_or_type if isinstance(config_or_type, type) else type(config_or_type)
        for attempt in range(2):
            for base in t.__mro__:
                if base in self._by_type:
                    return self._by_type[base]
            if attempt == 0:
                plugins.load_all()
        return None

    def get(self, config_or_type: Any) -> Transform:
        found = self.find(config_or_type)
        if found is None:
            t = config_or_type if isinstance(config_or_type, type) else type(config_or_type)
            known = ", ".join(sorted(c.__name__ for c in self._by_type)) or "(none registered)"
            raise ConfigError(f"{t.__name__} is not a transformation config (no transform is registered for it); "
                              f"use one of: {known}, or register one with condense.core.transforms."
                              "register_transform")
        return found

    def _names(self, family: str) -> dict[str, Transform]:
        out = {}
        for t in self._by_type.values():
            if not t.listed:
                continue
            for fam, name in ((t.family, t.name), *t.also):
                if fam == family:
                    out[name] = t
        return out

    def names(self, family: str) -> dict[str, Transform]:
        """Method name -> Transform of one family (every technique package loaded first), in name order."""
        plugins.load_all()
        return dict(sorted(self._names(family).items()))

    def by_name(self, family: str, name: str) -> Transform:
        names = self.names(family)
        if name not in names:
            raise ConfigError(f"unknown {family} method {name!r}; choose one of: {', '.join(names) or '(none)'}")
        return names[name]

    def families(self) -> dict[str, Family]:
        """Every family with at least one listed transform (every technique package loaded first)."""
        plugins.load_all()
        used = {fam for t in self._by_type.values() if t.listed for fam, _ in ((t.family, t.name), *t.also)}
        return {n: self._families.get(n, Family(n)) for n in sorted(used)}

    def family(self, name: str) -> Family:
        return self.families().get(name) or Family(name)

    def __iter__(self) -> Iterator[Transform]:
        plugins.load_all()
        return iter(sorted(self._by_type.values(), key=lambda t: (t.family, t.name)))


TRANSFORMS = TransformRegistry()


def register_family(name: str, *, key: str = "method", default: str | None = None, noun: str = "") -> Family:
    """Declare a family's recipe parameter and default method (optional: undeclared families use "method")."""
    return TRANSFORMS.add_family(Family(name, key, default, noun or f"{name} config"))


def register_transform(config: type, *, family: str, name: str, replay: Replay,
                       also: Iterable[tuple[str, str]] = (), search: bool = False,
                       listed: bool = True) -> Callable[[Handler], Handler]:
    """Register the handler of `config` (decorator): its family, user-facing name, replay and where it is offered.

    Args:
        config: the config class (its instances pick this handler, subclasses too).
        family: "quantize", "prune", "export", ...: the CLI command and recipe step kind offering it.
        name: its method name within the family (`--scheme dynamic`, recipe `scheme: dynamic`).
        replay: `replay(skeleton, config, details) -> model` rebuilding the architecture when an artifact loads.
        also: other (family, name) pairs offering the same config.
        search: offered by `condense search` among its family's choices.
        listed: False for transforms other transforms apply (not a CLI/recipe choice).
    """

    def deco(handler: Handler) -> Handler:
        TRANSFORMS.add(Transform(config, family, name, handler, replay, tuple(tuple(a) for a in also), search,
                                 listed))
        return handler

    return deco


@dataclass
class TransformContext:
    """What a transformation may use besides the model and its config, and where it puts its lineage details.

    Args:
        task: the task (gives calibration/training data and how to run a batch), if any.
        calibration: explicit calibration batches (overrides the task's).
        data: explicit training batches, an iterable or a zero-argument callable (overrides the task's).
    """

    task: Any = None
    calibration: Iterable[Any] | None = None
    data: Any = None
    details: dict[str, Any] = field(default_factory=dict)
    recorded: bool = True

    def record(self, **details: Any) -> None:
        """Add JSON-able details (new shapes, chosen layers, ...) to this transform's lineage entry."""
        self.details.update(details)

    def skip_record(self) -> None:
        """The transform changed nothing worth replaying: `apply_` adds no lineage entry for it."""
        self.recorded = False

    def child(self) -> "TransformContext":
        """A context with the same data and fresh details (for a transform applied inside another)."""
        return TransformContext(task=self.task, calibration=self.calibration, data=self.data)

    def calibration_batches(self, limit: int | None = None, *, what: str = "this transformation") -> list[Any]:
        """Calibration batches (at most `limit`); a clear error if there are none."""
        src: Iterable[Any] | None = self.calibration
        if src is None and self.task is not None and self.task.calibration_data is not None:
            src = self.task.calibration_data()
        batches = list(itertools.islice(iter(src), limit)) if src is not None else []
        if not batches:
            raise CondenseError(f"{what} needs calibration data: pass calibration=[batches] or use a task with "
                                "calibration_data (built-in tasks have it)")
        return batches

    def run_batch(self, model: nn.Module, batch: Any) -> Any:
        """Run `model` on one batch the way the task does (default `model(batch)`)."""
        if self.task is not None:
            return self.task.run_batch(model, batch)
        return run_batch(model, batch)

    def run_calibration(self, model: nn.Module, limit: int | None = None, *, what: str = "calibration") -> int:
        """Run `model` over the calibration batches (no grad); returns how many batches ran."""
        batches = self.calibration_batches(limit, what=what)
        with torch.inference_mode():
            for b in batches:
                self.run_batch(model, b)
        return len(batches)

    def finetune(self, model: nn.Module, fit_config: Any, *, description: str = "fine-tuning") -> list[float]:
        """Fine-tune `model` on the task's train_data with the task's loss, through the registered trainer."""
        if self.task is None or self.task.train_data is None or self.task.loss is None:
            raise CondenseError("fine-tuning needs a task with train_data and loss (digits and tinygpt have them); "
                                "set steps=0 to skip it")
        if _TRAINER is None:
            plugins.load_all()
        if _TRAINER is None:
            raise CondenseError("no training loop is registered (import condense.train)")
        return _TRAINER(model, self.task.train_data, self.task.loss, fit_config, description=description,
                        input_kind=self.task.input_kind)

    def training_data(self, *, what: str = "this transformation") -> Any:
        """The training batches: `data` if given, else the task's `train_data` (a zero-argument callable)."""
        if self.data is not None:
            return self.data
        if self.task is None or self.task.train_data is None:
            raise ConfigError(f"{what} needs training data: pass data=[batches] or a task with train_data "
                              "(digits, tinygpt, minilm have it)")
        return self.task.train_data

    def train_batches(self) -> Iterator[Any]:
        data = self.training_data()
        return iter(data() if callable(data) else data)


_TRAINER: Callable[..., list[float]] | None = None


def register_trainer(fit: Callable[..., list[float]]) -> Callable[..., list[float]]:
    """Set the loop `TransformContext.finetune` trains with: `fit(model, data, loss, config, description=...,
    input_kind=...)`.
    condense.train registers its `fit`; core never imports a technique."""
    global _TRAINER
    _TRAINER = fit
    return fit


def load_techniques() -> None:
    """Import every declared technique package (see `condense.core.plugins`)."""
    plugins.load_all()


def run_transform(model: nn.Module, config: Any, ctx: TransformContext) -> tuple[nn.Module, dict[str, Any] | None]:
    """Apply `config`'s handler without recording lineage; returns the model and its details (None: nothing to
    record). For transforms that apply another one inside and keep it in their own details (Int8Config)."""
    t = TRANSFORMS.get(config)
    sub = ctx.child()
    out = t.handler(model, config, sub)
    if not isinstance(out, nn.Module):
        raise CondenseError(f"the {type(config).__name__} handler returned {type(out).__name__}, not the model")
    if out is not model and getattr(out, "_condense_lineage", None) is None:
        lineage.copy_lineage(model, out)
    return out, (dict(sub.details) if sub.recorded else None)


def apply_(model: nn.Module, config: Any, *, task: Any = None, calibration: Iterable[Any] | None = None,
           data: Any = None, family: str | None = None) -> nn.Module:
    """Apply the transformation `config` describes to `model` (in place where possible) and record it in the
    model's lineage; returns the model (a new module where the transform replaces it: use the return value).

    Args:
        task: gives calibration/training data and how to run the model, for configs that need them.
        calibration: explicit calibration batches (overrides the task's).
        data: explicit training batches (an iterable or a zero-argument callable; overrides the task's).
        family: refuse a config of another family (the verbs pass theirs: `quantize_` refuses a pruning config).
    """
    t = TRANSFORMS.find(config)
    if family is not None and (t is None or family not in {t.family, *(f for f, _ in t.also)}):
        fam = TRANSFORMS.family(family)
        choices = ", ".join(sorted({x.config.__name__ for x in TRANSFORMS.names(family).values()}))
        raise ConfigError(f"{type(config).__name__} is not a {fam.noun or family + ' config'}; use one of: {choices}")
    if t is None:
        TRANSFORMS.get(config)  # raises with the list of registered configs
    out, details = run_transform(model, config, TransformContext(task=task, calibration=calibration, data=data))
    if details is not None:
        lineage.record_transform(out, config, **details)
    return out
