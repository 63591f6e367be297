"""Opening a file runs no code and reads nothing outside its folder: crafted artifacts, recipes, checkpoints,
export records and ONNX graphs are refused with an error naming the fix, and nothing they name ever runs."""
import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import condense
from condense.cli import main
from condense.core.artifact import META_FILE
from condense.errors import ArtifactError, CondenseError
from condense.testing import TinyMLP

EVIL = {"factory": "os:system", "options": {"command": "touch MARKER"}}

# a module of the user's own: `make_task` wraps the shipped tiny task (so this test needs no cache)
USER_MODULE = """
from condense.testing import tiny_task

def make_task(seed=0):
    return tiny_task(seed)
"""

# a module shipped inside a downloaded artifact folder: importing it is enough to leave a marker
EVIL_MODULE = """
import pathlib
pathlib.Path(__file__).with_name("MARKER").touch()

def make_task(**options):
    raise SystemExit("evil_mod ran")
"""


def _artifact(d: Path, task: dict | None) -> Path:
    torch.manual_seed(0)
    condense.save(TinyMLP().eval(), d)
    _edit_meta(d, task=task)
    return d


def _edit_meta(d: Path, **changes) -> None:
    meta = json.loads((d / META_FILE).read_text())
    meta.update(changes)
    (d / META_FILE).write_text(json.dumps(meta))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("condense: error: "), err
    return lines[0]


@pytest.fixture
def clean_path(monkeypatch):
    """sys.path and sys.modules as they were before the test (the CLI may add the current folder)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name in ("evil_mod", "user_tasks"):
            del sys.modules[name]


# -- tasks named by files ----------------------------------------------------------------------------------------
def test_load_refuses_a_task_factory_named_by_the_artifact(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = _artifact(tmp_path / "a", EVIL)
    with pytest.raises(CondenseError, match=r"'os:system'.*--trust-task \(trust_task=True in Python\)"):
        condense.load(d)
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("command", [["measure", "--model", "A", "--no-quality"], ["export", "--model", "A", "--out",
                                                                                   "x.onnx"]])
def test_cli_refuses_a_task_factory_named_by_the_artifact(tmp_path, monkeypatch, capsys, clean_path, command):
    monkeypatch.chdir(tmp_path)
    _artifact(tmp_path / "A", EVIL)
    assert main(command) == 2
    line = _one_error_line(capsys)
    assert "'os:system'" in line and "--trust-task" in line
    assert not (tmp_path / "MARKER").exists() and not (tmp_path / "x.onnx").exists()


def test_a_module_inside_the_artifact_folder_is_never_imported(tmp_path, monkeypatch, capsys, clean_path):
    d = _artifact(tmp_path / "download", {"factory": "evil_mod:make_task", "options": {}})
    (d / "evil_mod.py").write_text(EVIL_MODULE)
    monkeypatch.chdir(d)
    assert main(["measure", "--model", ".", "--no-quality"]) == 2
    assert "'evil_mod:make_task'" in _one_error_line(capsys)
    assert main(["info", "."]) == 0
    assert not (d / "MARKER").exists() and "evil_mod" not in sys.modules
    assert str(d) not in sys.path and os.getcwd() not in sys.path  # the folder was not put on the import path


def test_cli_in_a_fresh_process_refuses_without_traceback(tmp_path):
    import subprocess

    d = _artifact(tmp_path / "download", {"factory": "evil_mod:make_task", "options": {}})
    (d / "evil_mod.py").write_text(EVIL_MODULE)
    env = {**os.environ, "PYTHONPATH": str(Path(condense.__file__).parents[1])}
    # -P: the interpreter itself adds no folder to sys.path (as for the installed `condense` script)
    r = subprocess.run([sys.executable, "-P", "-m", "condense", "measure", "--model", ".", "--no-quality"], cwd=d,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout
    assert r.stderr.count("\n") == 1 and "--trust-task" in r.stderr and "evil_mod:make_task" in r.stderr
    assert not (d / "MARKER").exists()


def test_a_trusted_user_task_artifact_loads_with_equal_outputs(tmp_path, monkeypatch, capsys, clean_path):
    (tmp_path / "user_tasks.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    sys.path.insert(0, str(tmp_path))
    task = condense.get_task("user_tasks:make_task", seed=3)  # given by the user directly: works as before
    model = task.build_model()
    d = condense.save(model, tmp_path / "mine")
    with pytest.raises(CondenseError, match="'user_tasks:make_task'.*--trust-task"):
        condense.load(d)
    loaded = condense.load(d, trust_task=True)
    x = torch.randn(5, 8)
    assert torch.equal(loaded(x), model(x))
    sys.path.remove(str(tmp_path))
    assert main(["measure", "--model", "mine", "--trust-task", "--no-quality", "--batch-sizes", "1",
                 "--repeats", "1"]) == 0  # --trust-task also lets the current folder be imported from
    assert "mine" in capsys.readouterr().out


def test_the_user_s_own_module_factory_task_on_the_command_line_still_works(tmp_path, monkeypatch, capsys,
                                                                            clean_path):
    (tmp_path / "user_tasks.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    assert main(["measure", "--task", "user_tasks:make_task", "--no-quality", "--batch-sizes", "1",
                 "--repeats", "1"]) == 0
    assert "fp32" in capsys.readouterr().out and str(tmp_path) in sys.path


def test_built_in_tasks_from_a_file_need_no_trust():
    from condense.tasks import task_from_spec

    assert task_from_spec({"factory": "condense.testing:tiny_task", "options": {"seed": 1}},
                          source="artifact x").name == "tiny"
    with pytest.raises(CondenseError, match="unknown task 'nope'; choose one of"):
        task_from_spec({"name": "nope"}, source="artifact x")
    for bad in ({"name": 3}, {}, {"name": "digits", "options": [1]}, ["digits"]):
        with pytest.raises(CondenseError, match="artifact x"):
            task_from_spec(bad, source="artifact x")


RECIPE = """
name: evil
task: os:system
task_options: {command: touch MARKER}
steps:
  - quantize: {scheme: dynamic}
"""


def test_a_recipe_task_factory_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(RECIPE)
    with pytest.raises(CondenseError, match=r"recipe 'evil' names the task factory 'os:system'.*trust_task=True"):
        condense.run_recipe(tmp_path / "r.yaml", tmp_path / "out")
    for extra in ([], ["--task-option", "command=touch MARKER"]):
        assert main(["run", "r.yaml", "--out", "out", *extra]) == 2
        line = _one_error_line(capsys)
        assert "'os:system'" in line and "--trust-task" in line
    assert not (tmp_path / "MARKER").exists() and not (tmp_path / "out").exists()


def test_a_search_worker_rebuilds_a_user_task_only_with_the_trust_its_parent_passes(tmp_path, monkeypatch,
                                                                                    clean_path):
    import subprocess

    from condense.searching import api, trials, worker
    from condense.searching.config import SearchConfig

    (tmp_path / "user_tasks.py").write_text(USER_MODULE)
    sys.path.insert(0, str(tmp_path))
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, **kw: started.append(cmd))
    api._spawn_workers(condense.get_task("user_tasks:make_task"), SearchConfig(budget="1%"), "sqlite:///x.db",
                       "s", 2)
    arg = json.loads(started[0][-1])
    ran = []
    monkeypatch.setattr(trials, "install_stop_handler", lambda: None)
    monkeypatch.setattr(trials, "run_worker", lambda task, *a, **kw: ran.append(task.name) or 0)
    assert worker.main([json.dumps(arg)]) == 0 and ran == ["tiny"]  # the parent's trust travels with the task
    with pytest.raises(CondenseError, match="'user_tasks:make_task'.*--trust-task"):
        worker.main([json.dumps({**arg, "trust_task": False})])
    with pytest.raises(CondenseError, match="'os:system'"):
        worker.main([json.dumps({**arg, "task": EVIL, "trust_task": False})])
    assert ran == ["tiny"]


def test_an_export_record_task_factory_is_refused(tmp_path, monkeypatch):
    from condense.loading import load_exported

    monkeypatch.chdir(tmp_path)
    torch.onnx.export(torch.nn.Linear(3, 2), (torch.ones(1, 3),), str(tmp_path / "m.onnx"), dynamo=False)
    (tmp_path / "m.json").write_text(json.dumps({"task": {"name": "os:system", "options": EVIL["options"]}}))
    with pytest.raises(CondenseError, match="export record .*'os:system'.*trust_task=True"):
        load_exported(tmp_path / "m.onnx")
    assert not (tmp_path / "MARKER").exists()


# -- paths read from files ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_weights_file_outside_the_artifact_is_refused(tmp_path, where):
    d = _artifact(tmp_path / "a", None)
    meta = json.loads((d / META_FILE).read_text())
    outside = tmp_path / "outside.safetensors"
    os.replace(d / meta["weights_file"], outside)  # a valid copy with the recorded checksum: only the path is wrong
    name = {"parent": "../outside.safetensors", "absolute": str(outside), "symlink": "weights-link.safetensors"}[where]
    if where == "symlink":
        (d / name).symlink_to(outside)
    _edit_meta(d, weights_file=name)
    with pytest.raises(ArtifactError, match=f"weights_file in .* is {name!r}, not a plain name inside.*re-create it"):
        condense.load(d, model=TinyMLP())
    _edit_meta(d, weights_file=outside.name)  # the same bytes inside the folder load: the refusal was the path
    os.replace(outside, d / outside.name)
    assert isinstance(condense.load(d, model=TinyMLP()), TinyMLP)


@pytest.mark.parametrize("pointer", ["../elsewhere", "/tmp", "step-1/../../elsewhere"])
def test_checkpoint_latest_pointing_outside_is_refused(tmp_path, pointer):
    from condense.train.checkpoint import find_checkpoint

    root = tmp_path / "run" / "checkpoints"
    (root / "step-00000001").mkdir(parents=True)
    (root / "step-00000001" / "meta.json").write_text("{}")
    (tmp_path / "run" / "elsewhere").mkdir()
    (tmp_path / "run" / "elsewhere" / "meta.json").write_text("{}")
    (root / "latest").write_text(pointer + "\n")
    with pytest.raises(ArtifactError, match=f"checkpoint named by .*latest is {pointer!r}, not a plain name.*point --resume at"):
        find_checkpoint(tmp_path / "run")
    (root / "latest").write_text("step-00000001\n")
    assert find_checkpoint(tmp_path / "run") == root / "step-00000001"


# -- ONNX external data ------------------------------------------------------------------------------------------
def _external_data_graph(location: str) -> bytes:
    """x + W, with W (4 floats) stored in the external file `location`."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros(4, np.float32), "W")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        e = w.external_data.add()
        e.key, e.value = k, v
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("x", "y")]
    g = helper.make_graph([helper.make_node("Add", ["x", "W"], ["y"])], "g", io[:1], io[1:], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


@pytest.fixture
def no_sessions(monkeypatch):
    """ONNX Runtime sessions fail the test: the graph must be refused before one is created."""
    import onnxruntime

    def fail(*a, **kw):
        raise AssertionError("an InferenceSession was created for a graph with external data")

    monkeypatch.setattr(onnxruntime, "InferenceSession", fail)


def test_onnx_graph_with_external_data_in_an_artifact_is_refused(tmp_path, monkeypatch, no_sessions):
    from condense.export.runtime import OrtModule

    (tmp_path / "secret").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")  # "../../secret" resolves to the secret from here
    crafted = OrtModule()
    crafted._data = _external_data_graph("../../secret")
    d = condense.save(crafted, tmp_path / "a" / "b" / "art")
    with pytest.raises(CondenseError, match=r"tensor 'W' in an external file \('\.\./\.\./secret'\).*re-export"):
        condense.load(d, model=OrtModule())
    with pytest.raises(CondenseError, match="external file"):
        OrtModule(_external_data_graph("secret"))


def test_onnx_quantization_refuses_external_data(tmp_path, monkeypatch):
    from condense.quantize.ort import OrtInt8Config, _quantize_bytes

    monkeypatch.chdir(tmp_path)
    import onnxruntime.quantization as q

    monkeypatch.setattr(q, "quantize_dynamic", lambda *a, **kw: pytest.fail("quantize_dynamic opened the graph"))
    with pytest.raises(CondenseError, match=r"external file \('/etc/passwd'\)"):
        _quantize_bytes(_external_data_graph("/etc/passwd"), OrtInt8Config(), [])


def test_onnx_graph_without_external_data_still_runs():
    import io

    from condense.export.runtime import OrtModule, refuse_external_data

    net = torch.nn.Linear(3, 2)
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.ones(1, 3),), buf, dynamo=False)
    refuse_external_data(buf.getvalue())
    x = torch.randn(1, 3)
    assert torch.allclose(OrtModule(buf.getvalue())(x), net(x).detach(), atol=1e-6)


def test_a_weights_file_name_the_file_system_refuses_is_an_artifact_error(tmp_path):
    """A name past the file system's limit (found by the artifact property test) fails as ArtifactError, not OSError."""
    from condense.core.paths import file_in_folder
    from condense.errors import ArtifactError

    with pytest.raises(ArtifactError, match="not a plain name inside"):
        file_in_folder(tmp_path, "1" * 400, what="weights_file")


def test_info_size_never_stats_a_weights_file_outside_the_artifact(tmp_path):
    """`condense info` / artifact_size follow the same rule as load: a symlinked weights file leading out is refused."""
    import json

    import torch

    import condense
    from condense.core.artifact import artifact_size
    from condense.errors import ArtifactError

    d = condense.save(torch.nn.Linear(3, 2), tmp_path / "a")
    meta = json.loads((d / "condense.json").read_text())
    outside = tmp_path / "outside.safetensors"
    (d / meta["weights_file"]).rename(outside)
    (d / "link.safetensors").symlink_to(outside)
    meta["weights_file"] = "link.safetensors"
    (d / "condense.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="not a plain name inside"):
        artifact_size(d)
