"""Static int8 on models torch.fx cannot trace (a Hugging Face BertModel, dict batches): the ONNX Runtime path.

Bound: last_hidden_state is LayerNorm'd (unit scale per token); int8 weights and calibrated uint8 activations keep it
within 0.25 max abs (cosine > 0.99 per token) of fp32 on this 2-layer model; measured ~0.07.
"""
import pytest
import torch
import torch.nn.functional as F

import condense
from condense.core.lineage import lineage
from condense.quantize.static import StaticInt8Config
from condense.export.session import OrtModule  # the static int8 graph runs in ONNX Runtime

from tests.quantize._tiny_bert import padded_batch, tiny_bert

transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def quantized(one_thread):
    fp32 = tiny_bert()
    q = condense.quantize_(tiny_bert(), StaticInt8Config(calibration_batches=4),
                           calibration=[padded_batch(i) for i in range(4)])
    return fp32, q


def test_bert_dict_batches_run_within_bound_of_fp32(quantized):
    fp32, q = quantized
    x = padded_batch(100, b=3, t=12)  # another batch size and length than calibration: dynamic axes
    with torch.inference_mode():
        ref, got = fp32(**x), q(**x)
    assert type(got) is type(ref)  # the same ModelOutput class, keyword inputs as the original
    assert got.last_hidden_state.shape == ref.last_hidden_state.shape == (3, 12, 32)
    assert (got.last_hidden_state - ref.last_hidden_state).abs().max() < 0.25
    cos = F.cosine_similarity(got.last_hidden_state, ref.last_hidden_state, dim=-1)  # (B, T)
    assert cos.min() > 0.99
    assert (got.last_hidden_state - ref.last_hidden_state).abs().max() > 0  # it really is quantized


def test_lineage_names_the_onnxruntime_path(quantized):
    _, q = quantized
    assert isinstance(q, OrtModule)
    d = lineage(q)["transforms"][-1]["details"]
    assert d["path"] == "onnxruntime" and d["inputs"] == ["input_ids", "attention_mask"]
    assert d["quantized_nodes"] >= 2 * 6  # per layer: q, k, v, attention out, FFN in, FFN out
    assert d["calibration_batches"] == 4 and "dict batches" in d["fx_error"]


def test_save_load_gives_equal_outputs(quantized, tmp_path):
    _, q = quantized
    loaded = condense.load(condense.save(q, tmp_path / "bert-static"), model=tiny_bert())
    x = padded_batch(7)
    with torch.inference_mode():
        a, b = q(**x), loaded(**x)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert torch.equal(a.pooler_output, b.pooler_output)


def test_digits_like_cnn_keeps_the_fx_path():
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10)).eval()
    q = condense.quantize_(cnn, StaticInt8Config(), calibration=[torch.randn(8, 1, 8, 8) for _ in range(2)])
    assert lineage(q)["transforms"][-1]["details"]["path"] == "fx"
    assert not isinstance(q, OrtModule)
    assert isinstance(q[0] if isinstance(q, torch.nn.Sequential) else q.get_submodule("0"),
                      torch.ao.nn.intrinsic.quantized.ConvReLU2d)
