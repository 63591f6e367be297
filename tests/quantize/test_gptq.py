"""GPTQ: against RTN (output error), a naive reference (no lazy batches, no Cholesky), identity Hessians, models."""
import copy

import pytest
import torch
from torch import nn

from condense.errors import CondenseError
from condense.quantize import quantize_
from condense.quantize.weight_only import WeightOnlyConfig, WeightOnlyLinear, gptq_quantize, rtn_quantize
from condense.quantize.weight_only.gptq import collect_hessians, layer_steps
from condense.quantize.weight_only.rtn import group_params
from condense.tasks.tinygpt import make_task

GPTQ = "gptq"


def _correlated(n_rows: int = 2048, n: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n, n, generator=g) / n ** 0.5
    scale = torch.linspace(0.2, 3.0, n)  # uneven feature magnitudes, as in real activations
    return (torch.randn(n_rows, n, generator=g) @ mix + 0.1 * torch.randn(n_rows, n, generator=g)) * scale


def _hessian(x: torch.Tensor) -> torch.Tensor:
    return 2 * x.T @ x / x.shape[0]


def _output_mse(x: torch.Tensor, w: torch.Tensor, qw) -> float:
    return float((x @ w.T - x @ qw.dequantize().T.to(x.dtype)).pow(2).mean())


@pytest.mark.parametrize("bits", [4, 3])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_has_lower_output_error_than_rtn_on_correlated_inputs(bits, act_order):
    x = _correlated()
    w = torch.randn(96, 128, generator=torch.Generator().manual_seed(1))
    rtn = rtn_quantize(w, bits=bits, group_size=32)
    gptq = gptq_quantize(w, _hessian(x), bits=bits, group_size=32, act_order=act_order)
    assert _output_mse(x, w, gptq) < 0.8 * _output_mse(x, w, rtn)


@pytest.mark.parametrize("hessian", ["identity", "diagonal"])
def test_without_cross_column_feedback_gptq_equals_rtn_exactly(hessian):
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(2))
    h = torch.eye(128) if hessian == "identity" else torch.diag(torch.rand(128) + 0.5)
    for bits, gs in ((4, 32), (3, 64), (2, -1)):
        rtn = rtn_quantize(w, bits=bits, group_size=gs)
        gptq = gptq_quantize(w, h, bits=bits, group_size=gs)
        assert torch.equal(gptq.q, rtn.q) and torch.equal(gptq.scales, rtn.scales)
        assert torch.equal(gptq.zeros, rtn.zeros)


def _naive_gptq(w: torch.Tensor, h: torch.Tensor, bits: int, gs: int, damp: float) -> torch.Tensor:
    """GPTQ as the paper's eq. (3): explicit H⁻¹, one column at a time, H⁻¹ shrunk by a Schur complement."""
    w = w.clone()
    n = w.shape[1]
    hinv = torch.linalg.inv(h + damp * torch.diag(h).mean() * torch.eye(n, dtype=h.dtype))
    q = torch.zeros_like(w)
    maxq = 2 ** bits - 1
    for i in range(n):
        if i % gs == 0:
            s, z = group_params(w[:, i:i + gs], bits)
            s, z = s[:, 0], z[:, 0]
        q[:, i] = torch.clamp(torch.round(w[:, i] / s) + z, 0, maxq)
        err = (w[:, i] - (q[:, i] - z) * s) / hinv[i, i]
        w[:, i + 1:] -= err[:, None] * hinv[i, i + 1:][None, :]
        hinv = hinv - hinv[:, i:i + 1] @ hinv[i:i + 1, :] / hinv[i, i]
    return q


def test_lazy_cholesky_gptq_matches_the_naive_reference():
    x = _correlated(n=192).double()
    w = torch.randn(48, 192, generator=torch.Generator().manual_seed(3)).double()
    h = _hessian(x)
    ref = _naive_gptq(w, h, bits=3, gs=64, damp=0.01)
    ours = gptq_quantize(w, h, bits=3, group_size=64, damp=0.01)  # blocks of 128: lazy updates across blocks
    same = float((ours.q.double() == ref).double().mean())
    assert same >= 0.999, same
    small_blocks = gptq_quantize(w, h, bits=3, group_size=64, block_size=64)
    assert torch.equal(small_blocks.q, ours.q)


def test_act_order_permutation_is_applied_consistently():
    x = _correlated(n=64)
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(4))
    qw = gptq_quantize(w, _hessian(x), bits=4, group_size=16, act_order=True)
    assert qw.perm is not None and sorted(qw.perm.tolist()) == list(range(64))
    m = WeightOnlyLinear.from_quantized(qw)
    assert torch.allclose(m(x), x @ qw.dequantize().T, atol=1e-4)
    assert torch.equal(m.dequantized_weight(), qw.dequantize())


def test_dead_inputs_get_zero_weight_and_no_nan():
    x = _correlated(n=64)
    x[:, 5] = 0
    w = torch.randn(8, 64)
    qw = gptq_quantize(w, _hessian(x), bits=4, group_size=32)
    deq = qw.dequantize()
    assert torch.isfinite(deq).all() and float(deq[:, 5].abs().max()) == 0.0


def test_hessians_from_hooks_equal_direct_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    batches = [torch.randn(5, 3, 16) for _ in range(3)]
    hs = collect_hessians(model, ["0", "2"], batches, lambda m, b: m(b))
    x = torch.cat(batches).reshape(-1, 16)
    assert torch.allclose(hs["0"], _hessian(x), rtol=1e-5, atol=1e-6)
    assert torch.allclose(hs["2"], _hessian(torch.relu(model[0](x))), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tiny():
    task = make_task("tiny")
    return task, task.build_model()


def test_steps_group_layers_that_read_the_same_tensor(tiny):
    task, base = tiny
    names = [f"blocks.{i}.{p}" for i in range(2) for p in
             ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.fc_in", "mlp.fc_out")]
    steps, once = layer_steps(base, names, [task.batch(2)], task.run_batch)
    assert once and steps[0] == ["blocks.0.attn.q_proj", "blocks.0.attn.k_proj", "blocks.0.attn.v_proj"]
    assert steps[1:4] == [["blocks.0.attn.o_proj"], ["blocks.0.mlp.fc_in"], ["blocks.0.mlp.fc_out"]]
    assert len(steps) == 8


def _logit_mse(task, base, m) -> float:
    x = task.batch(16)
    with torch.no_grad():
        return float((base(x) - m(x)).pow(2).mean())


def test_gptq_on_tinygpt_beats_rtn_in_output_error(tiny):
    task, base = tiny
    rtn = quantize_(copy.deepcopy(base), WeightOnlyConfig(bits=3, group_size=32))
    seq = quantize_(copy.deepcopy(base), WeightOnlyConfig(method=GPTQ, bits=3, group_size=32), task=task)
    par = quantize_(copy.deepcopy(base), WeightOnlyConfig(method=GPTQ, bits=3, group_size=32, sequential=False),
                    task=task)
    e_rtn, e_seq, e_par = (_logit_mse(task, base, m) for m in (rtn, seq, par))
    assert e_seq < e_rtn and e_par < e_rtn
    assert isinstance(seq.blocks[1].mlp.fc_out, WeightOnlyLinear)


def test_gptq_needs_calibration_data_and_running_layers():
    m = nn.Sequential(nn.Linear(32, 32))
    with pytest.raises(CondenseError, match="needs calibration data"):
        quantize_(m, WeightOnlyConfig(method=GPTQ, group_size=32))
    with pytest.raises(CondenseError, match=r"did not run on the calibration batches.*exclude"):
        quantize_(_OnlyFirst(), WeightOnlyConfig(method=GPTQ, group_size=32), calibration=[torch.randn(4, 32)])


class _OnlyFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used, self.unused = nn.Linear(32, 32), nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)
