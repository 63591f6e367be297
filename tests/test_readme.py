"""The README's "Adding a technique" example runs as written (in its own process: it registers a transform)."""
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_adding_a_technique_example_runs(tmp_path):
    section = README.read_text().split("### Adding a technique", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1).replace("/tmp/shrunk", str(tmp_path / "s"))
    code += "\nfrom condense.core.transforms import TRANSFORMS\nprint(sorted(TRANSFORMS.names('prune')))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=README.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "'shrink'" in out.stdout  # offered as `condense prune --method shrink` and a recipe step


def test_onednn_example_runs_and_reports_a_small_error():
    section = README.read_text().split("### Int8 on AMX / VNNI CPUs", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=README.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    from condense.quantize.onednn import onednn_int8

    if onednn_int8()[0]:
        name, err = out.stdout.split()
        assert name == "Int8Linear" and float(err) < 0.03
    else:
        assert out.stdout == ""
