import json
import os

import pytest
import torch

import condense
from condense.core.artifact import META_FILE, artifact_size, read_metadata
from condense.errors import ArtifactError
from condense.tasks import get_task
from condense.testing import TinyMLP


class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight  # shared storage
        self.bn = torch.nn.BatchNorm1d(4)

    def forward(self, idx):
        return self.head(self.bn(self.emb(idx)))


def test_round_trip_float_model_from_task(tmp_path):
    task = get_task("condense.testing:tiny_task")
    model = task.build_model()
    x = task.batch(16)
    d = condense.save(model, tmp_path / "a")
    loaded = condense.load(d)  # the task spec is in the artifact
    assert torch.equal(loaded(x), model(x))
    meta = read_metadata(d)
    assert meta["task"]["factory"] == "condense.testing:tiny_task"
    assert meta["weights_bytes"] == os.path.getsize(d / meta["weights_file"])


def test_the_core_loader_knows_no_task_and_condense_load_resolves_it(tmp_path):
    """core.artifact sits below the tasks: without a model, a Task or a resolver it names condense.load, which
    rebuilds the recorded task; given a Task it loads the same tensors."""
    from condense.core import artifact

    task = get_task("condense.testing:tiny_task")
    model = task.build_model()
    x = task.batch(4)
    d = condense.save(model, tmp_path / "a")
    with pytest.raises(ArtifactError, match=r"needs its task .*testing:tiny_task.*load it with condense\.load"):
        artifact.load(d)
    assert torch.equal(artifact.load(d, task=task)(x), model(x))
    assert torch.equal(condense.load(d)(x), model(x))
    assert torch.equal(condense.load(d, task="condense.testing:tiny_task")(x), model(x))


def test_round_trip_quantized_model_equals_saved_outputs(tmp_path):
    task = get_task("condense.testing:tiny_task")
    model = condense.quantize_(task.build_model(), condense.DynamicInt8Config())
    x = task.batch(16)
    loaded = condense.load(condense.save(model, tmp_path / "q"))
    assert isinstance(loaded.fc1, torch.ao.nn.quantized.dynamic.Linear)
    assert torch.equal(loaded(x), model(x))
    assert read_metadata(tmp_path / "q")["transforms"][0]["config"]["type"] == "DynamicInt8Config"


def test_shared_tensors_are_stored_once_and_restored(tmp_path):
    torch.manual_seed(0)
    m = Tied().eval()
    m.bn.running_mean.fill_(0.5)
    d = condense.save(m, tmp_path / "t")
    meta = read_metadata(d)
    assert meta["aliases"] == {"head.weight": "emb.weight"}
    m2 = condense.load(d, model=Tied().eval())
    idx = torch.tensor([[1, 2, 3]]).view(-1)
    assert torch.equal(m2(idx), m(idx)) and torch.equal(m2.bn.running_mean, m.bn.running_mean)


def test_missing_and_corrupt_artifacts_name_the_fix(tmp_path):
    with pytest.raises(ArtifactError, match="no condense artifact at .* does not exist"):
        condense.load(tmp_path / "missing")
    d = condense.save(TinyMLP(), tmp_path / "c")
    meta = json.loads((d / META_FILE).read_text())
    wfile = d / meta["weights_file"]
    data = bytearray(wfile.read_bytes())
    data[-1] ^= 0xFF
    wfile.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="corrupt \\(checksum mismatch\\)"):
        condense.load(d, model=TinyMLP())
    (d / META_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match="metadata .* is corrupt"):
        condense.load(d, model=TinyMLP())


def test_wrong_architecture_is_refused(tmp_path):
    d = condense.save(TinyMLP(), tmp_path / "w")
    with pytest.raises(ArtifactError, match="has shape"):
        wider = TinyMLP()
        wider.fc1 = torch.nn.Linear(8, 32)
        condense.load(d, model=wider)
    with pytest.raises(ArtifactError, match=r"missing \['0.weight', '0.bias'\]"):
        condense.load(d, model=torch.nn.Sequential(torch.nn.Linear(8, 3)))
    with pytest.raises(ArtifactError, match="records no task; pass model="):
        condense.load(d)


def test_resave_replaces_atomically_and_failed_save_keeps_old(tmp_path, monkeypatch):
    m = TinyMLP()
    d = condense.save(m, tmp_path / "r")
    first = read_metadata(d)["weights_file"]
    with torch.no_grad():
        m.fc1.weight.add_(1.0)
    condense.save(m, d)
    files = sorted(p.name for p in d.iterdir())
    second = read_metadata(d)["weights_file"]
    assert files == sorted([".condense.lock", "condense.json", second]) and second != first  # old weights removed
    good = condense.load(d, model=TinyMLP())
    assert torch.equal(good.fc1.weight, m.fc1.weight)

    import condense.core.artifact as art

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(art, "atomic_write_json", boom)
    with torch.no_grad():
        m.fc1.weight.add_(1.0)
    with pytest.raises(OSError):
        condense.save(m, d)
    still = condense.load(d, model=TinyMLP())  # the earlier artifact is intact and loadable
    assert torch.equal(still.fc1.weight, good.fc1.weight)


def test_refuses_to_write_into_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    with pytest.raises(ArtifactError, match="not a condense artifact; refusing"):
        condense.save(TinyMLP(), tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"


def test_artifact_size_counts_metadata_and_weights(tmp_path):
    d = condense.save(TinyMLP(), tmp_path / "s")
    assert artifact_size(d) == (d / META_FILE).stat().st_size + (d / read_metadata(d)["weights_file"]).stat().st_size
    # float32 weights: (8*16 + 16 + 16*4 + 4) * 4 bytes of tensor data at least
    assert artifact_size(d) > (8 * 16 + 16 + 16 * 4 + 4) * 4
