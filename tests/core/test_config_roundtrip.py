"""Every config the package exports round-trips through JSON and the one decoder, with default and with
non-default (nested) values; mappings written before versions and before the renames still load."""
import dataclasses
import enum
import json
import typing
import warnings

import pytest

import condense
from condense.core.config import Renamed, config, config_from_dict, decode_config, registered_configs
from condense.core.transforms import load_techniques
from condense.errors import ConfigError
from condense.recipes.schema import build_config

load_techniques()
for _name in condense.__all__:  # the lazily exported configs (measurement, search, train, federated, ...)
    if _name.endswith("Config"):
        getattr(condense, _name)

from condense.train.loop import FitConfig  # noqa: E402

# Configs without a meaningful all-default instance: a minimal valid one.
BASES = {"LayerDropConfig": {"n_drop": 1}, "MixedPrecisionConfig": {"base": {"type": "DynamicInt8Config"}}}
NESTED = FitConfig(steps=7, lr=0.01, schedule="cosine", betas=(0.8, 0.95), grad_clip=None, seed=3)
CONFIGS = sorted(n for n, c in registered_configs().items()
                 if c.__module__.startswith("condense.") and not n.startswith("_"))


def test_every_exported_config_is_registered():
    exported = {n for n in condense.__all__ if n.endswith("Config")}
    assert len(exported) >= 20 and exported <= set(CONFIGS)


def _changed(tp, default):
    """A valid-looking value of hint `tp` other than `default`, or None to leave the field alone."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, type(int | None)):
        if any(a is FitConfig for a in args):
            return NESTED
        return _changed(args[0], default) if default is None or isinstance(default, args[0]) else None
    if tp is FitConfig:
        return NESTED
    if tp is str:
        return "layers.0" if default == "" else None  # other strings are choices: left alone
    if tp is bool:
        return not default
    if tp is int:
        return 2 if default is None else default + 1
    if tp is float:
        return 0.5 if default is None else (default * 0.5 if default else 0.25)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return next(m for m in tp if m != default)
    if typing.get_origin(tp) is tuple and args and args[-1] is Ellipsis:
        return {str: ("a.*", "b"), int: (1, 2), float: (0.5, 0.9)}.get(args[0])
    return None


def _base(cls):
    return decode_config(cls, BASES.get(cls.__name__, {}))


def _non_default(cls):
    """An instance with every field changed that accepts a change on its own (each kept only if valid)."""
    base = _base(cls)
    kw = {k: getattr(base, k) for k in BASES.get(cls.__name__, {})}
    hints = typing.get_type_hints(cls)
    changed = []
    for f in dataclasses.fields(cls):
        new = _changed(hints[f.name], f.default if f.default is not dataclasses.MISSING else None)
        if new is None:
            continue
        try:
            cls(**{**kw, f.name: new})
        except ConfigError:
            continue
        kw[f.name] = new
        changed.append(f.name)
    return cls(**kw), changed


def _round_trip(cfg):
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["type"] == type(cfg).__name__ and d["version"] == type(cfg).version
    return config_from_dict(d)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_round_trips_through_json(name):
    cls = registered_configs()[name]
    default = _base(cls)
    assert _round_trip(default) == default
    cfg, changed = _non_default(cls)
    if not dataclasses.fields(cls):
        return
    assert changed, f"{name}: no field took a non-default value; extend _changed"
    assert cfg != default and _round_trip(cfg) == cfg
    # the decoder reads the Python API's values the same way: a mapping of fields, no 'type' needed
    assert decode_config(cls, {k: v for k, v in json.loads(json.dumps(cfg.to_dict())).items()
                               if k not in ("type", "version")}) == cfg


def test_nested_training_configs_round_trip_with_their_values():
    holders = [n for n in CONFIGS if any(FitConfig in (tp, *typing.get_args(tp))
                                         for tp in typing.get_type_hints(registered_configs()[n]).values())]
    assert set(holders) == {"DistillConfig", "EarlyExitConfig", "FactorizeConfig", "FineTuneConfig",
                            "GradualPruneConfig", "LayerDropConfig", "SearchConfig", "StructuredConfig"}
    for name in holders:
        cls = registered_configs()[name]
        cfg = dataclasses.replace(_base(cls), finetune=NESTED)  # one name for the nested training config
        again = _round_trip(cfg)
        assert again.finetune == NESTED and again.finetune.betas == (0.8, 0.95) and again == cfg
        # `condense prune --set 'finetune={"steps": 100}'` and a recipe's `finetune: {steps: 100}`
        built = build_config(cls, {**BASES.get(name, {}), "finetune": {"steps": 100}}, where="--set")
        assert built.finetune == FitConfig(steps=100), name


def test_mappings_without_a_version_load_as_version_1():
    d = FitConfig(steps=9).to_dict()
    del d["version"]
    assert config_from_dict(d) == FitConfig(steps=9)
    old = {"type": "StructuredConfig", "ratio": 0.25, "finetune": {"type": "FitConfig", "steps": 4}}  # pre-version
    assert config_from_dict(old) == config_from_dict({**old, "version": 1})
    with pytest.raises(ConfigError, match=r"FitConfig was written by a newer condense \(version 2; this one reads "
                                          r"up to 1\); upgrade condense"):
        config_from_dict({**d, "version": 2})
    with pytest.raises(ConfigError, match="FitConfig.version must be a positive integer, got 0"):
        config_from_dict({**d, "version": 0})


@config
class _Versioned:
    """Version 1 had `size` in bytes; version 2 has `size_kb`."""

    size_kb: float = 1.0
    version = 2

    @staticmethod
    def upgrade(fields, version):
        assert version == 1
        fields["size_kb"] = fields.pop("size") / 1024
        return fields


def test_older_versions_are_upgraded_by_the_class_hook():
    assert _Versioned(size_kb=2.0).to_dict() == {"type": "_Versioned", "version": 2, "size_kb": 2.0}
    assert config_from_dict({"type": "_Versioned", "size": 4096}) == _Versioned(size_kb=4.0)  # no version: 1
    assert config_from_dict({"type": "_Versioned", "version": 2, "size_kb": 3}) == _Versioned(size_kb=3.0)
    with pytest.raises(TypeError, match="give it an upgrade"):
        config(type("_NoHook", (), {"__annotations__": {"x": "int"}, "x": 1, "version": 2}))


# (config, a mapping with old names, the new finetune it means, what the first old attribute reads, warning names)
OLD_NAMES = [
    ("DistillConfig", {"fit": {"steps": 5}}, FitConfig(steps=5), FitConfig(steps=5), "DistillConfig.finetune"),
    ("EarlyExitConfig", {"fit": {"steps": 5}}, FitConfig(steps=5), FitConfig(steps=5), "EarlyExitConfig.finetune"),
    ("FineTuneConfig", {"fit": {"steps": 5}}, FitConfig(steps=5), FitConfig(steps=5), "FineTuneConfig.finetune"),
    ("GradualPruneConfig", {"finetune_steps_per_event": 8, "lr": 5e-3}, FitConfig(steps=8, lr=5e-3), 8,
     "GradualPruneConfig.finetune.steps"),
    ("GradualPruneConfig", {"finetune_steps_per_event": 0}, None, 0, "GradualPruneConfig.finetune.steps"),
    ("SearchConfig", {"recovery_steps": 200, "recovery_lr": 5e-5},
     FitConfig(steps=200, lr=5e-5, schedule="cosine", warmup_steps=20), 200, "SearchConfig.finetune.steps"),
    ("SearchConfig", {"recovery_steps": "0", "recovery_lr": 5e-5}, None, 0, "SearchConfig.finetune.steps"),
]


@pytest.mark.parametrize("name, old, finetune, reads, new", OLD_NAMES)
def test_old_field_names_still_decode_with_a_deprecation_warning(name, old, finetune, reads, new):
    cls = registered_configs()[name]
    with pytest.warns(DeprecationWarning, match=f"use {new}"):
        cfg = config_from_dict({"type": name, **old})  # an artifact or search trial written before
    assert cfg.finetune == finetune
    with pytest.warns(DeprecationWarning, match=f"use {new}"):
        assert build_config(cls, old, where="--set") == cfg  # a recipe or --set
    with pytest.warns(DeprecationWarning, match=f"use {new}"):
        assert cls(**old) == cfg  # the Python API's keyword
    with pytest.warns(DeprecationWarning, match=f"use {new}"):  # the old attribute still reads
        assert getattr(cfg, next(iter(old))) == reads
    assert not set(old) & set(cfg.to_dict()) and "finetune" in cfg.to_dict()  # written under the new name only


def test_old_and_new_name_together_is_an_error_naming_the_fix():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(ConfigError, match="DistillConfig: both finetune and fit are given, and fit is the "
                                              "deprecated old name of finetune; drop fit"):
            build_config(registered_configs()["DistillConfig"], {"fit": {}, "finetune": {}}, where="steps[0]")
    with pytest.raises(TypeError, match="needs 'x' to be a field"):
        config(type("_BadRename", (), {"__annotations__": {"y": "int"}, "y": 1, "renamed": (Renamed("z", "x"),)}))


@pytest.mark.parametrize("value, expected", [(12, 12), ("12", 12), (1e3, 1000), ("1e3", 1000), (" 7 ", 7)])
def test_cli_and_yaml_numbers_decode_into_int_fields(value, expected):
    # `--set steps=12` arrives as the JSON number 12; YAML 1.1 reads `steps: 1e3` as the string "1e3"
    cfg = build_config(FitConfig, {"steps": value}, where="--set")
    assert cfg.steps == expected and type(cfg.steps) is int


@pytest.mark.parametrize("params, message", [
    ({"steps": 1.5}, "--set: FitConfig.steps must be an integer (not a fraction), got 1.5; e.g. steps=100"),
    ({"steps": "twelve"}, "--set: FitConfig.steps must be an integer, got 'twelve'; e.g. steps=100"),
    ({"nesterov": "yes"}, "--set: FitConfig.nesterov must be true or false, got 'yes'; e.g. nesterov=false"),
    ({"optimizer": 3}, "--set: FitConfig.optimizer must be a string, got 3; e.g. optimizer=\"adamw\""),
    ({"stepz": 3}, "--set: FitConfig has no field 'stepz' (did you mean 'steps'?); valid fields: steps, lr"),
    ({"type": "TrainConfig", "steps": 3}, None),  # a subclass, named
    ({"type": "DistillConfig"}, "--set: 'type' must be 'FitConfig' (or leave it out), got 'DistillConfig'"),
])
def test_decode_config_errors_name_the_field_the_type_and_an_example(params, message):
    if message is None:
        assert type(build_config(FitConfig, params, where="--set")).__name__ == "TrainConfig"
        return
    with pytest.raises(ConfigError) as e:
        build_config(FitConfig, params, where="--set")
    assert message in str(e.value)


def test_strings_enums_and_bare_patterns_follow_the_documented_rule():
    q = build_config(registered_configs()["WeightOnlyConfig"], {"method": "GPTQ", "include": "blocks.*"},
                     where="steps[0]")
    assert q.method.value == "gptq" and q.include == ("blocks.*",)  # one pattern, not one per character
