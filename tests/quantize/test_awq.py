"""AWQ weight-only quantization: error vs RTN, scale folds that keep the float function, exact save/load."""
import copy
import warnings

import pytest
import torch
from torch import nn

import condense
from condense.core.lineage import lineage
from condense.core.task import run_batch
from condense.quantize import quantize_
from condense.quantize.weight_only import WeightOnlyConfig, WeightOnlyLinear
from condense.quantize.weight_only.awq import awq_scale_, search_scale
from condense.tasks.gpt import generate
from condense.tasks.tinygpt import make_task

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    """The tiny tinygpt task, its trained model and 4 calibration batches (8 x 64 bytes each)."""
    task = make_task("tiny")
    return task, task.build_model(), list(task.calibration_data())[:4]


def _quantize(model, method, bits, batches, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "tied lm_head", "group size" notes are not what is tested here
        return quantize_(copy.deepcopy(model), WeightOnlyConfig(method=method, bits=bits, kernel="dequantize",
                                                                calibration_batches=len(batches), **kw),
                         calibration=batches)


@pytest.mark.parametrize("bits", [3, 4])
def test_awq_output_error_vs_fp32_on_calibration_data_is_at_most_rtns(tiny, bits):
    _, model, batches = tiny
    with torch.no_grad():
        ref = [model(b) for b in batches]

        def mse(m):
            return sum(float((m(b) - y).pow(2).mean()) for b, y in zip(batches, ref)) / len(batches)

        rtn, awq = mse(_quantize(model, "rtn", bits, batches)), mse(_quantize(model, "awq", bits, batches))
    assert awq <= rtn, (awq, rtn)


def _apply_input_scales(model, scales):
    return [model.get_submodule(n).register_forward_pre_hook(lambda m, i, s=s: (i[0] * s,))
            for n, s in scales.items()]


def test_the_fold_keeps_the_float_models_function_and_finds_the_producers(tiny):
    task, model, batches = tiny
    m = copy.deepcopy(model)
    names = [n for n, mod in m.named_modules() if isinstance(mod, nn.Linear) and n != "lm_head"]
    folded, scales, alphas = awq_scale_(m, names, batches, run_batch, bits=3, group_sizes=dict.fromkeys(names, 32),
                                        symmetric=False, scale_dtype=torch.float16)
    assert len(alphas) == 8 and any(a > 0 for a in alphas.values())  # 4 groups per block: qkv, o, fc_in, fc_out
    for b in range(2):  # where alpha > 0, the scale went into the module that made the input
        p = f"blocks.{b}."
        want = {p + "attn.q_proj": p + "ln_1", p + "attn.o_proj": p + "attn.v_proj", p + "mlp.fc_in": p + "ln_2"}
        moved = [k for k in want if alphas[k] > 0]
        assert {k: folded.get(k) for k in moved} == {k: want[k] for k in moved}
        assert (p + "mlp.fc_out" in scales) == (alphas[p + "mlp.fc_out"] > 0)  # GELU between: no fold
    assert set(scales) <= {f"blocks.{b}.mlp.fc_out" for b in range(2)}
    assert torch.equal(m.blocks[0].ln_1.weight, model.blocks[0].ln_1.weight) == (alphas["blocks.0.attn.q_proj"] == 0)
    handles = _apply_input_scales(m, scales)
    x = task.batch(4)
    with torch.no_grad():
        want, got = model(x), m(x)
    for h in handles:
        h.remove()
    assert (got - want).abs().max().item() <= 1e-4 * want.abs().max().item()


def test_llama_folds_into_its_rmsnorms_and_up_proj_and_scales_o_proj_itself():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=64)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # trained-looking norms and a few loud channels, so every alpha search moves
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(torch.rand(p.shape) + 0.5)
        model.model.embed_tokens.weight[:, :4] *= 8
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 64, (4, 16), generator=g) for _ in range(2)]
    m = copy.deepcopy(model)
    names = [n for n, mod in m.named_modules() if isinstance(mod, nn.Linear) and n != "lm_head"]
    folded, scales, alphas = awq_scale_(m, names, batches, run_batch, bits=3, group_sizes=dict.fromkeys(names, 32),
                                        symmetric=False, scale_dtype=torch.float16)
    p = "model.layers.0."
    want = {p + "self_attn.q_proj": p + "input_layernorm", p + "mlp.gate_proj": p + "post_attention_layernorm",
            p + "mlp.down_proj": p + "mlp.up_proj"}
    assert all(alphas[k] > 0 for k in want), alphas
    assert {k: folded.get(k) for k in want} == want
    assert set(scales) == ({p + "self_attn.o_proj"} if alphas[p + "self_attn.o_proj"] > 0 else set())  # GQA: v is
    handles = _apply_input_scales(m, scales)  # narrower than o_proj's input, q_proj's fold fails the check
    with torch.no_grad():
        want_out, got = model(batches[0]).logits, m(batches[0]).logits
    for h in handles:
        h.remove()
    assert (got - want_out).abs().max().item() <= 1e-4 * want_out.abs().max().item()


def test_alpha_zero_is_rtn_so_the_searched_scale_is_never_worse_on_its_rows():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=g) * torch.linspace(0.05, 6, 64)  # (rows, in): uneven channels
    w = torch.randn(16, 64, generator=g)
    s, alpha = search_scale([w], x.abs().mean(0), x, bits=3, group_sizes=[32], symmetric=False,
                            scale_dtype=torch.float16, grid=20)
    from condense.quantize.weight_only.rtn import rtn_quantize

    def err(scale):
        q = rtn_quantize(w * scale, bits=3, group_size=32).dequantize() / scale
        return float((x @ q.T - x @ w.T).pow(2).sum())

    assert alpha > 0 and err(s) <= err(torch.ones(64))


def test_awq_artifact_saves_packed_and_loads_exactly_without_requantizing(tiny, tmp_path):
    task, model, batches = tiny
    m = _quantize(model, "awq", 4, batches)
    details = lineage(m)["transforms"][-1]["details"]
    assert details["input_scaled"] and set(details["awq_folded"]) | set(details["input_scaled"]) <= \
        set(details["layers"])
    scaled = m.get_submodule(details["input_scaled"][0])
    assert isinstance(scaled, WeightOnlyLinear) and scaled.input_scale is not None
    d = condense.save(m, tmp_path / "a")
    loaded = condense.load(d)  # no task, no calibration data: nothing to re-quantize with
    assert torch.equal(loaded.get_submodule(details["input_scaled"][0]).input_scale, scaled.input_scale)
    assert torch.equal(loaded.blocks[0].ln_1.weight, m.blocks[0].ln_1.weight)
    x = task.batch(4)
    with torch.no_grad():
        assert torch.equal(loaded(x), m(x))
    assert torch.equal(generate(loaded, x[:1, :8], 16), generate(m, x[:1, :8], 16))
