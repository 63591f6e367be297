"""Property tests over every registered config: generated JSON-like inputs either build a config or raise a
ConfigError (never another exception, never a hang), and what builds round-trips through JSON unchanged.

Each class gets `EXAMPLES` generated dicts (80: about 2,000 in all, derandomized so the suite is reproducible); set
CONDENSE_PROPERTY_EXAMPLES=5000 to search harder, with random examples, locally.
"""
import dataclasses
import json
import math
import os
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import condense.measurement.api  # noqa: F401  (registers MeasureConfig)
import condense.searching.config  # noqa: F401  (registers SearchConfig)
import condense.train.api  # noqa: F401  (registers TrainConfig)
from condense.core.config import config_from_dict, registered_configs
from condense.core.transforms import load_techniques
from condense.errors import ConfigError

load_techniques()

EXAMPLES = int(os.environ.get("CONDENSE_PROPERTY_EXAMPLES", "80"))
SEARCHING = "CONDENSE_PROPERTY_EXAMPLES" in os.environ  # a local hunt: random, not the suite's fixed examples
# Configs without a meaningful all-default instance, with a minimal valid one to mutate.
BASES = {"LayerDropConfig": {"n_drop": 1}, "MixedPrecisionConfig": {"base": {"type": "DynamicInt8Config"}}}
CONFIGS = sorted(n for n in registered_configs() if not n.startswith("_") and n[0].isupper()
                 and registered_configs()[n].__module__.startswith("condense."))
_PROPS = settings(max_examples=EXAMPLES, deadline=2000, derandomize=not SEARCHING, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _deep(depth: int, kind: str):
    v = [] if kind == "list" else {}
    for _ in range(depth):
        v = [v] if kind == "list" else {"a": v}
    return v


odd_ints = st.sampled_from([0, -1, 1, 2**31, 2**32, 2**63 - 1, 2**63, -2**63 - 1, 10**12, 10**400, 10**4000])  # repr of 10**5000 fails
odd_floats = st.sampled_from([math.nan, math.inf, -math.inf, 1e400, -0.0, 1e-320, 1e308, 0.5, 1.0, 1.5, -5.0])
odd_strings = st.sampled_from(["", "abc", "1e400", "nan", "inf", "-1", "1.5", "12", "1%", "x*", "\x00", "é" * 3,
                               "auto", "none", "cosine", "GPTQ", "cpu", "cuda:99", "dynamic", "l2", "magnitude"])
scalars = st.one_of(st.none(), st.booleans(), st.integers(), odd_ints, st.floats(), odd_floats, st.text(max_size=8),
                    odd_strings)
json_values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                           st.dictionaries(st.text(max_size=5), kids, max_size=4)),
                           max_leaves=12)
# built once (never mutated): past the interpreter's recursion limit, and past any config's nesting limit
deep_values = st.sampled_from([_deep(n, kind) for n in (50, 1100, 5000) for kind in ("list", "dict")])


def _field_values(cls: type, draw_depth: int = 0) -> dict[str, st.SearchStrategy]:
    """Per field: random JSON values, plus near-valid ones built from the field's type hint."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        options = [json_values, deep_values]
        tp = hints[f.name]
        args = typing.get_args(tp)
        nested = [a for a in (tp, *args) if isinstance(a, type) and a.__name__ in registered_configs()
                  and registered_configs()[a.__name__] is a]
        if nested and draw_depth < 2:  # a mapping of the nested config's fields, themselves mutated
            options.append(_mutated(nested[0].__name__, draw_depth + 1, with_type=False))
        if f.default is not dataclasses.MISSING:
            d = json.loads(json.dumps(_encode_default(f.default)))
            options.append(st.just(d))
            if isinstance(d, list):
                options.append(st.lists(st.one_of(scalars, st.sampled_from(d or [0])), max_size=4))
        if tp is typing.Any:
            options.append(st.sampled_from([{"type": n} for n in CONFIGS] + [{"type": "Nope"}, {"type": [1]}]))
        out[f.name] = st.one_of(*options)
    return out


def _encode_default(d):
    return d.to_dict() if hasattr(d, "to_dict") else (
        d.value if hasattr(d, "value") and not isinstance(d, (int, float)) else
        list(d) if isinstance(d, tuple) else d)


def _mutated(name: str, depth: int = 0, *, with_type: bool = True) -> st.SearchStrategy:
    cls = registered_configs()[name]
    fields = _field_values(cls, depth)
    base = dict(BASES.get(name, {}))

    @st.composite
    def build(draw):
        d = dict(base)
        for k in draw(st.lists(st.sampled_from(sorted(fields)), max_size=4, unique=True)) if fields else ():
            d[k] = draw(fields[k])
        if draw(st.integers(0, 9)) == 0:  # sometimes an unknown field
            d[draw(st.text(max_size=6))] = draw(scalars)
        return {"type": name, **d} if with_type else d
    return build()


def _check(d):
    try:
        cfg = config_from_dict(d)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return
    # what builds is hashable (frozen, no lists inside) and round-trips through JSON unchanged
    hash(cfg)
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict(), allow_nan=False))) == cfg


@pytest.mark.parametrize("name", CONFIGS)
def test_generated_inputs_build_a_config_or_raise_config_error(name):
    @_PROPS
    @given(_mutated(name))
    def check(d):
        _check(d)
    check()


@_PROPS
@given(st.one_of(json_values, deep_values, st.builds(lambda n, v: {"type": n, **v}, st.sampled_from(CONFIGS),
                                                      st.dictionaries(st.text(max_size=6), scalars, max_size=3))))
def test_any_json_value_is_a_config_or_a_config_error(d):
    _check(d)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_default_round_trips(name):
    cfg = config_from_dict({"type": name, **BASES.get(name, {})})
    assert config_from_dict(cfg.to_dict()) == cfg
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert type(config_from_dict(cfg.to_dict())) is registered_configs()[name]
