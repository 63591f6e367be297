"""YAML recipes: an ordered list of steps, validated as a whole before any work, run through the pipeline.

A recipe file:

    name: digits-small
    task: digits                      # optional: `condense run` may pass --task instead
    task_options: {epochs: 30}        # optional: options of the task factory
    measure: {batch_sizes: [1, 256]}  # optional: MeasureConfig fields
    steps:
      - prune: {method: structured, ratio: 0.5, finetune: {steps: 200, lr: 1.0e-3}}
      - quantize: {scheme: static}
      - export: {format: onnx-int8, label: ort-int8}

Each step is a one-key mapping `KIND: {params}`; the params are the fields of the config its method selects
(`STEP_KINDS`), plus an optional `label`. Every problem (malformed YAML, unknown step, unknown field, wrong type,
a value the config rejects) is reported before anything runs, naming the step (`steps[2] (prune)`, 0-based like
`--set` paths), the field and the fix. `--set`-style overrides (`steps.0.prune.finetune.steps=5`) scale a
recipe down for a quick run.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from condense.core.validate import Cycle, nesting_depth
from condense.errors import ConfigError
from condense.recipes.schema import build_config
from condense.recipes.steps import STEP_KINDS, resolve_class

TOP_LEVEL = ("name", "description", "task", "task_options", "measure", "steps")


@dataclass(frozen=True)
class RecipeStep:
    """One validated step: its 0-based position (as in `--set steps.N...`), kind, method, label and config."""

    index: int
    kind: str
    method: str
    label: str
    config: Any


@dataclass(frozen=True)
class Recipe:
    """A validated recipe; `steps` hold ready config objects."""

    name: str
    steps: tuple[RecipeStep, ...]
    task: str | None = None
    task_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    measure: Any = None  # a MeasureConfig
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (configs as their `to_dict()`), written into reports."""
        return {"name": self.name, "task": self.task, "task_options": self.task_options,
                "description": self.description,
                "measure": self.measure.to_dict() if self.measure is not None else None,
                "steps": [{"kind": s.kind, "method": s.method, "label": s.label, "config": s.config.to_dict()}
                          for s in self.steps]}


MAX_DEPTH = 32  # nesting levels a recipe may have; real ones use 5 (steps[i].prune.finetune.lr)
_PATH_PART = re.compile(r"[A-Za-z0-9_-]+")


def _check_depth(doc: Any, *, origin: str = "the recipe") -> None:
    """Refuse documents nested deeper than MAX_DEPTH or containing themselves (a YAML alias loop), which would
    otherwise exhaust the stack in any code that walks them."""
    try:
        depth = nesting_depth(doc, limit=MAX_DEPTH)
    except Cycle:
        raise ConfigError(f"{origin} contains itself (a YAML alias inside its own anchor); write the values out") \
            from None
    if depth > MAX_DEPTH:
        raise ConfigError(f"{origin} is nested more than {MAX_DEPTH} levels deep; a recipe needs a few levels "
                          "(steps: [{prune: {finetune: {steps: 200}}}])")


def _yaml_load(text: str, origin: str) -> Any:
    """YAML text -> data; every failure of the parser (syntax, a huge integer, deep nesting) a ConfigError."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{origin} is not valid YAML{at}: {problem}; fix the indentation or quoting there") \
            from None
    except RecursionError:
        raise ConfigError(f"{origin} is nested too deeply to read; a recipe needs at most {MAX_DEPTH} levels") \
            from None
    except (ValueError, ArithmeticError) as e:  # an integer of thousands of digits, a date like 2020-13-45
        raise ConfigError(f"{origin} has a value YAML cannot read ({e}); fix or quote that value") from None


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    except (RecursionError, ValueError, ArithmeticError):
        raise ConfigError(f"--set value {text[:40]!r}{'...' if len(text) > 40 else ''} cannot be read (too large "
                          "or too deeply nested); give a plain number, string or short list") from None


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """`["steps.0.prune.n_drop=1", ...]` -> {"steps.0.prune.n_drop": 1} (values read as YAML scalars)."""
    out: dict[str, Any] = {}
    for p in pairs:
        key, sep, val = p.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {p!r} must be PATH=VALUE, e.g. --set steps.0.prune.n_drop=1 or "
                              "--set measure.repeats=3")
        if not all(_PATH_PART.fullmatch(part) for part in key.split(".")):
            raise ConfigError(f"--set {p!r}: {key!r} is not a dotted path of recipe keys and 0-based step indices "
                              "(letters, digits, - and _ separated by dots), e.g. --set steps.0.prune.n_drop=1")
        out[key] = _parse_value(val)
    return out


def apply_overrides(doc: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted paths in the raw recipe document (list items by 0-based index); returns a changed copy."""
    import copy

    doc = copy.deepcopy(doc)
    for path, value in overrides.items():
        parts = path.split(".")
        node: Any = doc
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not (part.isascii() and part.isdigit()) or int(part) >= len(node):
                    raise ConfigError(f"--set {path}: {part!r} is not a step index; the recipe has steps "
                                      f"0..{len(node) - 1} (0-based)")
                key: Any = int(part)
            elif isinstance(node, dict):
                key = part
                if not last and key not in node:
                    node[key] = {}
            else:
                raise ConfigError(f"--set {path}: {'.'.join(parts[:i])} is a value, not a mapping; "
                                  "set it directly")
            if last:
                node[key] = value
            else:
                node = node[key]
    return doc


def _step(i: int, raw: Any) -> RecipeStep:
    where = f"steps[{i}]"
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ConfigError(f"{where}: each step must be a one-key mapping KIND: {{params}}, e.g. "
                          f"'- quantize: {{scheme: dynamic}}'; got {raw!r}. Step kinds: {', '.join(STEP_KINDS)}")
    kind, params = next(iter(raw.items()))
    if kind not in STEP_KINDS:
        raise ConfigError(f"{where}: unknown step {kind!r}; use one of: {', '.join(STEP_KINDS)}")
    where = f"steps[{i}] ({kind})"
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: parameters must be a mapping, e.g. '- {kind}: {{...}}'; got {params!r}")
    params = dict(params)
    entry = STEP_KINDS.get(kind)
    method = params.get(entry.key, entry.default)
    if method is None:
        raise ConfigError(f"{where}: say which {entry.key}: one of {', '.join(sorted(entry.methods))}, e.g. "
                          f"'- {kind}: {{{entry.key}: {sorted(entry.methods)[0]}}}'")
    if not isinstance(method, str) or method not in entry.methods:
        raise ConfigError(f"{where}: unknown {entry.key} {method!r}; use one of: {', '.join(sorted(entry.methods))}")
    label = params.pop("label", None)
    if label is not None and not isinstance(label, str):
        raise ConfigError(f"{where}: label must be a string, got {label!r}")
    cls = resolve_class(entry.methods[method], where=f"{where}, {entry.key} {method!r}")
    if entry.key not in {f.name for f in dataclasses.fields(cls)}:
        params.pop(entry.key, None)  # it chose the class; the class has no field of that name
    cfg = build_config(cls, params, where=where)
    return RecipeStep(i, kind, method, label or f"{kind}:{method}", cfg)


def parse_recipe(doc: Any, *, overrides: dict[str, Any] | None = None) -> Recipe:
    """Validate a recipe document (the YAML's data) and build every step's config; nothing runs.

    Example:
        >>> r = parse_recipe({"name": "q", "steps": [{"quantize": {"scheme": "dynamic"}}]})
        >>> [(s.kind, type(s.config).__name__) for s in r.steps]
        [('quantize', 'DynamicInt8Config')]
    """
    from condense.measurement.api import MeasureConfig

    if not isinstance(doc, dict):
        raise ConfigError(f"a recipe must be a mapping with a 'steps' list, got {type(doc).__name__}; see "
                          "recipes/ for examples")
    _check_depth(doc)
    if overrides:
        doc = apply_overrides(doc, overrides)
    unknown = [k for k in doc if k not in TOP_LEVEL]
    if unknown:
        raise ConfigError(f"unknown recipe key {unknown[0]!r}; valid keys: {', '.join(TOP_LEVEL)}")
    steps = doc.get("steps")
    if isinstance(steps, dict):
        raise ConfigError("recipe key 'steps' must be a list, got a mapping; put '- ' before each step, e.g. "
                          "steps: [{prune: {method: structured}}, {quantize: {scheme: dynamic}}]")
    if not isinstance(steps, list) or not steps:
        raise ConfigError("a recipe needs a non-empty 'steps' list, e.g. steps: [{quantize: {scheme: dynamic}}]")
    name = doc.get("name", "recipe")
    for key, val, kind in (("name", name, str), ("task", doc.get("task"), (str, type(None))),
                           ("description", doc.get("description", ""), str),
                           ("task_options", doc.get("task_options", {}), dict),
                           ("measure", doc.get("measure", {}), (dict, type(None)))):
        if not isinstance(val, kind):
            what = "mapping" if kind in (dict, (dict, type(None))) else "string"
            raise ConfigError(f"recipe key {key!r} must be a {what}, got {val!r}")
    bad = [k for k in doc.get("task_options") or {} if not isinstance(k, str) or not k.isidentifier()]
    if bad:
        raise ConfigError(f"task_options key {bad[0]!r} is not an option name; use the task factory's argument "
                          "names, e.g. task_options: {preset: tiny}")
    measure = build_config(MeasureConfig, doc.get("measure") or {}, where="measure")
    built = tuple(_step(i, raw) for i, raw in enumerate(steps))
    seen: dict[str, int] = {}
    out = []
    for s in built:  # labels must be unique in the report
        n = seen.get(s.label, 0)
        seen[s.label] = n + 1
        out.append(s if n == 0 else dataclasses.replace(s, label=f"{s.label}-{n + 1}"))
    return Recipe(name=name, steps=tuple(out), task=doc.get("task"), task_options=dict(doc.get("task_options") or {}),
                  measure=measure, description=doc.get("description", ""))


def load_recipe(source: str | bytes | Path, *, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read and validate a YAML recipe file (or YAML text containing a newline, or its UTF-8 bytes).

    Any input, however malformed, ends in a value or a ConfigError naming the fix.

    Example:
        >>> load_recipe("name: q\\nsteps:\\n  - quantize: {scheme: dynamic}\\n").steps[0].label
        'quantize:dynamic'
    """
    if not isinstance(source, (str, bytes, Path)) or (isinstance(source, str) and not source.strip()):
        raise ConfigError(f"a recipe is a file path or YAML text, got {source!r}; e.g. recipes/digits.yaml")
    if isinstance(source, bytes):
        text, origin = _decode(source, "recipe text"), "recipe text"
    elif isinstance(source, str) and "\n" in source:
        text, origin = source, "recipe text"
    else:
        text, origin = None, str(source)
    if text is None:
        p = Path(source)
        try:
            data = p.read_bytes() if p.is_file() else None
        except (OSError, ValueError) as e:  # unreadable, or a path with a NUL byte
            raise ConfigError(f"recipe {source} cannot be read ({e}); give a readable YAML file") from None
        if data is None:
            what = "is a folder" if p.is_dir() else "does not exist"
            raise ConfigError(f"recipe {p} {what}; give a YAML file, e.g. recipes/digits.yaml")
        text = _decode(data, str(p))
    return parse_recipe(_yaml_load(text, origin), overrides=overrides)


def _decode(data: bytes, origin: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{origin} is not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r}); save it "
                          "as UTF-8") from None


def recipe_json(recipe: Recipe) -> str:
    return json.dumps(recipe.to_dict(), indent=2)
