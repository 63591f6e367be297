"""Saves and loads of one artifact folder from several processes at once; what a killed save leaves behind."""
import contextlib
import fcntl
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import condense
from condense.cli import main
from condense.core.artifact import LOCK_FILE, META_FILE, artifact_size, read_metadata
from condense.testing import TinyMLP

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_artifact_stress.py")


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS="1")


def _model(seed):
    torch.manual_seed(seed)
    return TinyMLP()


def test_two_writers_and_a_reader_never_fail_and_never_see_a_mixed_artifact(tmp_path):
    d = tmp_path / "shared"
    condense.save(_model(0), d)
    go, stop = tmp_path / "go", tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, str(WORKER), "reader", str(d), str(go), str(stop), "0", "1", "2", "3",
                               "4"], stdout=subprocess.PIPE, text=True, env=_env())
    writers = [subprocess.Popen([sys.executable, str(WORKER), "writer", str(d), str(go), "100", *seeds],
                                stdout=subprocess.PIPE, text=True, env=_env()) for seeds in (["1", "2"], ["3", "4"])]
    results = [json.loads(w.communicate(timeout=120)[0]) for w in writers]
    stop.touch()
    got = json.loads(reader.communicate(timeout=120)[0])
    assert [(r["saves"], r["failed"]) for r in results] == [(100, 0), (100, 0)], results
    assert got["failed"] == 0 and got["unmatched"] == 0, got  # every load: exactly one of the saved models
    assert got["loads"] >= 10 and len(got["seen"]) >= 2, got  # the reader really ran while the writers saved
    # the last commit wins, complete: its weights and nothing else (no temporaries, no older weights)
    meta = read_metadata(d)
    assert sorted(p.name for p in d.iterdir()) == sorted([LOCK_FILE, META_FILE, meta["weights_file"]])
    last = condense.load(d, model=TinyMLP())
    assert torch.equal(last.fc1.weight, _model(meta["metadata"]["seed"]).fc1.weight)


def _size_of_referenced(d: Path) -> int:
    return (d / META_FILE).stat().st_size + (d / read_metadata(d)["weights_file"]).stat().st_size


def test_a_killed_save_leaves_files_that_size_ignores_and_the_next_save_removes(tmp_path):
    d = condense.save(_model(0), tmp_path / "a")
    # a save killed (SIGKILL) after writing its weights, before its commit
    code = ("import os, signal, sys, torch; import condense; import condense.core.artifact as a\n"
            "from condense.testing import TinyMLP\n"
            "a._sha256 = lambda p: os.kill(os.getpid(), signal.SIGKILL)\n"
            f"condense.save(TinyMLP(), {str(d)!r})\n")
    r = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr
    temps = [p for p in d.iterdir() if p.name.startswith(".weights-")]
    assert len(temps) == 1 and any(temps[0].iterdir())  # its temporary weights are left behind
    # a save that failed after its weights were renamed, before condense.json: an orphan weights file
    orphan = d / "weights-0123456789ab.safetensors"
    orphan.write_bytes(b"x" * 4096)
    (d / ".condense.json.abc123.tmp").write_text("{")  # a half-written metadata temporary
    assert artifact_size(d) == _size_of_referenced(d)  # only condense.json and the weights it names
    loaded = condense.load(d, model=TinyMLP())  # and the artifact still loads: the old model
    assert torch.equal(loaded.fc1.weight, _model(0).fc1.weight)

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["info", str(d)]) == 0
    assert f"size:       {_size_of_referenced(d):,} bytes" in buf.getvalue()

    condense.save(_model(1), d)  # the next save removes them all
    assert sorted(p.name for p in d.iterdir()) == sorted([LOCK_FILE, META_FILE, read_metadata(d)["weights_file"]])


def test_cleanup_spares_the_temporary_of_a_save_still_running(tmp_path):
    d = condense.save(_model(0), tmp_path / "a")
    live = d / ".weights-live.tmp"
    live.mkdir()
    (live / "weights.safetensors").write_bytes(b"partial")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a running save holds on its temporary (another fd: another "process")
    try:
        condense.save(_model(1), d)
        assert (live / "weights.safetensors").read_bytes() == b"partial"
    finally:
        os.close(fd)
    condense.save(_model(2), d)  # its "saver" is gone now: removed
    assert not live.exists()


def test_a_reader_waits_for_a_commit_in_progress(tmp_path):
    """While a saver holds the folder lock (mid-commit), a load does not read the half-committed state."""
    import threading

    from condense.core import artifact

    d = condense.save(_model(0), tmp_path / "a")
    with artifact._folder_lock(d):  # a commit in progress: condense.json already names weights not yet there
        meta = json.loads((d / META_FILE).read_text())
        old = d / meta["weights_file"]
        os.rename(old, d / "weights-000000000000.safetensors")
        result = {}
        t = threading.Thread(target=lambda: result.update(m=condense.load(d, model=TinyMLP())))
        t.start()
        t.join(0.5)
        assert t.is_alive()  # blocked on the shared lock, not failing on the missing weights
        os.rename(d / "weights-000000000000.safetensors", old)  # the commit completes
    t.join(10)
    assert torch.equal(result["m"].fc1.weight, _model(0).fc1.weight)


def test_without_a_lock_file_a_reader_reads_again_when_a_save_replaced_the_weights(tmp_path, monkeypatch):
    """A folder saved by an older condense has no lock file and a reader never writes one: a commit between reading
    condense.json and its weights (old weights removed) is seen as a changed condense.json and read again."""
    from condense.core import artifact

    d = condense.save(_model(0), tmp_path / "a")
    (d / LOCK_FILE).unlink()
    real, calls = artifact._read_weights, []

    def racing(path, meta):
        calls.append(meta["weights_file"])
        if len(calls) == 1:
            condense.save(_model(1), d)  # commits between this reader's two reads
        return real(path, meta)

    monkeypatch.setattr(artifact, "_read_weights", racing)
    loaded = condense.load(d, model=TinyMLP())
    assert len(calls) == 2 and calls[0] != calls[1]
    assert torch.equal(loaded.fc1.weight, _model(1).fc1.weight)
