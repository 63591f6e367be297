"""Property tests: `load_recipe` / `parse_recipe` on any input end in a Recipe or a ConfigError, never another
exception and never a hang (generated documents, mutated valid recipes, random bytes)."""
import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from condense.errors import CondenseError
from condense.recipes import Recipe, load_recipe, parse_overrides, parse_recipe

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)

# words a recipe uses, so generated documents reach past the first checks into steps and configs
WORDS = ["name", "task", "task_options", "measure", "steps", "description", "prune", "quantize", "fine-tune",
         "export", "fuse", "distill", "factorize", "early-exit", "method", "scheme", "format", "label",
         "structured", "unstructured", "nm", "layer-drop", "gradual", "dynamic", "static", "int8", "weight-only",
         "gptq", "rtn", "onnx", "onnx-int8", "kd", "svd", "n_drop", "ratio", "sparsity", "bits", "group_size",
         "finetune", "fit", "steps", "lr", "include", "exclude", "batch_sizes", "repeats", "threads", "device",
         "type", "FitConfig", "cpu", "blocks", "task-loss", "n", "m", "rank", "energy", "thresholds"]
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
           | st.sampled_from([0, 1, -1, 2, 10**400, 2**63]) | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from(WORDS) | st.text(max_size=8))
KEYS = st.sampled_from(WORDS) | st.text(max_size=6) | st.integers(-3, 3) | st.none() | st.booleans()
DOCS = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
                    max_leaves=25)

VALID = {"name": "t", "task": "digits", "measure": {"batch_sizes": [1, 8], "repeats": 2},
         "steps": [{"prune": {"method": "layer-drop", "n_drop": 1, "finetune": {"steps": 5, "lr": 1e-3}}},
                   {"prune": {"method": "unstructured", "sparsity": 0.5}},
                   {"quantize": {"scheme": "weight-only", "method": "gptq", "bits": 4, "label": "q"}},
                   {"fine-tune": {"finetune": {"steps": 3}}}, {"export": {"format": "onnx-int8"}}]}


def _paths(node, prefix=()):
    """Every (path, value) in a document, containers included."""
    yield prefix, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield from _paths(v, prefix + (k,))


PATHS = [p for p, _ in _paths(VALID) if p]


def _replace(doc, path, value):
    import copy

    doc = copy.deepcopy(doc)
    node = doc
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return doc


def _only_condense_errors(fn, *args, **kwargs):
    try:
        out = fn(*args, **kwargs)
    except CondenseError as e:
        assert str(e), "an error must say what to change"
        return None
    assert isinstance(out, Recipe)
    return out


def test_the_valid_recipe_parses():  # the mutations below start from a recipe that is accepted
    r = parse_recipe(VALID)
    assert [s.kind for s in r.steps] == ["prune", "prune", "quantize", "fine-tune", "export"]


@SETTINGS
@given(DOCS)
def test_generated_documents(doc):
    _only_condense_errors(parse_recipe, doc)
    _only_condense_errors(parse_recipe, {"steps": doc})
    _only_condense_errors(parse_recipe, {"steps": [doc]})


@SETTINGS
@given(st.sampled_from(PATHS), DOCS)
def test_one_value_of_a_valid_recipe_replaced(path, value):
    _only_condense_errors(parse_recipe, _replace(VALID, path, value))


@SETTINGS
@given(st.sampled_from(PATHS), DOCS)
def test_one_value_replaced_through_yaml_text(path, value):
    try:
        text = yaml.safe_dump(_replace(VALID, path, value))
    except yaml.YAMLError:  # not representable (e.g. a key type YAML cannot write): nothing to load
        return
    _only_condense_errors(load_recipe, text)


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes(data):
    _only_condense_errors(load_recipe, data)


@SETTINGS
@given(st.lists(st.sampled_from(list("[]{}:-, \n\t'\"&*!#|>?%@`") + ["steps", "a", "1", "&a ", "*a",
                                                                   "!!python/name:os.system", "!!set", "!!binary"]),
                max_size=40).map("".join))
def test_yaml_punctuation(text):
    _only_condense_errors(load_recipe, text + "\n")


@SETTINGS
@given(st.lists(st.text(max_size=20), max_size=3))
def test_set_overrides(pairs):
    try:
        over = parse_overrides(pairs)
    except CondenseError:
        return
    _only_condense_errors(parse_recipe, VALID, overrides=over)


@pytest.mark.parametrize("text, message", [
    ("steps: " + "[" * 1000 + "]" * 1000 + "\n", "is nested too deeply to read"),
    ("steps: " + "[" * 40 + "]" * 40 + "\n", "is nested more than 32 levels deep"),
    ("steps: &a [*a]\nname: x\n", "contains itself"),
    ("steps:\n  - fine-tune: {finetune: {steps: " + "9" * 5000 + "}}\n", "has a value YAML cannot read"),
    ("steps:\n  - fine-tune: {finetune: {lr: " + "9" * 400 + "}}\n", "must be a finite number (at most 1e308)"),
    ("steps: {quantize: {scheme: dynamic}}\n", "'steps' must be a list, got a mapping"),
    ("steps: [quantize]\n", "steps[0]: each step must be a one-key mapping"),
    ("steps: [{sharpen: {}}]\n", "steps[0]: unknown step 'sharpen'"),
    ("steps: [{quantize: {scheme: [dynamic]}}]\n", "steps[0] (quantize): unknown scheme ['dynamic']"),
    ("task_options: {1: 2}\nsteps: [{quantize: {}}]\n", "task_options key 1 is not an option name"),
    ("when: 2020-13-45\nsteps: [{quantize: {}}]\n", "has a value YAML cannot read"),
])
def test_malformed_recipes_name_the_problem(text, message):
    with pytest.raises(CondenseError) as e:
        load_recipe(text)
    assert message in str(e.value)


def test_non_utf8_file(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes(b"name: caf\xe9\nsteps: [{quantize: {scheme: dynamic}}]\n")
    with pytest.raises(CondenseError, match=r"is not UTF-8 text \(byte 9: b'\\xe9'\); save it as UTF-8"):
        load_recipe(p)
    with pytest.raises(CondenseError, match="is a folder; give a YAML file"):
        load_recipe(tmp_path)
    with pytest.raises(CondenseError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


@pytest.mark.parametrize("pair, message", [
    ("steps.²=1", "is not a dotted path of recipe keys"),
    ("steps..x=1", "is not a dotted path"),
    ("bits", "must be PATH=VALUE"),
    ("measure.repeats=" + "[" * 1000 + "]" * 1000, "cannot be read"),
])
def test_bad_set_paths(pair, message):
    with pytest.raises(CondenseError, match=message):
        parse_overrides([pair])


def test_float_fields_reject_integers_beyond_float_range():
    assert math.isinf(float("1e400"))  # YAML/JSON text 1e400 is inf, which the configs judge; 10**400 is not a float
    with pytest.raises(CondenseError, match=r"FitConfig.lr must be a finite number \(at most 1e308\), got <an integer "):
        parse_recipe(_replace(VALID, ("steps", 0, "prune", "finetune", "lr"), 10**400))
