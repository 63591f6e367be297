import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import condense
from condense.core.artifact import artifact_size, read_metadata
from condense.prune import prune_
from condense.prune.sparse_storage import BitmaskEncoding
from condense.prune.unstructured import UnstructuredConfig


pytestmark = pytest.mark.usefixtures("one_thread")


def wide_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def test_ninety_percent_sparse_artifact_is_at_most_a_quarter_and_loads_identically(tmp_path):
    dense = wide_mlp()
    sparse = prune_(wide_mlp(), UnstructuredConfig(sparsity=0.9))
    d_dense, d_sparse = condense.save(dense, tmp_path / "d"), condense.save(sparse, tmp_path / "s")
    ratio = artifact_size(d_sparse) / artifact_size(d_dense)
    assert ratio <= 0.25, ratio
    loaded = condense.load(d_sparse, model=wide_mlp())
    want, got = sparse.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    meta = read_metadata(d_sparse)
    assert set(meta["encoded"]) == {"0.weight", "2.weight", "4.weight"}  # biases are small and dense
    assert meta["format_version"] == 2 and read_metadata(d_dense)["format_version"] == 1
    assert read_metadata(d_dense)["encoded"] == {}


def test_stored_parts_have_exact_sizes(tmp_path):
    sparse = prune_(wide_mlp(), UnstructuredConfig(sparsity=0.9))
    d = condense.save(sparse, tmp_path / "s")
    stored = load_file(str(d / read_metadata(d)["weights_file"]))
    assert stored["2.weight::bitmask"].dtype == torch.uint8 and stored["2.weight::bitmask"].numel() == 256 * 256 // 8
    assert stored["2.weight::values"].numel() == 256 * 256 - round(0.9 * 256 * 256)
    assert stored["0.weight::bitmask"].numel() == math.ceil(64 * 256 / 8) and "2.bias" in stored


def test_bit_exact_values_nan_and_odd_sizes_negative_zero_stored_as_zero():
    t = torch.zeros(7, 13)                                       # 91 elements: not a multiple of 8
    t[0, 0], t[3, 5], t[6, 12], t[2, 2] = -0.0, 2.5, float("nan"), -1e-30
    enc = BitmaskEncoding()
    parts = enc.encode(t)
    back = enc.decode(parts, (7, 13))
    assert parts["values"].numel() == 3 and parts["bitmask"].numel() == 12
    t[0, 0] = 0.0  # -0.0 comes back as +0.0 (equal in every comparison); every other element bit for bit
    assert torch.equal(back.view(torch.int32), t.view(torch.int32))


def test_pruned_zeros_are_positive_zeros():
    m = prune_(wide_mlp(), UnstructuredConfig(sparsity=0.5, permanent=False))
    w = m[0].weight.detach()
    assert not torch.signbit(w[w == 0]).any()
    assert not torch.signbit(m[0].parametrizations.weight.original[w == 0]).any()


@pytest.mark.parametrize("t", [torch.randn(16, 16), torch.zeros(4, 4), torch.zeros(64, dtype=torch.int64),
                               torch.cat([torch.zeros(31), torch.ones(33)])])
def test_not_applied_where_it_does_not_pay(t):
    assert BitmaskEncoding().encode(t) is None  # dense / too small / not float / under 50% zeros


def test_half_precision_and_aliases_to_an_encoded_tensor(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(64, 16)
            self.head = nn.Linear(16, 64, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, idx):
            return self.head(self.emb(idx))

    m = Tied().half()
    with torch.no_grad():
        m.emb.weight[m.emb.weight.abs() < 1.0] = 0          # ~68% zeros
    d = condense.save(m, tmp_path / "t")
    meta = read_metadata(d)
    assert meta["aliases"] == {"head.weight": "emb.weight"} and list(meta["encoded"]) == ["emb.weight"]
    loaded = condense.load(d, model=Tied().half())
    assert torch.equal(loaded.emb.weight, m.emb.weight) and torch.equal(loaded.head.weight, m.emb.weight)
    assert loaded.emb.weight.dtype == torch.float16


def test_unknown_encoding_names_the_fix(tmp_path):
    import json

    from condense.core.artifact import META_FILE
    from condense.errors import ArtifactError

    d = condense.save(prune_(wide_mlp(), UnstructuredConfig(sparsity=0.9)), tmp_path / "u")
    meta = json.loads((d / META_FILE).read_text())
    meta["encoded"]["0.weight"]["encoding"] = "zstd-future"
    (d / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="encoding 'zstd-future', unknown to this condense .*upgrade condense"):
        condense.load(d, model=wide_mlp())
