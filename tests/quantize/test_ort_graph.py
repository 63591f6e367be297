"""Whole-graph ONNX Runtime decoding of weight-only models (`kernel="ort-graph"`, `"ort-graph-a8"`): greedy tokens
and logits against the torch model computing with the same dequantized weights, the KV-cache path, save/load, and
the error for a model without a KV-step adapter."""
import copy

import pytest
import torch
from torch import nn

import condense
from condense.core.lineage import lineage
from condense.errors import ConfigError
from condense.measurement.macs import count_macs
from condense.quantize import quantize_
from condense.quantize.weight_only import WeightOnlyConfig, WeightOnlyLinear
from condense.quantize.weight_only.ort_graph import OrtGraphLM
from condense.tasks.gpt import GPT, GPTConfig, KVCache, generate
from condense.tasks.tinygpt import make_task

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def tiny():
    task = make_task("tiny")
    return task, task.build_model().eval()


def _pair(base, task, **kw):
    """(torch model on the dequantizing path, the same integers run as one ORT graph)."""
    ref = quantize_(copy.deepcopy(base), WeightOnlyConfig(kernel="dequantize", **kw), task=task)
    graph = quantize_(copy.deepcopy(base), WeightOnlyConfig(kernel="ort-graph", **kw), task=task)
    return ref, graph


@pytest.mark.parametrize("kw", [dict(bits=4, group_size=32),
                                dict(method="gptq", bits=3, group_size=32, act_order=True, calibration_batches=2),
                                dict(method="awq", bits=4, group_size=16, calibration_batches=2, awq_grid=4),
                                dict(bits=8, group_size=-1)])
def test_graph_decodes_the_same_greedy_tokens_as_the_torch_model(tiny, kw):
    task, base = tiny
    ref, graph = _pair(base, task, **kw)
    assert isinstance(graph, OrtGraphLM) and isinstance(graph.model.blocks[0].attn.q_proj, WeightOnlyLinear)
    x = task.batch(4)
    with torch.no_grad():
        a, b = ref(x), graph(x)
    # float32 both sides, only the summation order differs
    assert (a - b).abs().max() < 1e-4 * a.abs().max()
    prompt = torch.tensor([list(b"def ")])
    # RTN: 62 new tokens, past block_size (64), so the decode loop restarts its cache once
    n = 62 if kw.get("method", "rtn") == "rtn" and kw["bits"] == 4 else 24
    assert torch.equal(generate(graph, prompt, n), generate(ref, prompt, n))


def test_int8_activation_graph_stays_within_its_error_bound(tiny):
    task, base = tiny
    ref = quantize_(copy.deepcopy(base), WeightOnlyConfig(bits=4, group_size=32, kernel="dequantize"))
    a8 = quantize_(copy.deepcopy(base), WeightOnlyConfig(bits=4, group_size=32, kernel="ort-graph-a8"))
    x = task.batch(4)
    with torch.no_grad():
        a, b = ref(x), a8(x)
    err = float((a - b).abs().max() / a.abs().max())
    assert 0 < err < 0.02  # int8 activations per block: not exact, a few per mille of the logits' scale
    assert abs(task.metrics(a8)["bits_per_byte"] - task.metrics(ref)["bits_per_byte"]) < 0.01


def test_kv_cache_chunks_and_crops_match_the_whole_window(tiny):
    task, base = tiny
    _, graph = _pair(base, task, bits=4, group_size=32)
    x = task.batch(1)[:, :20]
    with torch.no_grad():
        whole = graph(x)
        cache = KVCache(len(graph.blocks), graph.config.block_size)
        first, rest = graph(x[:, :12], kv_cache=cache), graph(x[:, 12:], kv_cache=cache)
        assert cache.length == 20
        cache.crop(7)  # speculative decoding drops rejected tokens like this
        again = graph(x[:, 7:], kv_cache=cache)
    assert torch.allclose(torch.cat([first, rest], 1), whole, atol=1e-5)
    assert torch.allclose(again, whole[:, 7:], atol=1e-5)
    assert task.generate(graph, 2, 8) == 16  # the task's decode measurement runs on it


def test_save_load_keeps_the_packed_layers_and_rebuilds_the_same_graph(tiny, tmp_path):
    task, base = tiny
    m = quantize_(copy.deepcopy(base), WeightOnlyConfig(bits=4, group_size=32, kernel="ort-graph-a8"))
    assert lineage(m)["transforms"][-1]["details"]["kernel"] == "ort-graph-a8"
    loaded = condense.load(condense.save(m, tmp_path / "a"))
    assert isinstance(loaded, OrtGraphLM) and loaded.kernel == "ort-graph-a8"
    q = loaded.model.blocks[1].mlp.fc_in
    assert isinstance(q, WeightOnlyLinear) and torch.equal(q.qweight, m.model.blocks[1].mlp.fc_in.qweight)
    x = task.batch(3)
    with torch.no_grad():
        assert torch.equal(loaded(x), m(x))
    assert torch.equal(generate(loaded, x[:1, :8], 16), generate(m, x[:1, :8], 16))
    lin = sum(mod.in_features * mod.out_features for mod in m.model.modules()
              if isinstance(mod, (nn.Linear, WeightOnlyLinear)))
    assert count_macs(m, lambda: m(x)) == x.numel() * lin


def test_layers_matmulnbits_cannot_take_run_as_float_matmuls_and_are_recorded():
    torch.manual_seed(0)
    base = GPT(GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=32, mlp_ratio=3)).eval()
    cfg = dict(bits=4, group_size=-1)  # one group per row: 96 wide in fc_out, not a power of two
    ref = quantize_(copy.deepcopy(base), WeightOnlyConfig(kernel="dequantize", **cfg))
    with pytest.warns(UserWarning, match="float MatMuls"):
        graph = quantize_(copy.deepcopy(base), WeightOnlyConfig(kernel="ort-graph", **cfg))
    floats = lineage(graph)["transforms"][-1]["details"]["graph_float_layers"]
    assert list(floats) == ["blocks.0.mlp.fc_out"]  # the 32-wide q, k, v, o and fc_in are MatMulNBits
    x = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        a, b = ref(x), graph(x)
    assert (a - b).abs().max() < 1e-4 * a.abs().max()


def test_a_model_without_a_kv_step_adapter_is_refused_before_quantizing():
    with pytest.raises(ConfigError, match="KV-step adapter for Sequential.*kernel='auto'"):
        quantize_(nn.Sequential(nn.Linear(64, 16)), WeightOnlyConfig(bits=4, kernel="ort-graph"))
    with pytest.raises(ConfigError, match="ort-graph-a8"):
        WeightOnlyConfig(bits=4, kernel="ort-graph-x")


def test_greedy_decode_loop_picks_the_tokens_of_the_step_by_step_path(tiny):
    task, base = tiny
    graph = quantize_(copy.deepcopy(base), WeightOnlyConfig(kernel="ort-graph-a8", bits=4, group_size=32), task=task)
    prompt = torch.tensor([[100, 101, 32], [35, 36, 37]])
    n = 12
    fast = generate(graph, prompt, n)  # OrtGraphLM.greedy_decode: one numpy loop around the session
    cache, idx = KVCache(len(graph.blocks), graph.config.block_size), prompt  # the torch loop, step by step
    logits = graph(idx, kv_cache=cache)
    for _ in range(n):
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], 1)
        logits = graph(idx[:, -1:], kv_cache=cache)
    assert torch.equal(fast, idx) and fast.dtype == prompt.dtype
    assert torch.equal(generate(graph, prompt, 0), prompt)
    too_long = graph.config.block_size  # past the context: generate's own loop restarts the cache
    assert graph.greedy_decode(prompt, too_long) is None
    assert generate(graph, prompt, too_long).shape == (2, 3 + too_long)


def test_auto_times_the_whole_graph_against_its_per_layer_pick_and_keeps_the_faster(tiny, tmp_path, monkeypatch):
    from condense.quantize.weight_only import api

    task, base = tiny
    for margin in (0.0, float("inf")):  # always faster enough / never: both outcomes, whatever this machine times
        monkeypatch.setattr(api, "GRAPH_MARGIN", margin)
        m = quantize_(copy.deepcopy(base), WeightOnlyConfig(bits=4, group_size=32), task=task)
        details = lineage(m)["transforms"][-1]["details"]
        cand = details["graph_candidate"]
        assert cand["kernel"] == "ort-graph-a8" and cand["step_ms"] > 0 and cand["per_layer_step_ms"] > 0
        # the speed-up is the ratio of the two step times (recorded rounded to 1 us: compare within 2%)
        assert abs(cand["speedup"] / (cand["per_layer_step_ms"] / cand["step_ms"]) - 1) < 0.02
        assert cand["picked"] is (margin == 0.0) and isinstance(m, OrtGraphLM) is cand["picked"]
        if cand["picked"]:
            assert details["kernel"] == "ort-graph-a8" and isinstance(details["layer_kernels"], dict)
            prompt = torch.tensor([[100, 101, 32]])
            condense.save(m, tmp_path / "auto")
            loaded = condense.load(tmp_path / "auto")
            assert isinstance(loaded, OrtGraphLM) and torch.equal(generate(loaded, prompt, 8), generate(m, prompt, 8))
        else:
            assert isinstance(details["kernel"], dict) and "layer_kernels" not in details
