"""ONNX export and ONNX Runtime execution: parity with PyTorch, the encoder API unchanged, artifacts round-trip."""
import copy

import numpy as np
import pytest
import torch

import condense
from condense.core.lineage import lineage
from condense.core.transforms import apply_
from condense.errors import CondenseError, ConfigError
from condense.export import OnnxRuntimeConfig, OrtModule, OrtSentenceEncoder, export_onnx, parity
from condense.export.onnx import export_spec, onnx_bytes, onnx_macs
from condense.measurement.macs import count_macs

TEXTS = ["Return the number of items in a container.", "short", "A man is eating food.",
         "Open a file and return a stream. Raise OSError upon failure. " * 8]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def minilm(one_thread):
    task = condense.get_task("minilm", n_pairs=20)
    return task, task.build_model()


@pytest.fixture(scope="module")
def ort_encoder(minilm):
    task, model = minilm
    return apply_(copy.deepcopy(model), OnnxRuntimeConfig(), task=task)


@pytest.mark.slow
def test_minilm_export_matches_pytorch(minilm, tmp_path):
    task, model = minilm
    r = export_onnx(model, task, tmp_path / "minilm.onnx", opset=18)
    assert r["inputs"] == ["input_ids", "attention_mask"] and r["outputs"] == ["embeddings"]
    assert r["max_abs_diff"] < 1e-4 and r["cosine"] > 0.9999
    assert (tmp_path / "minilm.onnx").stat().st_size == r["bytes"]
    # other texts, another batch size and sequence length than the export's: the axes are dynamic
    p = parity(model, tmp_path / "minilm.onnx", model.tokenize(TEXTS))
    assert p["max_abs_diff"] < 1e-4, p


@pytest.mark.slow
def test_ort_sentence_encoder_encodes_like_pytorch(minilm, ort_encoder):
    _, model = minilm
    assert isinstance(ort_encoder, OrtSentenceEncoder) and ort_encoder.dim == model.dim
    ref, got = model.encode(TEXTS, batch_size=3), ort_encoder.encode(TEXTS, batch_size=3)
    assert got.shape == ref.shape and got.dtype == np.float32
    cos = (ref * got).sum(axis=1)  # both unit length
    assert cos.min() > 0.9999, cos
    ids, mask = ort_encoder.tokenize(TEXTS[:2])
    assert torch.equal(ids, model.tokenize(TEXTS[:2])[0])


@pytest.mark.slow
def test_task_evaluates_the_ort_model_unchanged(minilm, ort_encoder):
    task, model = minilm
    ref, got = task.metrics(model), task.metrics(ort_encoder)
    assert got["mrr@10"] == pytest.approx(ref["mrr@10"], abs=1e-6)
    assert got["cosine_to_fp32"] > 0.9999


@pytest.mark.slow
def test_ort_model_saves_and_loads_identically(minilm, ort_encoder, tmp_path):
    d = condense.save(ort_encoder, tmp_path / "ort")
    loaded = condense.load(d)
    assert isinstance(loaded, OrtSentenceEncoder)
    assert np.array_equal(loaded.encode(TEXTS), ort_encoder.encode(TEXTS))
    entry = lineage(loaded)["transforms"][-1]
    assert entry["config"] == OnnxRuntimeConfig().to_dict()
    assert entry["details"]["parity_vs_torch"]["max_abs_diff"] < 1e-4


@pytest.mark.slow
def test_ort_macs_match_torch_count(minilm, ort_encoder):
    task, model = minilm
    one = task.batch(1)
    torch_macs = count_macs(model, lambda: task.run_batch(model, one))
    ort_macs = count_macs(ort_encoder, lambda: task.run_batch(ort_encoder, one))
    assert ort_macs == pytest.approx(torch_macs, rel=0.02), (ort_macs, torch_macs)  # same matmuls, by shape


def test_digits_cnn_export_parity(tmp_path):
    task = condense.get_task("digits", channels=(8, 16, 32), epochs=2)
    model = task.build_model()
    r = export_onnx(model, task, tmp_path / "d.onnx", batch_size=5)
    assert r["inputs"] == ["input"] and r["max_abs_diff"] < 1e-4
    ort = OrtModule((tmp_path / "d.onnx").read_bytes())
    x = task.batch(33)
    with torch.inference_mode():
        assert torch.allclose(ort(x), model(x), atol=1e-4)
    assert copy.deepcopy(ort)(x).shape == (33, 10)  # sessions are rebuilt after a copy
    macs, missing = onnx_macs(ort.onnx_model, [(1, 1, 8, 8)])
    assert missing == [] and macs == count_macs(model, lambda: model(task.batch(1)))


def test_errors_name_the_fix():
    lin = torch.nn.Linear(3, 2)
    with pytest.raises(ConfigError, match="opset must be one of"):
        OnnxRuntimeConfig(opset=11)
    with pytest.raises(CondenseError, match="ExportAdapter"):
        export_spec(lin, {"x": torch.ones(1, 3)})
    with pytest.raises(ConfigError, match="BERT"):
        export_spec(lin, torch.ones(1, 3), float_channels={0: [1]})
    with pytest.raises(CondenseError, match="holds no ONNX model"):
        OrtModule()(torch.ones(1, 3))
    graph = OrtModule(onnx_bytes(export_spec(lin, torch.ones(1, 3)), (torch.ones(1, 3),)))
    with pytest.raises(CondenseError, match="takes 1 inputs"):
        graph(torch.ones(1, 3), torch.ones(1, 3))
