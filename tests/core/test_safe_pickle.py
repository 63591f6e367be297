"""A sharded checkpoint's pickled metadata is checked before torch.distributed.checkpoint unpickles it."""
import os
import pickle
import warnings

import pytest
import torch

from condense.core.safe_pickle import check_pickle
from condense.errors import ArtifactError


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_real_dcp_metadata_passes(tmp_path):
    import torch.distributed.checkpoint as dcp

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters())
    net(torch.randn(1, 3)).sum().backward()
    opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save({"model": net.state_dict(), "optim": opt.state_dict()}, checkpoint_id=str(tmp_path / "dcp"))
    check_pickle(tmp_path / "dcp" / ".metadata", what="metadata", fix="f")  # raises on a refused global


@pytest.mark.parametrize("payload", ["reduce", "global"])
def test_crafted_metadata_is_refused_and_runs_nothing(tmp_path, payload):
    marker = tmp_path / "MARKER"
    path = tmp_path / ".metadata"
    obj = _RunsShell(marker) if payload == "reduce" else {"f": eval}
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(ArtifactError, match="resume from a checkpoint written by condense train"):
        check_pickle(path, what="sharded checkpoint metadata", fix="resume from a checkpoint written by condense train")
    assert not marker.exists()


def test_truncated_metadata_is_a_clean_error(tmp_path):
    path = tmp_path / ".metadata"
    path.write_bytes(pickle.dumps({"a": torch.Size([2, 3])})[:-3])
    with pytest.raises(ArtifactError, match="corrupt"):
        check_pickle(path, what="metadata", fix="f")


def _dcp_save(state, folder):
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save(state, checkpoint_id=str(folder))


def test_safe_load_reads_a_real_checkpoint_like_dcps_own(tmp_path):
    from condense.core.safe_pickle import safe_dcp_load

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=0.01)
    net(torch.randn(1, 3)).sum().backward()
    opt.step()
    _dcp_save({"model": net.state_dict(), "optim": opt.state_dict()}, tmp_path / "dcp")
    fresh, fresh_opt = torch.nn.Linear(3, 2), torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.5)
    state = {"model": fresh.state_dict(), "optim": opt.state_dict()}
    state["optim"]["param_groups"][0]["lr"] = 0.5  # a non-tensor item the planner must read back
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        safe_dcp_load(state, tmp_path / "dcp")
    assert torch.equal(state["model"]["weight"], net.weight)
    assert state["optim"]["param_groups"][0]["lr"] == 0.01


def test_crafted_shard_item_is_refused_and_runs_nothing(tmp_path):
    from condense.core.safe_pickle import safe_dcp_load

    marker = tmp_path / "MARKER"
    _dcp_save({"extra": _RunsShell(marker), "w": torch.zeros(2)}, tmp_path / "dcp")  # torch.save pickles it
    assert not marker.exists()
    with pytest.raises(ArtifactError, match="holds more than plain data"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        safe_dcp_load({"extra": None, "w": torch.ones(2)}, tmp_path / "dcp")
    assert not marker.exists()
