"""Low-bit kernels of weight-only layers: against the dequantized reference, exact integers, save/load, "auto"."""
import copy

import pytest
import torch
from torch import nn

import condense
from condense.core.lineage import lineage
from condense.errors import ConfigError
from condense.measurement.macs import count_macs
from condense.quantize import quantize_
from condense.quantize.weight_only import WeightOnlyConfig, WeightOnlyLinear, WeightOnlyMethod, rtn_quantize
from condense.quantize.weight_only.gptq import gptq_quantize
from condense.quantize.weight_only.kernel_select import pick_kernels, shape_key
from condense.quantize.weight_only.kernels import DEQUANTIZE, KERNELS, TorchInt4, get_kernel, kernel_names
from condense.tasks.gpt import generate
from condense.tasks.tinygpt import make_task

# (bits, kernel, group_size) of every low-bit kernel that runs on this machine
CASES = [(b, n, -1 if n == "torch-int8" else 32) for (b, n), k in sorted(KERNELS.items())
         if n != DEQUANTIZE and k.unavailable() is None]
# The torch kernels round activations, scales and outputs to bfloat16 (8-bit mantissa): the output may differ from
# the float32 dequantized reference by a few bfloat16 steps of the output's scale. ort-nbits computes in float32;
# ort-nbits-a8 rounds each block of activations to int8 (127 steps of the block's largest magnitude).
REL_BOUND = {"torch-int4": 1e-2, "torch-int8": 1e-2, "ort-nbits": 1e-5, "ort-nbits-a8": 2e-2}


def _gptq(bits: int, group: int, *, act_order: bool, symmetric: bool = False, out: int = 48, n: int = 128):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(256, n, generator=g) * torch.linspace(0.2, 3.0, n)  # (rows, in): uneven feature scales
    w = torch.randn(out, n, generator=g)
    return gptq_quantize(w, 2 * x.T @ x / 256, bits=bits, group_size=group, act_order=act_order,
                         symmetric=symmetric)


@pytest.fixture(scope="module")
def tiny():
    task = make_task("tiny")
    return task, task.build_model()


def test_a_copy_rebuilds_the_kernel_layout_and_computes_the_same():
    m = WeightOnlyLinear.from_quantized(_gptq(4, 32, act_order=False), torch.zeros(48))
    x = torch.randn(2, 128)
    for kernel in [DEQUANTIZE] + [c[1] for c in CASES if c[0] == 4]:
        m.set_kernel(kernel)
        with torch.no_grad():
            y = m(x)
            twin = copy.deepcopy(m)
            assert twin._kernel_state is None and twin.kernel == kernel and torch.equal(twin(x), y)


@pytest.mark.skipif(not CASES, reason="no low-bit kernel runs on this machine")
@pytest.mark.parametrize("bits,kernel,group", CASES)
@pytest.mark.parametrize("act_order,symmetric", [(False, False), (True, False), (False, True)])
def test_kernel_output_matches_the_dequantized_reference_within_bfloat16_steps(bits, kernel, group, act_order,
                                                                                  symmetric):
    qw = _gptq(bits, group, act_order=act_order, symmetric=symmetric)
    m = WeightOnlyLinear.from_quantized(qw, torch.randn(48))
    x = torch.randn(5, 3, 128)  # (B, T, in): several rows, as in prefill
    with torch.no_grad():
        ref = m(x)
        assert m.set_kernel(kernel) is None and m.kernel == kernel
        y = m(x)
    assert y.shape == ref.shape and y.dtype == ref.dtype
    err = float((y - ref).abs().max() / ref.abs().max())
    assert err <= REL_BOUND[kernel], f"{kernel} {bits}-bit: max error {err:.2e} of the output's scale"


@pytest.mark.skipif(not CASES, reason="no low-bit kernel runs on this machine")
@pytest.mark.parametrize("bits,kernel,group", CASES)
def test_kernel_keeps_the_gptq_integers_exactly(bits, kernel, group):
    """With unit scales every product is exact in bfloat16: the kernel must return q - z itself."""
    qw = _gptq(bits, group, act_order=False)
    qw.scales = torch.ones_like(qw.scales)
    k = get_kernel(bits, kernel)
    with torch.no_grad():
        w_seen = k.run(k.prepare(qw), torch.eye(128))  # row j = the kernel's weight column j: (in, out)
    expect = (qw.q.float().view(48, -1, qw.group_size) - qw.zeros.float()[..., None]).view(48, 128)
    assert torch.equal(w_seen.T, expect)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_gptq_integers_round_trip_exactly_through_packing(bits):
    qw = _gptq(bits, 32, act_order=True)
    back = WeightOnlyLinear.from_quantized(qw).quantized()
    assert torch.equal(back.q, qw.q) and torch.equal(back.zeros, qw.zeros)
    assert torch.equal(back.scales, qw.scales) and torch.equal(back.perm, qw.perm)


def test_config_names_the_kernels_of_its_bits():
    assert WeightOnlyConfig(bits=8, group_size=-1, kernel="torch-int8").kernel == "torch-int8"
    assert kernel_names(8) == ["dequantize", "ort-nbits", "ort-nbits-a8", "torch-int8"]
    with pytest.raises(ConfigError, match=r"kernel must be one of \['dequantize', 'ort-nbits', 'torch-int4', "
                                          r"'ort-graph', 'ort-graph-a8', 'auto'\] for bits=4, got 'torch-int8'"):
        WeightOnlyConfig(bits=4, kernel="torch-int8")


@pytest.mark.skipif(("torch-int4" not in {c[1] for c in CASES}), reason="torch-int4 does not run here")
def test_a_layer_the_kernel_cannot_take_falls_back_with_a_warning_and_is_recorded():
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))  # 8 outputs: not a multiple of 16
    with pytest.warns(UserWarning, match=r"1 of 2 layer\(s\) run on the slow 'dequantize' path"):
        quantize_(m, WeightOnlyConfig(bits=4, kernel="torch-int4", exclude=()))
    assert (m[0].kernel, m[2].kernel) == ("torch-int4", DEQUANTIZE)
    details = lineage(m)["transforms"][-1]["details"]
    assert details["kernel"] == "torch-int4" and list(details["kernel_fallback"]) == ["2"]
    assert "divisible by 16" in details["kernel_fallback"]["2"]


@pytest.mark.skipif(not CASES, reason="no low-bit kernel runs on this machine")
def test_auto_picks_the_fastest_measured_kernel_and_records_the_times(tiny):
    task, base = tiny
    m = quantize_(copy.deepcopy(base), WeightOnlyConfig(bits=4, kernel="auto", whole_graph=False))
    details = lineage(m)["transforms"][-1]["details"]
    assert "graph_candidate" not in details  # whole_graph=False: the per-layer pick stands, untimed against it
    rows = details["kernel_candidates"]
    assert [r["kernel"] for r in rows] == kernel_names(4)  # every registered 4-bit kernel, "dequantize" first
    timed = [r for r in rows if r["error"] is None]
    assert all(r["total_ms"] > 0 for r in timed) and len(timed) == 1 + sum(c[:2] == (4, c[1]) for c in CASES)
    shapes = {shape_key(q) for q in m.modules() if isinstance(q, WeightOnlyLinear)}
    assert set(details["kernel"]) == shapes == set(rows[0]["shapes"])  # one choice per layer shape, all timed
    for shape, kernel in details["kernel"].items():  # the fastest one measured for that shape
        assert kernel == min(timed, key=lambda r: r["shapes"][shape])["kernel"]
    assert details["kernel_threads"] == torch.get_num_threads()
    for q in m.modules():
        if isinstance(q, WeightOnlyLinear):
            assert q.kernel == details["kernel"][shape_key(q)]


def test_pick_kernels_takes_the_fastest_per_shape_and_skips_kernels_that_cannot_run():
    rows = [{"kernel": "dequantize", "total_ms": 3.0, "shapes": {"a": 1.0, "b": 1.0}, "error": None},
            {"kernel": "torch-int8", "total_ms": None, "shapes": {"a": "no", "b": "no"},
             "error": "takes none of the layers"},
            {"kernel": "torch-int4", "total_ms": 4.0, "shapes": {"a": 0.5, "b": "needs group 32"}, "error": None}]
    choice, reason = pick_kernels(rows, {"a": 2, "b": 1})
    assert choice == {"a": "torch-int4", "b": "dequantize"}
    assert "2.000 ms per step" in reason and "torch-int8: takes none of the layers" in reason


@pytest.mark.skipif(("torch-int4" not in {c[1] for c in CASES}), reason="torch-int4 does not run here")
@pytest.mark.parametrize("kernel", ["torch-int4", "auto"])
def test_save_load_of_a_packed_model_on_a_kernel_reproduces_outputs_exactly(tiny, tmp_path, kernel):
    task, base = tiny
    cfg = WeightOnlyConfig(method=WeightOnlyMethod.GPTQ, bits=4, kernel=kernel, calibration_batches=2)
    m = quantize_(copy.deepcopy(base), cfg, task=task)
    x = task.batch(2)
    with torch.no_grad():
        before = m(x)
    loaded = condense.load(condense.save(m, tmp_path / "a"))
    kernels = {n: q.kernel for n, q in m.named_modules() if isinstance(q, WeightOnlyLinear)}
    assert {n: q.kernel for n, q in loaded.named_modules() if isinstance(q, WeightOnlyLinear)} == kernels
    assert kernel == "auto" or set(kernels.values()) == {"torch-int4"}
    with torch.no_grad():
        assert torch.equal(loaded(x), before)
    assert torch.equal(generate(loaded, x[:1, :8], 8), generate(m, x[:1, :8], 8))


@pytest.mark.skipif(("torch-int4" not in {c[1] for c in CASES}), reason="torch-int4 does not run here")
def test_loading_where_the_kernel_is_missing_falls_back_to_dequantize_with_a_warning(tiny, tmp_path, monkeypatch):
    task, base = tiny
    m = quantize_(copy.deepcopy(base), WeightOnlyConfig(bits=4, kernel="torch-int4"))
    d = condense.save(m, tmp_path / "a")
    reference = quantize_(copy.deepcopy(base), WeightOnlyConfig(bits=4, kernel="dequantize"))
    monkeypatch.setattr(TorchInt4, "unavailable", lambda self: "this torch has no aten._weight_int4pack_mm_for_cpu")
    with pytest.warns(UserWarning, match="loading a weight-only model: .* 'dequantize' path instead of 'torch-int4'"
                                         ": this torch has no"):
        loaded = condense.load(d)
    assert {q.kernel for q in loaded.modules() if isinstance(q, WeightOnlyLinear)} == {DEQUANTIZE}
    x = task.batch(2)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))


def test_rtn_module_on_dequantize_is_unchanged_by_the_kernel_machinery():
    lin = nn.Linear(64, 16)
    m = WeightOnlyLinear.from_quantized(rtn_quantize(lin.weight, bits=4, group_size=32), lin.bias)
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(m(x), x @ m.dequantized_weight().T + lin.bias)


def test_auto_says_which_layer_shapes_stay_on_dequantize_and_why():
    m = nn.Sequential(nn.Linear(48, 8), nn.ReLU(), nn.Linear(8, 48))  # groups of 24 and 8: no kernel takes them
    with pytest.warns(UserWarning, match=r"layers of 2 of 2 shape\(s\) stay on the dequantizing path .*48x8/g24: "
                                         r"no low-bit kernel takes it \(ort-nbits: ort-nbits needs a power-of-two "
                                         r"group size >= 16, the layer has 24; torch-int4: torch-int4 needs "
                                         r"group_size in \(32, 64, 128, 256\)"):
        quantize_(m, WeightOnlyConfig(bits=4, group_size=24, kernel="auto", exclude=()))
    details = lineage(m)["transforms"][-1]["details"]
    assert details["kernel"] == {"48x8/g24": DEQUANTIZE, "8x48/g8": DEQUANTIZE}
    assert (m[0].kernel, m[2].kernel) == (DEQUANTIZE, DEQUANTIZE)


@pytest.mark.skipif(not CASES, reason="no low-bit kernel runs on this machine")
@pytest.mark.parametrize("bits,kernel,group", CASES)
def test_macs_are_counted_once_on_every_kernel(bits, kernel, group):
    m = WeightOnlyLinear.from_quantized(_gptq(bits, group, act_order=False), torch.zeros(48))
    x = torch.randn(3, 5, 128)
    on_dequantize = count_macs(m, lambda: m(x))
    m.set_kernel(kernel)
    assert count_macs(m, lambda: m(x)) == on_dequantize == 15 * 128 * 48
