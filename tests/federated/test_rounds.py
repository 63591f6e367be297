"""FedAvg rounds (in-process engine): equal to centralized SGD for identical clients, learning, resume."""
import json

import pytest

pytest.importorskip("flwr")
import torch

import condense
from condense.federated.compress import Layout
from condense.federated.config import FederatedConfig
from condense.federated.rounds import Federation
from condense.train.api import fresh_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task():
    return condense.get_task("digits", channels=[8, 16, 32])


def test_fedavg_of_identical_clients_with_one_step_equals_centralized_sgd(task):
    cfg = FederatedConfig(clients=3, rounds=3, local_steps=1, split="same", optimizer="sgd", momentum=0.0, lr=0.1,
                          lr_schedule="constant", batch_size=32)
    res = condense.federated(task, cfg, log=None)
    # reference: plain torch SGD on the same batches (each round's first batch), one step per round
    ref = fresh_model(task, cfg.seed).train()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    fed = Federation(task, cfg)
    for rnd in range(1, 4):
        batch = fed.batches(0, rnd)[0]
        opt.zero_grad()
        task.loss(ref, batch).backward()
        opt.step()
    layout = Layout.of(ref.state_dict())
    got, want = layout.flatten(res.model.state_dict()), layout.flatten(ref.state_dict())
    start = layout.flatten(fresh_model(task, cfg.seed).state_dict())
    assert float((want - start).abs().max()) > 1e-3  # the steps moved the weights
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_a_few_rounds_with_a_handful_of_clients_improve_accuracy(task, tmp_path):
    cfg = FederatedConfig(clients=4, rounds=3, local_steps=20, split="iid")
    res = condense.federated(task, cfg, out_dir=tmp_path, log=None)
    acc = [r["accuracy"] for r in res.rows]
    assert [r["round"] for r in res.rows] == [0, 1, 2, 3]
    assert acc[-1] > acc[0] + 0.3
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == res.rows
    assert all(r["bytes_up"] == 4 * r["bytes_per_client"] > 4 * 4 * Layout.of(res.model.state_dict()).numel
               for r in rows[1:])
    loaded = condense.load(tmp_path / "model")
    assert task.metrics(loaded)["accuracy"] == pytest.approx(acc[-1])


def test_compressed_updates_send_fewer_measured_bytes(task):
    base = dict(clients=3, rounds=1, local_steps=5, split="iid")
    per = {c: condense.federated(task, FederatedConfig(codec=c, **base), log=None).rows[1]["bytes_per_client"]
           for c in ("none", "int8", "topk", "lowrank")}
    assert per["none"] / per["int8"] >= 3.5  # a 10k-parameter model: headers weigh more than on digits' 100k
    assert per["none"] / per["topk"] >= 10
    assert per["lowrank"] < per["none"]


def test_resume_after_an_interruption_continues_from_the_last_completed_round(task, tmp_path):
    cfg = FederatedConfig(clients=3, rounds=4, local_steps=3, split="dirichlet", codec="topk", topk_fraction=0.05)
    full = condense.federated(task, cfg, out_dir=tmp_path / "full", log=None)
    part = condense.federated(task, cfg, out_dir=tmp_path / "cut", log=None, stop_after=2)
    assert [r["round"] for r in part.rows] == [0, 1, 2]
    assert not (tmp_path / "cut" / "model").exists()  # unfinished: no final model yet
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:  # a row the killed run logged after its state
        f.write(json.dumps({**part.rows[-1], "round": 3}) + "\n")
    lines = []
    done = condense.federated(task, cfg, out_dir=tmp_path / "cut", log=lines.append)
    assert lines[0] == "resuming after round 2" and lines[1].startswith("round 3/4")
    assert [r["round"] for r in done.rows] == [0, 1, 2, 3, 4]
    layout = Layout.of(full.model.state_dict())
    # same result as the uninterrupted run: weights, error-feedback residuals and data order were all restored
    assert torch.allclose(layout.flatten(done.model.state_dict()), layout.flatten(full.model.state_dict()),
                          atol=1e-6)
    assert [r["accuracy"] for r in done.rows] == [r["accuracy"] for r in full.rows]


def test_resume_refuses_other_settings_and_a_missing_run(task, tmp_path):
    cfg = FederatedConfig(clients=2, rounds=1, local_steps=1, split="iid")
    condense.federated(task, cfg, out_dir=tmp_path, log=None)
    with pytest.raises(condense.CondenseError, match="codec='none' \\(now 'int8'\\)"):
        condense.federated(task, FederatedConfig(clients=2, rounds=2, local_steps=1, split="iid", codec="int8"),
                           out_dir=tmp_path, log=None)
    with pytest.raises(condense.CondenseError, match="nothing to resume"):
        condense.federated(task, cfg, out_dir=tmp_path / "new", resume=True, log=None)


@pytest.mark.parametrize("field,value", [("clients", 0), ("rounds", 0), ("alpha", 0.0), ("alpha", -1.0),
                                         ("codec", "gzip"), ("split", "zipf"), ("topk_fraction", 2.0)])
def test_bad_config_raises_a_config_error_naming_the_field(field, value):
    with pytest.raises(condense.CondenseError, match=field):
        FederatedConfig(**{field: value})


def test_config_round_trips_through_json():
    from condense.core.config import config_from_dict

    cfg = FederatedConfig(clients=5, codec="lowrank", rank=2)
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_cosine_round_schedule_runs_from_lr_to_a_tenth(task):
    fed = Federation(task, FederatedConfig(clients=2, rounds=5, lr=0.2, split="iid"))
    lrs = [fed.lr(r) for r in range(1, 6)]
    assert lrs[0] == pytest.approx(0.2) and lrs[-1] == pytest.approx(0.02) and lrs == sorted(lrs, reverse=True)
    flat = Federation(task, FederatedConfig(clients=2, rounds=5, lr=0.2, split="iid", lr_schedule="constant"))
    assert [flat.lr(r) for r in range(1, 6)] == [0.2] * 5


def test_an_unknown_client_optimizer_is_refused_when_the_config_is_built():
    from condense.errors import ConfigError
    from condense.federated.config import FederatedConfig

    with pytest.raises(ConfigError, match="FederatedConfig.optimizer must be one of"):
        FederatedConfig(optimizer="bogus")
