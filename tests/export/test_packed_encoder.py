"""The packed encoder graph (padding dropped inside the ONNX graph): same embeddings as PyTorch, fewer rows."""
import copy

import onnx
import pytest
import torch

import condense
from condense.core.lineage import lineage
from condense.core.task import Task
from condense.errors import ConfigError
from condense.export import OrtModule
from condense.export.onnx import export_spec, onnx_bytes
from condense.quantize.ort import OrtInt8Config

# lengths from 3 to 20 tokens: the batch is mostly padding, as a batch of short texts is
TEXTS = ["Return the number of items in a container, counting each distinct key once and ignoring order.",
         "Open a file.", "short", "Convert a string to an integer, honouring the base.", "x"]
LAYERS = 2


@pytest.fixture(scope="module")
def tiny():
    from tokenizers import Tokenizer

    from condense.tasks.bert import Bert, BertConfig
    from condense.tasks.encoder import SentenceEncoder, minilm_path

    torch.manual_seed(0)
    tok = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    bert = Bert(BertConfig(hidden_size=32, num_layers=LAYERS, num_heads=2, intermediate_size=64))
    return SentenceEncoder(bert, tok, max_seq_length=32).eval()


def _graph(model, packed: bool) -> bytes:
    spec = export_spec(model, TEXTS[:2], packed=packed)
    return onnx_bytes(spec, spec.to_inputs(TEXTS[:2]))


def _ops(data: bytes) -> list[str]:
    return [n.op_type for n in onnx.load_from_string(data).graph.node]


def _row_gathers(data: bytes) -> int:
    """Gather nodes that move activation rows (not embedding tables, not shape arithmetic)."""
    graph = onnx.load_from_string(data).graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    return sum(n.op_type == "Gather" and made_by.get(n.input[0], "Shape") != "Shape" for n in graph.node)


def test_packed_graph_matches_pytorch_and_the_padded_graph(tiny):
    ids, mask = tiny.tokenize(TEXTS)
    assert mask.float().mean() < 0.6  # mostly padding: packing has work to drop
    with torch.inference_mode():
        ref = tiny(ids, mask)
    padded, packed = _graph(tiny, False), _graph(tiny, True)
    for data in (padded, packed):
        assert (OrtModule(data)(ids, mask) - ref).abs().max() < 1e-5
    # left padding too: the graph packs whatever the mask marks real, wherever it is
    left_ids, left_mask = ids.flip(1), mask.flip(1)
    with torch.inference_mode():
        left_ref = tiny(left_ids, left_mask)
    assert (OrtModule(packed)(left_ids, left_mask) - left_ref).abs().max() < 1e-5
    # exact structure: one NonZero; Gathers: pack after the embeddings, unpack q/k/v and pack the attention output
    # in every block, unpack before pooling
    assert _ops(packed).count("NonZero") == 1 and "NonZero" not in _ops(padded)
    assert (_row_gathers(packed), _row_gathers(padded)) == (4 * LAYERS + 2, 0)


def test_ort_int8_packs_by_default_and_keeps_the_float_side_paths(tiny):
    ids, mask = tiny.tokenize(TEXTS)
    with torch.inference_mode():
        ref = tiny(ids, mask)
    task = Task(name="tiny-encoder", model=tiny, evaluate=lambda m: {}, primary_metric="none",
                inputs=lambda n: (TEXTS * n)[:n], run=lambda m, texts: m.encode(texts),
                calibration_data=lambda: iter([TEXTS]))
    q = condense.quantize_(copy.deepcopy(tiny), OrtInt8Config(tune_session=False, float_channels=2,
                                                              calibration_batches=1), task=task)
    d = lineage(q)["transforms"][-1]["details"]
    assert d["packed"] is True and "NonZero" in _ops(q.graph.onnx_model)
    # every block's float side path (in and out) is found and left in float in the packed graph too
    float_matmuls = {n.name for n in onnx.load_from_string(q.graph.onnx_model).graph.node if n.op_type == "MatMul"}
    assert len(d["excluded_nodes"]) == 2 * LAYERS and set(d["excluded_nodes"]) <= float_matmuls
    assert _ops(q.graph.onnx_model).count("MatMulInteger") == 6 * LAYERS  # q, k, v, out, ffn in, ffn out
    cos = torch.nn.functional.cosine_similarity(q(ids, mask), ref)
    assert cos.min() > 0.97  # int8 error only: the packing itself is exact (test above)
    padded = condense.quantize_(copy.deepcopy(tiny), OrtInt8Config(tune_session=False, packed=False),
                                calibration=[TEXTS])
    assert lineage(padded)["transforms"][-1]["details"]["packed"] is False
    assert "NonZero" not in _ops(padded.graph.onnx_model)


def test_packing_is_off_for_the_fused_graph_and_refused_with_it():
    assert OrtInt8Config().packed is None and OrtInt8Config(optimize=True).packed is None
    with pytest.raises(ConfigError, match="packed=None"):
        OrtInt8Config(packed=True, optimize=True)
    with pytest.raises(ConfigError, match="packed must be"):
        OrtInt8Config(packed="yes")
