"""The one run of Flower's real simulation engine (Ray): it must give what the in-process engine gives.

Slow (Ray starts in ~20 s here), so the other tests drive rounds in-process with Flower's messages and aggregation.
"""
import pytest

pytest.importorskip("flwr")

import condense  # noqa: E402
from condense.federated.compress import Layout  # noqa: E402


@pytest.mark.slow
def test_run_simulation_matches_the_inprocess_engine(tmp_path):
    task = condense.get_task("digits", channels=[8, 16, 32])
    base = dict(clients=3, rounds=2, local_steps=3, split="iid", codec="topk", topk_fraction=0.05)
    ref = condense.federated(task, condense.FederatedConfig(**base), log=None)
    got = condense.federated(task, condense.FederatedConfig(engine="flower", **base), out_dir=tmp_path, log=None)
    assert [r["round"] for r in got.rows] == [0, 1, 2]
    assert [r["bytes_up"] for r in got.rows] == [r["bytes_up"] for r in ref.rows]  # the same serialized replies
    layout = Layout.of(ref.model.state_dict())
    diff = (layout.flatten(got.model.state_dict()) - layout.flatten(ref.model.state_dict())).abs().max()
    assert float(diff) < 1e-4
    assert (tmp_path / "model").is_dir()
