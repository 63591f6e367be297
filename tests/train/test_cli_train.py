import json
import os
import socket
import subprocess
import sys

from condense.cli import main
from condense.train.distributed.launch import available_slots, torchrun_argv
from condense.train.metrics import read_jsonl

FAST = ["--set", "precision=fp32", "--set", "tensorboard=false"]


def test_train_resume_and_a_mismatched_resume(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", "--task", "digits", "--steps", "4", "--set", "checkpoint_every=2", *FAST, "--out", run]) == 0
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["steps"] == 4 and summary["samples"] == 4 * 64 and (tmp_path / "run/model").is_dir()
    assert main(["train", "--task", "digits", "--steps", "6", "--set", "checkpoint_every=2", *FAST,
                 "--resume", run, "--out", run]) == 0
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    capsys.readouterr()
    code = main(["train", "--task", "digits", "--task-option", "channels=[8,16,32]", "--steps", "8", *FAST,
                 "--resume", run, "--out", run])
    err = capsys.readouterr().err
    assert code == 2 and "different model" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "run/checkpoints/latest").read_text().strip() == "step-00000006"


def test_bad_input_is_one_line(capsys):
    assert main(["train", "--task", "digits", "--nproc", str(available_slots("cpu") + 1), "--out", "x"]) == 2
    assert "is more than this machine has" in capsys.readouterr().err
    assert main(["train", "--task", "digits", "--set", "batch_schedule=huge", "--out", "x"]) == 2
    assert "unknown batch_schedule 'huge'" in capsys.readouterr().err
    assert torchrun_argv(2, ["--task", "digits"], nnodes=2, node_rank=1, master_addr="h", master_port=1)[3:13] == [
        "--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "1", "--master-addr", "h", "--master-port", "1"]


def test_two_nodes_on_localhost(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "mn")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [subprocess.Popen([sys.executable, "-m", "condense", "train", "--task", "digits", "--steps", "2",
                               "--nproc", "1", "--nnodes", "2", "--node-rank", str(r), "--master-addr", "127.0.0.1",
                               "--master-port", str(port), "--set", "checkpoint_every=2", "--set",
                               "comm_hook=allreduce", *FAST, "--out", out],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in (0, 1)]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    summary = json.loads((tmp_path / "mn" / "train.json").read_text())
    assert summary["world_size"] == 2 and summary["samples"] == 2 * 2 * 64
    assert summary["bytes_per_step"] == 4 * 94186  # every digits gradient, fp32, once per step
    assert sorted(p.name for p in (tmp_path / "mn/checkpoints/step-00000002").iterdir()) == [
        "meta.json", "model.safetensors", "optim.pt", "rng-rank0.pt", "rng-rank1.pt"]
