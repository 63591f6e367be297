"""bf16 matmuls (Bf16Config) and the bf16 candidate of Int8Config(backend="auto")."""
import pytest
import torch
import torch.nn.functional as F

import condense
from condense.core.lineage import lineage
from condense.errors import ConfigError
from condense.quantize import bf16 as bf16_mod
from condense.quantize.backends import Backend, Int8Config, auto_backends
from condense.quantize.bf16 import Bf16Config, Bf16Linear, native_bf16
from condense.tasks.gpt import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bf16_linear_is_a_bf16_matmul_plus_a_float_bias():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    x = torch.randn(5, 64)
    b = Bf16Linear.from_linear(lin)
    assert b.weight.dtype == torch.bfloat16 and b.bias.dtype == torch.float32
    with torch.no_grad():
        got = b(x)
        want = F.linear(x.bfloat16(), lin.weight.bfloat16()).float() + lin.bias
        ref = lin(x)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    # bf16 keeps 8 significant bits: each product's rounding is <= 2^-8 relative, so the error stays a small
    # fraction of the output scale (measured ~0.4% here)
    assert (got - ref).abs().max().item() <= 0.02 * ref.abs().max().item()


def test_bf16_swaps_exactly_the_selected_linears_and_records_them():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    x = torch.randint(0, 256, (2, 8))
    with torch.no_grad():
        ref = model(x)
    out = condense.quantize_(model, Bf16Config(exclude=("lm_head",)))
    swapped = [n for n, m in out.named_modules() if isinstance(m, Bf16Linear)]
    d = lineage(out)["transforms"][-1]["details"]
    assert len(swapped) == n_linear - 1 and "lm_head" not in swapped and sorted(d["layers"]) == sorted(swapped)
    assert d["native_bf16"] == native_bf16()[0] and d["cpu"] == native_bf16()[1]
    with torch.no_grad():
        got = out(x)
    assert got.dtype == torch.float32
    assert (got - ref).abs().max().item() <= 0.05 * ref.abs().max().item()


def test_int8config_names_bf16_as_a_backend_and_bf16config_checks_its_patterns():
    task = condense.get_task("condense.testing:tiny_task")
    q = condense.quantize_(task.build_model(), Int8Config(backend="bf16"), task=task)
    d = lineage(q)["transforms"][-1]["details"]
    assert d["backend"] == "bf16" and d["applied"]["config"]["type"] == "Bf16Config"
    assert sum(isinstance(m, Bf16Linear) for m in q.modules()) == len(d["applied"]["details"]["layers"]) > 0
    with pytest.raises(ConfigError, match="include pattern .nothing.\*. matches no Linear"):
        condense.quantize_(task.build_model(), Bf16Config(include=("nothing.*",)))


def test_auto_builds_the_bf16_candidate_only_where_the_cpu_has_native_bf16(monkeypatch):
    import condense.quantize.onednn as onednn_mod

    monkeypatch.setattr(onednn_mod, "onednn_int8", lambda: (True, "CPU flags amx_int8 (test)"))
    monkeypatch.setattr(bf16_mod, "native_bf16", lambda: (False, "no avx512_bf16/amx_bf16 (test)"))
    backends, skipped = auto_backends(Int8Config())
    assert Backend.BF16 not in backends and skipped == {"bf16": "no avx512_bf16/amx_bf16 (test)"}
    assert len(backends) == len(Backend) - 2  # all but auto and bf16
    monkeypatch.setattr(bf16_mod, "native_bf16", lambda: (True, "CPU flags avx512_bf16 (test)"))
    backends, skipped = auto_backends(Int8Config())
    assert Backend.BF16 in backends and skipped == {} and len(backends) == len(Backend) - 1
    assert auto_backends(Int8Config(bf16=False))[1] == {"bf16": "Int8Config(bf16=False)"}
