"""Weight-only quantization: the config, RTN against a per-group reference, the packed module, save/load, size."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import condense
from condense.core.config import config_from_dict
from condense.core.lineage import lineage
from condense.errors import ConfigError
from condense.measurement.api import artifact_bytes
from condense.measurement.counts import count_parameters
from condense.measurement.macs import count_macs
from condense.quantize import quantize_
from condense.quantize.weight_only import (WeightOnlyConfig, WeightOnlyLinear, WeightOnlyMethod, rtn_quantize)
from condense.tasks.gpt import GPT, generate
from condense.tasks.tinygpt import PRESETS, make_task


@pytest.fixture(scope="module")
def tiny():
    """The tiny tinygpt task and its trained model (seconds; cached in the test session's cache)."""
    task = make_task("tiny")
    return task, task.build_model()


# -- config -----------------------------------------------------------------------------------------------------
def test_config_round_trips_through_json_and_validates():
    for cfg in (WeightOnlyConfig(), WeightOnlyConfig(method=WeightOnlyMethod.GPTQ, bits=3, group_size=-1,
                                                     act_order=True, exclude=(), scale_dtype="float32")):
        assert config_from_dict(cfg.to_dict()) == cfg
    assert WeightOnlyConfig(method="GPTQ").method is WeightOnlyMethod.GPTQ
    assert WeightOnlyConfig(method="awq").method is WeightOnlyMethod.AWQ
    with pytest.raises(ConfigError, match="bits must be one of 2, 3, 4, 8, got 5"):
        WeightOnlyConfig(bits=5)
    with pytest.raises(ConfigError, match="or -1 for per-channel"):
        WeightOnlyConfig(group_size=0)
    with pytest.raises(ConfigError, match="method must be one of"):
        WeightOnlyConfig(method="hqq")
    with pytest.raises(ConfigError, match="awq_grid must be"):
        WeightOnlyConfig(awq_grid=0)
    with pytest.raises(ConfigError, match="act_order only applies to GPTQ"):
        WeightOnlyConfig(act_order=True)
    with pytest.raises(ConfigError, match=r"damp must be in \(0, 1\]"):
        WeightOnlyConfig(damp=0)
    with pytest.raises(ConfigError, match="tuple of patterns"):
        WeightOnlyConfig(include="blocks.*")
    with pytest.raises(ConfigError, match="scale_dtype"):
        WeightOnlyConfig(scale_dtype="bfloat8")


def test_a_group_size_not_dividing_in_features_uses_the_nearest_divisor_for_that_layer_and_says_so():
    m = nn.Sequential(nn.Linear(64, 8), nn.Linear(8, 4))
    with pytest.warns(UserWarning, match=r"does not divide the in_features of 1 layer.*1 \(8 in\) -> 8"):
        m = quantize_(m, WeightOnlyConfig(group_size=32))
    assert (m[0].group_size, m[1].group_size) == (32, 8)
    assert lineage(m)["transforms"][-1]["details"]["group_sizes"] == {"1": 8}


# -- RTN against a straightforward reference --------------------------------------------------------------------
def _reference_rtn(w: np.ndarray, bits: int, gs: int, symmetric: bool):
    """Per row, per group: min-max including 0, fp16 scale, integer zero point, round half to even."""
    maxq = 2 ** bits - 1
    out, n = w.shape
    q = np.zeros((out, n), np.int64)
    scales = np.zeros((out, n // gs), np.float16)
    zeros = np.zeros((out, n // gs), np.int64)
    for r in range(out):
        for g in range(n // gs):
            x = w[r, g * gs:(g + 1) * gs]
            lo, hi = np.float32(min(x.min(), 0)), np.float32(max(x.max(), 0))
            if symmetric:
                hi = max(-lo, hi)
                lo = -hi
            s = np.float32(np.float16(max((hi - lo) / np.float32(maxq), np.finfo(np.float16).tiny)))
            z = 2 ** (bits - 1) if symmetric else int(np.clip(np.round(-lo / s), 0, maxq))
            q[r, g * gs:(g + 1) * gs] = np.clip(np.round(x / s) + z, 0, maxq)
            scales[r, g], zeros[r, g] = s, z
    return q, scales, zeros


@pytest.mark.parametrize("bits,gs,symmetric", [(4, 32, False), (3, 16, False), (2, 64, False), (4, 32, True),
                                               (8, -1, False)])
def test_rtn_integers_equal_a_per_group_reference_exactly(bits, gs, symmetric):
    torch.manual_seed(bits)
    w = torch.randn(12, 64) * torch.rand(12, 1)
    w[0, :16] = 0  # an all-zero group
    w[1, :32] = w[1, :32].abs()  # a group with no negative weight
    qw = rtn_quantize(w, bits=bits, group_size=gs, symmetric=symmetric)
    q, s, z = _reference_rtn(w.numpy(), bits, 64 if gs == -1 else gs, symmetric)
    assert np.array_equal(qw.q.long().numpy(), q)
    assert np.array_equal(qw.scales.numpy(), s) and np.array_equal(qw.zeros.long().numpy(), z)
    err = (qw.dequantize() - w).abs()
    assert float(err.max()) <= float(qw.scales.float().max()) / 2 + 1e-6  # nearest grid point: half a step
    assert float(err[0, :16].max()) == 0.0


# -- the packed module ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_module_stores_exact_bytes_and_computes_with_the_dequantized_weight(bits):
    torch.manual_seed(0)
    lin = nn.Linear(128, 64)
    qw = rtn_quantize(lin.weight, bits=bits, group_size=32)
    m = WeightOnlyLinear.from_quantized(qw, lin.bias)
    assert m.qweight.dtype == torch.uint8 and m.qweight.numel() == 64 * 128 * bits // 8
    assert m.scales.dtype == torch.float16 and tuple(m.scales.shape) == (64, 4)
    assert m.qzeros.numel() == -(-64 * 4 * bits // 8)
    assert torch.equal(m.quantized().q, qw.q) and torch.equal(m.quantized().zeros, qw.zeros)
    x = torch.randn(3, 5, 128)
    assert torch.equal(m(x), F.linear(x, qw.dequantize(), lin.bias))
    assert torch.equal(m.dequantized_weight(), qw.dequantize())
    codec = condense.core.artifact.CODECS.find(m)
    assert sorted(codec.export(m)) == ["bias", "qweight", "qzeros", "scales"]
    assert count_parameters(m)[0] == count_parameters(lin)[0] == 64 * 128 + 64
    assert count_macs(m, lambda: m(x)) == count_macs(lin, lambda: lin(x)) == 15 * 128 * 64


def test_quantize_swaps_linears_keeps_lm_head_and_records_lineage(tiny):
    task, base = tiny
    m = quantize_(copy.deepcopy(base), WeightOnlyConfig(bits=4, group_size=32, whole_graph=False))
    assert isinstance(m.blocks[0].attn.q_proj, WeightOnlyLinear) and isinstance(m.blocks[1].mlp.fc_out,
                                                                                 WeightOnlyLinear)
    assert type(m.lm_head) is nn.Linear  # excluded by default
    details = lineage(m)["transforms"][-1]["details"]
    assert len(details["layers"]) == 12 and "lm_head" not in details["layers"] and details["bits"] == 4
    all_in = quantize_(copy.deepcopy(base), WeightOnlyConfig(bits=8, group_size=32, exclude=(), whole_graph=False))
    assert isinstance(all_in.lm_head, WeightOnlyLinear)


def test_rtn_on_tinygpt_stays_close_and_generation_with_kv_cache_works(tiny):
    task, base = tiny
    m = quantize_(copy.deepcopy(base), WeightOnlyConfig(bits=4, group_size=32))
    fp, q = task.metrics(base)["bits_per_byte"], task.metrics(m)["bits_per_byte"]
    assert abs(q - fp) < 0.05
    prompt = torch.tensor([list(b"def ")])
    cached, uncached = generate(m, prompt, 24), generate(m, prompt, 24, use_cache=False)
    assert cached.shape == (1, 28) and torch.equal(cached, uncached)
    assert task.generate(m, 2, 8) == 16


@pytest.mark.parametrize("cfg", [WeightOnlyConfig(bits=4, group_size=32),
                                 WeightOnlyConfig(method=WeightOnlyMethod.GPTQ, bits=3, group_size=32,
                                                  act_order=True, scale_dtype="float32", calibration_batches=2)])
def test_save_load_gives_identical_logits(tiny, tmp_path, cfg):
    task, base = tiny
    m = quantize_(copy.deepcopy(base), cfg, task=task)
    d = condense.save(m, tmp_path / "a")
    loaded = condense.load(d)
    assert isinstance(loaded.blocks[0].attn.v_proj, WeightOnlyLinear)
    x = task.batch(4)
    with torch.no_grad():
        assert torch.equal(loaded(x), m(x))
    assert torch.equal(generate(loaded, x[:1, :8], 16), generate(m, x[:1, :8], 16))


def test_4bit_artifact_is_at_most_30_percent_of_fp32_when_linears_dominate():
    torch.manual_seed(0)
    fp32 = GPT(PRESETS["default"].model).eval()  # the default preset's shape, untrained: nothing to load
    q4 = quantize_(copy.deepcopy(fp32), WeightOnlyConfig(bits=4))  # default group size 32
    ratio = artifact_bytes(q4) / artifact_bytes(fp32)
    assert ratio <= 0.30, ratio
