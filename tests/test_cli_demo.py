"""`condense demo` (what `make demo` runs) quantizes with `Int8Config()`: every int8 backend measured, the fastest
within the quality budget kept; not one fixed backend."""
import condense.pipeline
from condense.cli import main
from condense.errors import CondenseError
from condense.quantize.backends import Int8Config


def test_demo_quantizes_with_the_auto_backend_pick(tmp_path, monkeypatch, capsys):
    seen = []

    def run_pipeline(task, steps, out_dir, **kw):  # record what the demo asks for; stop before any work
        seen.append((task.name, [(s.label, s.config) for s in steps]))
        raise CondenseError("stop here")

    monkeypatch.setattr(condense.pipeline, "run_pipeline", run_pipeline)
    assert main(["demo", "--task", "condense.testing:tiny_task", "--name", "d", "--runs-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "condense: error: stop here\n"
    assert seen == [("tiny", [("fp32", None), ("int8", Int8Config())])]
