"""Property tests: `read_metadata` and `load` on a real artifact whose condense.json was mutated (values replaced,
types changed, keys dropped, deep nesting, bytes flipped) end in a loaded model or a CondenseError, nothing else,
and never hang."""
import copy
import json
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import condense
from condense.core.artifact import META_FILE, load, read_metadata
from condense.errors import ArtifactError, CondenseError
from condense.tasks import get_task

SETTINGS = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class Tied(torch.nn.Module):
    """A mostly-zero embedding tied to the output layer: the artifact has both an alias and an encoded tensor."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(32, 8)
        self.head = torch.nn.Linear(8, 32, bias=False)
        self.head.weight = self.emb.weight
        with torch.no_grad():
            self.emb.weight[8:] = 0


def _tiny():
    return get_task("condense.testing:tiny_task")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """name -> (folder, pristine metadata, loader); pruned (encoded + transform), int8 (codec + transform), tied
    (alias + encoded)."""
    root = tmp_path_factory.mktemp("artifacts")
    task = _tiny()
    out = {}
    for name, model, loader in (
            ("pruned", condense.prune_(task.build_model(), condense.UnstructuredConfig(sparsity=0.75)),
             lambda d: load(d, task=task)),
            ("int8", condense.quantize_(task.build_model(), condense.DynamicInt8Config()),
             lambda d: load(d, task=task)),
            ("tied", Tied(), lambda d: load(d, model=Tied()))):
        d = condense.save(model, root / name)
        meta = read_metadata(d)
        loader(d)  # the pristine artifact loads
        out[name] = (d, meta, loader)
    assert out["tied"][1]["aliases"] == {"head.weight": "emb.weight"} and out["tied"][1]["encoded"]
    assert out["pruned"][1]["encoded"] and out["int8"][1]["transforms"]
    return out


JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.sampled_from([10**400, -1, 0])
                    | st.floats(allow_nan=False) | st.text(max_size=10)
                    | st.sampled_from(["fc1", "fc2", "emb.weight", "sparse-bitmask", "DynamicInt8Config", "layers"]),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                    max_leaves=12)
DEEP = "__deep__"


def _paths(node, prefix=()):
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield from _paths(v, prefix + (k,))


@st.composite
def mutations(draw, meta):
    """A mutated copy of `meta`: at 1-3 paths a value replaced, its type changed, the key dropped or nested deep."""
    meta = copy.deepcopy(meta)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(meta) if p]
        path = draw(st.sampled_from(paths))
        parent = meta
        for k in path[:-1]:
            parent = parent[k]
        key, old = path[-1], parent[path[-1]]
        op = draw(st.sampled_from(["replace", "drop", "str", "wrap-list", "wrap-dict", "deep", "number"]))
        if op == "drop" and isinstance(parent, dict):
            del parent[key]
        elif op == "drop":
            parent.pop(key)
        elif op == "str":
            parent[key] = json.dumps(old)
        elif op == "wrap-list":
            parent[key] = [old]
        elif op == "wrap-dict":
            parent[key] = {"x": old}
        elif op == "deep":
            parent[key] = DEEP
        elif op == "number":
            parent[key] = draw(st.sampled_from([0, -1, 1, 2, 3, 2**40, 10**400, 1.5, True]))
        else:
            parent[key] = draw(JSON)
    return meta


def _write(d, meta, depth):
    text = json.dumps(meta).replace(json.dumps(DEEP), "[" * depth + "]" * depth)
    (d / META_FILE).write_text(text)


def _check(d, loader):
    """Only condense's errors, each with a message; a successful load gives a module."""
    try:
        read_metadata(d)
        model = loader(d)
    except CondenseError as e:
        assert str(e)
        return
    assert isinstance(model, torch.nn.Module)


@pytest.mark.parametrize("name", ["pruned", "int8", "tied"])
def test_mutated_metadata_gives_a_model_or_a_condense_error(artifacts, tmp_path, name):
    src, meta, loader = artifacts[name]
    d = tmp_path / name
    shutil.copytree(src, d)

    @SETTINGS
    @given(mutations(meta), st.sampled_from([3, 70, 3000]))
    def run(mutated, depth):
        _write(d, mutated, depth)
        _check(d, loader)

    run()


@SETTINGS
@given(st.data())
def test_flipped_and_truncated_bytes(artifacts, tmp_path_factory, data):
    src, meta, loader = artifacts[data.draw(st.sampled_from(["pruned", "int8", "tied"]))]
    d = tmp_path_factory.getbasetemp() / "flipped"
    if not d.exists():
        shutil.copytree(src, d)
    for w in d.glob("weights-*"):
        w.unlink()
    shutil.copy(src / meta["weights_file"], d / meta["weights_file"])
    raw = bytearray(json.dumps(meta).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    raw = raw[:data.draw(st.integers(0, len(raw)))] if data.draw(st.booleans()) else raw
    (d / META_FILE).write_bytes(bytes(raw))
    _check(d, loader)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(format_version="2"), "format_version must be a positive integer"),
    (lambda m: m.update(format_version=99), "artifact format 99 is newer than this condense supports"),
    (lambda m: m.update(transforms={"0": m["transforms"][0]}), "transforms must be a list"),
    (lambda m: m["transforms"].append("quantize"), "transforms[1] must be a mapping"),
    (lambda m: m.update(encoded=["fc1.weight"]), "encoded must be a mapping"),
    (lambda m: m["encoded"]["fc1.weight"].update(shape=[16, "8"]), "encoded['fc1.weight'] must be a mapping"),
    (lambda m: m["encoded"]["fc1.weight"].update(shape=[16, 9]), "sparse tensor of shape [16, 9] needs"),
    (lambda m: m["encoded"].update({"fc9.weight": {"encoding": "sparse-bitmask", "shape": [2]}}),
     "encoded tensor 'fc9.weight' has no parts"),
    (lambda m: m.update(aliases=["fc1.weight"]), "aliases must be a mapping"),
    (lambda m: m.update(aliases={"fc3.weight": "nope"}), "alias 'fc3.weight' points to 'nope', which is not in"),
    (lambda m: m.update(task={"name": 3}), "task must be null or a mapping"),
    (lambda m: m.update(weights_file=7), "weights_file must be a non-empty string"),
    (lambda m: m["transforms"][0]["details"].update(layers=5), "transforms[0] (UnstructuredConfig) cannot be replayed"),
    (lambda m: m["transforms"][0]["config"].update(type="Nope"), "transforms[0] has an invalid config"),
    (lambda m: m.update(metadata=DEEP), "is nested more than 64 levels deep"),
])
def test_damaged_metadata_names_the_field(artifacts, tmp_path, edit, message):
    src, meta, loader = artifacts["pruned"]
    d = tmp_path / "a"
    shutil.copytree(src, d)
    meta = copy.deepcopy(meta)
    edit(meta)
    _write(d, meta, 100)
    with pytest.raises(ArtifactError) as e:
        read_metadata(d)
        loader(d)
    assert message in str(e.value)


def test_unreadable_metadata(artifacts, tmp_path):
    d = tmp_path / "a"
    (d / META_FILE).mkdir(parents=True)
    with pytest.raises(ArtifactError, match="cannot be read .*must be a readable file"):
        read_metadata(d)
    (d / META_FILE).rmdir()
    (d / META_FILE).write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ArtifactError, match="is corrupt"):
        read_metadata(d)
    (d / META_FILE).write_text('{"format": "condense.artifact", "x": ' + "9" * 5000 + "}")
    with pytest.raises(ArtifactError, match="is corrupt"):
        read_metadata(d)
