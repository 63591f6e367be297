"""Validators configs share in `__post_init__`: each error names the config, the field and an example of a valid
value (`FitConfig.lr must be a finite number > 0, got inf; e.g. lr=0.001`)."""
from __future__ import annotations

import math
from typing import Any

from condense.core.config_base import Mismatch, example_mapping, show
from condense.core.config_codec import decode_value
from condense.errors import ConfigError

__all__ = ["MAX_COUNT", "check_choice", "check_float", "check_int", "check_nested", "check_patterns",
           "check_positive_int"]


def check_patterns(cfg: Any, *names: str, example: str = "('layers.*',)") -> None:
    """Each field in `names` (default include/exclude) must be a tuple of fnmatch patterns, not a bare string.

    Example:
        >>> from condense.core.config import config
        >>> @config
        ... class PatternsExample:
        ...     include: tuple[str, ...] = ("*",)
        >>> check_patterns(PatternsExample(include="x*"), "include")
        Traceback (most recent call last):
        condense.errors.ConfigError: PatternsExample.include must be a tuple of patterns, e.g. ('layers.*',), got 'x*'
    """
    for name in names or ("include", "exclude"):
        v = getattr(cfg, name)
        if isinstance(v, list):
            v = tuple(v)
            object.__setattr__(cfg, name, v)  # a frozen config normalises its own field, once
        if not isinstance(v, tuple) or not all(isinstance(p, str) for p in v):
            raise ConfigError(f"{type(cfg).__name__}.{name} must be a tuple of patterns, e.g. {example}, got {show(v)}")


MAX_COUNT = 10**9  # the largest step, batch or repeat count a config accepts: nothing overflows or runs forever


def _field(cfg: Any, name: str) -> str:
    return f"{type(cfg).__name__}.{name}"


def check_int(cfg: Any, name: str, *, lo: int | None = 0, hi: int | None = MAX_COUNT, example: Any,
              optional: bool = False) -> None:
    """`cfg.name` must be an int in lo..hi (bools refused; None too unless `optional`).

    Example:
        >>> from condense.core.config import config
        >>> @config
        ... class _Steps:
        ...     steps: int = 100
        >>> check_int(_Steps(steps=10**12), "steps", lo=0, example=100)
        Traceback (most recent call last):
        condense.errors.ConfigError: _Steps.steps must be an integer in 0..1000000000, got 1000000000000; e.g. steps=100
    """
    v = getattr(cfg, name)
    if v is None and optional:
        return
    ok = not isinstance(v, bool) and isinstance(v, int) and (lo is None or v >= lo) and (hi is None or v <= hi)
    if not ok:
        if lo == 1:
            what = "a positive integer" + (f" up to {hi}" if hi is not None else "")
        else:
            what = "an integer" + (f" in {lo}..{hi}" if lo is not None and hi is not None else
                                   f" >= {lo}" if lo is not None else f" <= {hi}" if hi is not None else "")
        raise ConfigError(f"{_field(cfg, name)} must be {what}{' or None' if optional else ''}, got {show(v)}; "
                          f"e.g. {name}={example!r}")


def check_float(cfg: Any, name: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                hi_open: bool = False, example: Any, optional: bool = False) -> None:
    """`cfg.name` must be a finite number within the bounds (`lo_open`/`hi_open`: the bound itself is excluded);
    bools, NaN and infinities are refused, and None too unless `optional`.

    Example:
        >>> from condense.core.config import config
        >>> @config
        ... class _Lr:
        ...     lr: float = 1e-3
        >>> check_float(_Lr(lr=float("inf")), "lr", lo=0, lo_open=True, example=1e-3)
        Traceback (most recent call last):
        condense.errors.ConfigError: _Lr.lr must be a finite number > 0, got inf; e.g. lr=0.001
    """
    v = getattr(cfg, name)
    if v is None and optional:
        return
    finite = False
    if not isinstance(v, bool) and isinstance(v, (int, float)):
        try:
            f = float(v)
        except OverflowError:  # an int past 1e308
            f = math.inf
        finite = math.isfinite(f)
        if finite and (lo is None or (f > lo if lo_open else f >= lo)) and (
                hi is None or (f < hi if hi_open else f <= hi)):
            return
    if lo is not None and hi is not None:
        bound = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    elif lo is not None:
        bound = f"{'>' if lo_open else '>='} {lo}"
    else:
        bound = f"{'<' if hi_open else '<='} {hi}" if hi is not None else ""
    # a range says "finite" by itself, a one-sided bound does not: "> 0, got 0.0" but "a finite number > 0, got inf"
    what = bound if (lo is not None and hi is not None) or (finite and bound) else f"a finite number {bound}".strip()
    raise ConfigError(f"{_field(cfg, name)} must be {what}{' or None' if optional else ''}, got {show(v)}; "
                      f"e.g. {name}={example!r}")


def check_choice(cfg: Any, name: str, choices: Any, *, example: Any = None) -> None:
    """`cfg.name` must be one of `choices` (a string; unhashable values are refused with the list, not a TypeError).

    Example:
        >>> from condense.core.config import config
        >>> @config
        ... class _Choice:
        ...     loss: str = "auto"
        >>> check_choice(_Choice(loss=["auto"]), "loss", ("auto", "logits"))
        Traceback (most recent call last):
        condense.errors.ConfigError: _Choice.loss must be one of ['auto', 'logits'], got ['auto']; e.g. loss='auto'
    """
    v = getattr(cfg, name)
    names = list(choices)
    if not isinstance(v, str) or v not in names:
        raise ConfigError(f"{_field(cfg, name)} must be one of {names}, got {show(v)}; "
                          f"e.g. {name}={example if example is not None else names[0]!r}")


def check_nested(cfg: Any, name: str, cls: type, *, optional: bool = False) -> None:
    """`cfg.name` must be a `cls` config; a plain mapping of its fields (the Python API's
    `finetune={"steps": 100}`) is decoded into one by the one decoder (`config_codec.decode_value`), every value
    checked as `config_from_dict` checks it. A frozen config normalises its own field here, once.

    Example:
        >>> from condense.train.finetune import FineTuneConfig
        >>> FineTuneConfig(finetune={"steps": 5}).finetune.steps
        5
    """
    v = getattr(cfg, name)
    if isinstance(v, cls) or (v is None and optional):
        return
    path = _field(cfg, name)
    if not isinstance(v, dict):
        raise ConfigError(f"{path} must be a {cls.__name__}{' or None' if optional else ''} (or a mapping of its "
                          f"fields, e.g. {example_mapping(cls)}), got {show(v)}")
    try:
        decoded = decode_value(cls, v, path, 0)
    except Mismatch as e:
        raise ConfigError(f"{path} must be {e}, got {show(v)}") from None
    object.__setattr__(cfg, name, decoded)


def check_positive_int(cfg: Any, name: str, *, example: int = 8) -> None:
    """`cfg.name` must be an int in 1..MAX_COUNT (bools refused).

    Example:
        >>> from condense.core.config import config
        >>> @config
        ... class IntExample:
        ...     batches: int = 8
        >>> check_positive_int(IntExample(batches=0), "batches")
        Traceback (most recent call last):
        condense.errors.ConfigError: IntExample.batches must be a positive integer, got 0; e.g. 8
    """
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_COUNT:
        most = f" <= {MAX_COUNT}" if isinstance(v, int) and v > MAX_COUNT else ""
        raise ConfigError(f"{type(cfg).__name__}.{name} must be a positive integer{most}, got {show(v)}; "
                          f"e.g. {example}")
