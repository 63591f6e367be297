import enum

import pytest

from condense.core.config import config, config_from_dict, registered_configs
from condense.core.registry import Registry, TypeRegistry
from condense.errors import CondenseError, ConfigError


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@config
class _DemoConfig:
    bits: int = 8
    colour: Colour = Colour.RED
    patterns: tuple[str, ...] = ("*",)
    scale: float | None = None


def test_registry_lookup_and_error_lists_choices():
    r = Registry("widget")
    r.register("a", 1)
    assert r.get("a") == 1 and "a" in r and list(r) == ["a"]
    with pytest.raises(CondenseError, match="unknown widget 'b'; choose one of: a"):
        r.get("b")
    with pytest.raises(KeyError):
        r.register("a", 2)


def test_type_registry_resolves_through_mro():
    class Base: ...
    class Child(Base): ...
    r = TypeRegistry("handler")
    r.register(Base)("base")
    assert r.find(Child()) == "base" and r.find(int) is None


# Configs that have no meaningful all-default instance, with a minimal valid example.
_EXAMPLES = {"LayerDropConfig": {"n_drop": 1}, "MixedPrecisionConfig": {"base": {"type": "DynamicInt8Config"}}}


def test_every_registered_config_round_trips_through_json():
    import json

    from condense.core.transforms import load_techniques
    import condense.measurement.api  # noqa: F401
    import condense.train.loop  # noqa: F401

    load_techniques()  # registers every technique's configs
    assert len(registered_configs()) >= 10
    for name, cls in registered_configs().items():
        if name.startswith("_"):
            continue
        cfg = config_from_dict({"type": name, **_EXAMPLES.get(name, {})})
        again = config_from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg, name


def test_config_round_trip_keeps_enums_and_tuples():
    cfg = _DemoConfig(bits=4, colour=Colour.BLUE, patterns=("a.*", "b"), scale=0.5)
    d = cfg.to_dict()
    assert d == {"type": "_DemoConfig", "version": 1, "bits": 4, "colour": "blue", "patterns": ["a.*", "b"],
                 "scale": 0.5}
    assert config_from_dict(d) == cfg


def test_config_is_frozen_and_unknown_fields_are_named():
    cfg = _DemoConfig()
    with pytest.raises(Exception):
        cfg.bits = 3  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"_DemoConfig has no field 'bitz' \(did you mean 'bits'\?\); "
                                          "valid fields: bits, colour"):
        config_from_dict({"type": "_DemoConfig", "bitz": 3})
    with pytest.raises(ConfigError, match="unknown config type 'Nope'"):
        config_from_dict({"type": "Nope"})
