import pytest

from condense.core.task import Task
from condense.errors import ConfigError
from condense.prune.layers import LayerDropConfig
from condense.quantize.weight_only import WeightOnlyConfig, WeightOnlyMethod
from condense.recipes import apply_overrides, load_recipe, parse_overrides, parse_recipe, register_step, run_recipe
from condense.recipes.steps import STEP_KINDS
from condense.train.finetune import FineTuneConfig
from condense.train.loop import FitConfig


def _doc(*steps, **top):
    return {"name": "t", "steps": list(steps), **top}


def test_steps_build_the_same_configs_as_python():
    r = parse_recipe(_doc({"prune": {"method": "layer-drop", "n_drop": 2, "finetune": {"steps": 5, "lr": "1e-3"}}},
                          {"quantize": {"scheme": "weight-only", "method": "gptq", "bits": 4, "label": "gptq4"}},
                          {"fine-tune": {"finetune": {"steps": 3}}}, {"fine-tune": None},
                          measure={"batch_sizes": [1, 8], "repeats": 2}))
    assert [s.config for s in r.steps] == [
        LayerDropConfig(n_drop=2, finetune=FitConfig(steps=5, lr=1e-3)),
        WeightOnlyConfig(method=WeightOnlyMethod.GPTQ, bits=4),
        FineTuneConfig(finetune=FitConfig(steps=3)), FineTuneConfig()]
    assert [s.label for s in r.steps] == ["prune:layer-drop", "gptq4", "fine-tune:task-loss", "fine-tune:task-loss-2"]
    assert r.measure.batch_sizes == (1, 8) and r.measure.repeats == 2
    assert [s.index for s in r.steps] == [0, 1, 2, 3]


@pytest.mark.parametrize("doc, message", [
    (_doc({"sharpen": {}}), "steps[0]: unknown step 'sharpen'; use one of:"),
    (_doc({"quantize": {"scheme": "dynamic"}}, {"prune": {"method": "layer-drop", "n_dorp": 2}}),
     "steps[1] (prune): LayerDropConfig has no field 'n_dorp' (did you mean 'n_drop'?); valid fields: n_drop, keep"),
    (_doc({"prune": {"method": "layer-drop", "n_drop": "two"}}),
     "steps[0] (prune): LayerDropConfig.n_drop must be an integer or null, got 'two'; e.g. n_drop=1"),
    (_doc({"prune": {"method": "layer-drop", "n_drop": 1, "finetune": {"steps": 1.5}}}),
     "steps[0] (prune): LayerDropConfig.finetune: FitConfig.steps must be an integer (not a fraction), got 1.5; "
     "e.g. steps=100"),
    (_doc({"quantize": {"scheme": "weight-only", "bits": 4, "method": "hqq"}}),
     "steps[0] (quantize): WeightOnlyConfig.method must be one of ['rtn', 'gptq', 'awq'], got 'hqq'; e.g. method=\"rtn\""),
    (_doc({"quantize": {"scheme": "int4"}}), "steps[0] (quantize): unknown scheme 'int4'; use one of:"),
    (_doc({"prune": {"n_drop": 1}}), "steps[0] (prune): say which method: one of"),
    (_doc({"prune": {"method": "layer-drop"}}), "steps[0] (prune): LayerDropConfig needs exactly one of n_drop"),
    (_doc({"quantize": {"scheme": "dynamic"}, "prune": {}}), "steps[0]: each step must be a one-key mapping"),
    (_doc({"quantize": [1, 2]}), "steps[0] (quantize): parameters must be a mapping"),
    (_doc({"quantize": {"scheme": "static", "include": ["fc1", 3]}}),
     "steps[0] (quantize): StaticInt8Config.include must be a list of strings, got ['fc1', 3]; e.g. include=[\"*\"]"),
    ({"name": "t"}, "a recipe needs a non-empty 'steps' list"),
    (_doc({"quantize": {}}, tasks="digits"), "unknown recipe key 'tasks'"),
    ([1, 2], "a recipe must be a mapping"),
    (_doc({"fine-tune": {"finetune": {"steps": 1}}}, measure={"repeats": 0}),
     "measure: MeasureConfig.repeats must be a positive integer up to 1000000, got 0"),
])
def test_every_problem_names_step_field_and_fix(doc, message):
    with pytest.raises(ConfigError) as e:
        parse_recipe(doc)
    assert message in str(e.value)


def test_malformed_yaml_gives_its_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: x\nsteps:\n  - quantize: {scheme: dynamic\n  - prune: {}\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML at line \d+, column \d+"):
        load_recipe(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")


def test_a_technique_missing_from_this_version_fails_validation_cleanly():
    register_step("test-missing", "method", {"x": "condense.not_a_module:XConfig"}, default="x")
    with pytest.raises(ConfigError, match=r"steps\[0\] \(test-missing\), method 'x': condense.not_a_module:XConfig "
                                          "is not available in this version of condense"):
        parse_recipe(_doc({"test-missing": {}}))


def test_distill_factorize_and_early_exit_steps_build_their_configs():
    from condense.distillation import DistillConfig
    from condense.early_exit import EarlyExitConfig
    from condense.factorize import FactorizeConfig

    for kind in ("distill", "factorize", "early-exit"):  # registered, resolved lazily
        assert kind in STEP_KINDS
    recipe = parse_recipe(_doc({"factorize": {"rank_ratio": 0.5, "activation_aware": True}},
                               {"distill": {"layers": 2, "finetune": {"steps": 5}}},
                               {"early-exit": {"threshold": 0.9}}))
    assert [type(s.config) for s in recipe.steps] == [FactorizeConfig, DistillConfig, EarlyExitConfig]
    assert recipe.steps[0].config.activation_aware and recipe.steps[1].config.finetune.steps == 5
    with pytest.raises(ConfigError, match=r"steps\[0\] \(factorize\): FactorizeConfig has no field 'rank_ratoi'"):
        parse_recipe(_doc({"factorize": {"rank_ratoi": 0.5}}))


def test_overrides_set_dotted_paths_and_reject_bad_ones():
    doc = _doc({"prune": {"method": "layer-drop", "n_drop": 2, "finetune": {"steps": 500}}})
    over = parse_overrides(["steps.0.prune.finetune.steps=5", "measure.repeats=2", "name=small"])
    assert over == {"steps.0.prune.finetune.steps": 5, "measure.repeats": 2, "name": "small"}
    r = parse_recipe(doc, overrides=over)
    assert r.steps[0].config.finetune.steps == 5 and r.measure.repeats == 2 and r.name == "small"
    assert doc["steps"][0]["prune"]["finetune"]["steps"] == 500  # the original is untouched
    with pytest.raises(ConfigError, match=r"'3' is not a step index; the recipe has steps 0..0"):
        apply_overrides(doc, {"steps.3.prune.n_drop": 1})
    with pytest.raises(ConfigError, match="must be PATH=VALUE"):
        parse_overrides(["steps.0"])


def test_validation_happens_before_any_work(tmp_path):
    built = []

    def build():
        built.append(1)
        raise AssertionError("the model must not be built for an invalid recipe")

    task = Task("never", build, evaluate=lambda m: {"a": 1.0}, primary_metric="a", inputs=[0.0])
    p = tmp_path / "r.yaml"
    p.write_text("name: t\nsteps:\n  - fine-tune: {}\n  - quantize: {scheme: nope}\n")
    with pytest.raises(ConfigError, match=r"steps\[1\] \(quantize\): unknown scheme"):
        run_recipe(p, tmp_path / "out", task=task)
    assert built == [] and not (tmp_path / "out").exists()
