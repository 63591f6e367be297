"""Static int8 on oneDNN's kernels (OneDnnInt8Config): the matmul against exact int8 arithmetic, the packed BERT
encoder against the float model and against masked attention, condense's attention kernel (native.cpp) against
per-sequence attention, the per-Linear path on any model, save/load."""
import copy

import pytest
import torch
import torch.nn.functional as F

import condense
from condense.core.lineage import lineage
from condense.errors import ConfigError
from condense.quantize.onednn import Int8Linear, Int8Matmul, OneDnnInt8Config, onednn_int8
from condense.quantize.onednn import native
from condense.quantize.onednn.encoder import PackedAttention, PackedInt8Bert, attention_plan, bucketed_attention
from condense.tasks.bert import Bert, BertConfig

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not onednn_int8()[0], reason=f"no native oneDNN int8 here: {onednn_int8()[1]}")]

CFG = BertConfig(vocab_size=60, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position=32)


def _reference(mm: Int8Matmul, x: torch.Tensor) -> torch.Tensor:
    """What the kernel computes, in float64: uint8 input at the static scale, int8 weights, float bias."""
    scale, zp = mm.output_range
    xs = x.double() if mm.inv_smooth is None else x.double() * mm.inv_smooth.double()
    xq = torch.clamp(torch.round(xs / scale) + zp, 0, 255)
    return ((xq - zp) * scale) @ (mm.weight.double() * mm.w_scale.double()[:, None]).t() + mm.bias.double()


def test_int8_matmul_computes_exact_int8_arithmetic_and_fuses_gelu_residual_and_uint8_output():
    torch.manual_seed(0)
    w, b, x = torch.randn(24, 40), torch.randn(24), torch.randn(50, 40) * 2
    mm = Int8Matmul(w, b, float(x.min()), float(x.max()), smooth=torch.rand(40) + 0.5)
    ref = _reference(mm, x)
    assert (mm(x).double() - ref).abs().max() < 1e-4 * ref.abs().max()
    plain = Int8Matmul(w, b, float(x.min()), float(x.max()))  # int8 vs float: within the rounding error
    assert (plain(x) - F.linear(x, w, b)).norm() < 0.02 * F.linear(x, w, b).norm()
    res = torch.randn(50, 24)
    acc = res.clone()
    out = mm(x, accumulate=acc)
    assert out.data_ptr() == acc.data_ptr() and (out.double() - (res.double() + ref)).abs().max() < 1e-3
    mul, zp = mm.input_multiplier()  # what a fused producer (LayerNorm + quantize) multiplies by
    assert (torch.clamp(torch.round(x * mul) + zp, 0, 255) - mm.quantize(x).float()).abs().max() <= 1
    with torch.no_grad():
        mm.inv_smooth.mul_(2)  # a changed buffer (an artifact loading into it) rebuilds the multiplier
    assert torch.allclose(mm.input_multiplier()[0], 2 * mul)
    mm.inv_smooth.div_(2)
    q = mm(x, out_dtype=torch.uint8, gelu=True, out_range=(0.02, 3))
    levels = torch.clamp(torch.round(F.gelu(ref) / 0.02) + 3, 0, 255)
    assert q.dtype == torch.uint8 and (q.double() - levels).abs().max() <= 1


@pytest.mark.parametrize("lens, kw, kinds", [
    ([7, 7, 5, 2, 1], dict(block=4, short=4), ["window", "window", "gathered"]),
    ([7, 7, 5, 2, 1], dict(block=4, short=4, step=1), ["window", "window", "exact", "exact"]),
    ([8, 8, 6, 3], dict(block=4, short=2), ["exact", "window", "exact"]),  # the 3 has no rows after it to pad into
    ([7, 7, 5, 2, 1], dict(), ["gathered"]),
    ([9, 6, 6, 6, 4, 1], dict(block=3, short=8, step=4), ["exact", "exact", "gathered"]),
])
def test_bucketed_attention_equals_per_sequence_attention(lens, kw, kinds):
    torch.manual_seed(0)
    nh, hd = 2, 8
    qkv = torch.randn(sum(lens), 3 * nh * hd)
    plan = attention_plan(lens, **kw)  # a bf16 mask: converted to the float32 q/k/v dtype
    assert [b.stop - b.start for b in plan] and sum(b.stop - b.start for b in plan) == sum(lens)
    assert ["exact" if b.mask is None else "window" if b.rows is None else "gathered" for b in plan] == kinds
    got = bucketed_attention(qkv, plan, nh, hd)
    assert got.shape == (sum(lens), nh * hd)
    off = 0
    for n in lens:
        q, k, v = qkv[off:off + n].view(1, n, 3, nh, hd).permute(2, 0, 3, 1, 4)
        want = F.scaled_dot_product_attention(q, k, v)[0]  # this sequence alone, no padding
        assert torch.allclose(got[off:off + n].view(n, nh, hd).transpose(0, 1), want, atol=1e-6)
        off += n


@pytest.fixture(scope="module")
def kernel():
    """condense's attention kernel (built on first use, ~20 s), or a skip saying why it is not used here."""
    mod, why = native.native_kernels()
    if mod is None:
        pytest.skip(f"condense's attention kernel is not used here: {why}")
    return mod


def _per_sequence(qkv: torch.Tensor, lens: list[int], heads: int, dim: int) -> torch.Tensor:
    """Each sequence's attention alone, in float32 from the same bf16 q/k/v."""
    out, off = [], 0
    for n in lens:
        q, k, v = qkv[off:off + n].float().view(n, 3, heads, dim).permute(1, 2, 0, 3)
        out.append(F.scaled_dot_product_attention(q, k, v).transpose(0, 1).reshape(n, heads * dim))
        off += n
    return torch.cat(out)


@pytest.mark.parametrize("lens, heads, dim", [
    ([128, 128, 124, 100, 96, 65, 64, 33, 17, 2, 1], 12, 32),  # MiniLM's shape; lengths on and off 16 and 64
    ([300, 129, 40], 2, 64),  # longer than one 128-row query block
    ([5, 3], 3, 16),
])
def test_native_attention_equals_per_sequence_attention(kernel, lens, heads, dim):
    g = torch.Generator().manual_seed(len(lens))
    qkv = (torch.randn(sum(lens), 3 * heads * dim, generator=g) * 2).bfloat16()
    attend = PackedAttention(lens, use_native=True)
    assert attend.native(dim)
    got = attend(qkv, heads, dim)
    want = _per_sequence(qkv, lens, heads, dim)
    assert got.dtype == torch.float32 and got.shape == want.shape
    # torch's own bf16 attention on the same inputs sets the error allowed: the kernel rounds the probabilities
    # to bf16 as it does, and keeps its output in float32
    torch_bf16 = PackedAttention(lens, use_native=False)(qkv, heads, dim)
    err, torch_err = (got - want).abs().max(), (torch_bf16 - want).abs().max()
    assert err <= torch_err + 1e-3, (err, torch_err)


def test_native_attention_checks_its_inputs(kernel):
    qkv = torch.randn(6, 3 * 2 * 32).bfloat16()
    with pytest.raises(RuntimeError, match="lies outside qkv's 6 rows"):
        kernel.packed_attention(qkv, torch.tensor([0, 4]), torch.tensor([4, 4]), 2, 32, 0.2)
    with pytest.raises(RuntimeError, match="head size must be 16, 32, 48 or 64"):
        kernel.packed_attention(torch.randn(6, 3 * 8 * 8).bfloat16(), torch.tensor([0]), torch.tensor([6]), 8, 8, 0.3)
    with pytest.raises(RuntimeError, match="bfloat16"):
        kernel.packed_attention(qkv.float(), torch.tensor([0]), torch.tensor([6]), 2, 32, 0.2)
    assert PackedAttention([6]).native(32) and not PackedAttention([6]).native(8)  # head size 8: torch's attention


def test_packed_attention_without_the_kernel_uses_torch_and_says_why(monkeypatch):
    monkeypatch.setenv(native.ENV, "0")
    assert native._why_not() == f"{native.ENV}=0"
    monkeypatch.setattr(native, "native_kernels", lambda: (None, "this CPU lacks amx_bf16 (test)"))
    with pytest.raises(condense.CondenseError, match=r"unavailable here: this CPU lacks amx_bf16 \(test\)"):
        PackedAttention([3], use_native=True)
    lens = [7, 7, 5, 2, 1]
    qkv = torch.randn(sum(lens), 3 * 2 * 16).bfloat16()
    attend = PackedAttention(lens)
    assert not attend.native(16)
    got = attend(qkv, 2, 16)
    assert got.dtype == torch.float32 and (got - _per_sequence(qkv, lens, 2, 16)).abs().max() < 2e-2


def test_a_kernel_that_fails_to_build_is_reported_and_not_used(monkeypatch, tmp_path):
    broken = tmp_path / "broken.cpp"
    broken.write_text('#error "deliberately broken"\n')
    monkeypatch.setattr(native, "_why_not", lambda: None)
    monkeypatch.setattr(native, "SOURCE", broken)
    monkeypatch.setenv("CONDENSE_CACHE", str(tmp_path / "cache"))
    mod, why = native.native_kernels.__wrapped__()
    assert mod is None and why.startswith("building broken.cpp failed (") and "build log in" in why

    def read_only(name):
        raise PermissionError(13, "Permission denied", name)

    monkeypatch.setattr(native, "_build_dir", read_only)
    mod, why = native.native_kernels.__wrapped__()
    assert mod is None and "set CONDENSE_CACHE to a writable folder" in why


def _batches(seed: int, n: int = 3):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 60, (6, 12), generator=g)
        mask = torch.ones(6, 12, dtype=torch.long)
        for i, keep in enumerate((12, 12, 9, 4, 1, 7)):
            mask[i, keep:] = 0
        out.append((ids, mask))
    return out


def _pooled(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask[..., None].float()
    return F.normalize((h * m).sum(1) / m.sum(1), dim=-1)


def test_packed_encoder_matches_the_float_bert_within_int8_error_and_zeroes_padding():
    torch.manual_seed(0)
    ref_model = Bert(CFG).eval()
    q = condense.quantize_(copy.deepcopy(ref_model), OneDnnInt8Config(float_channels=2), calibration=_batches(0))
    ids, mask = _batches(1, 1)[0]
    with torch.no_grad():
        want, got = ref_model(ids, mask), q(ids, mask)
    assert isinstance(q, PackedInt8Bert) and got.shape == want.shape
    assert (got[mask == 0] == 0).all()
    cos = (_pooled(got, mask) * _pooled(want, mask)).sum(-1)
    assert cos.min() > 0.99, cos
    d = lineage(q)["transforms"][-1]["details"]
    assert d["path"] == "packed" and d["encoders"] == [""] and d["calibration_batches"] == 3
    # per block: q/k/v, attention out, ffn_in, ffn_out and the 2 channels kept out of ffn_out's uint8 input
    assert sum(isinstance(m, Int8Matmul) for m in q.modules()) == 5 * CFG.num_layers
    assert q.layers[0].ffn_in.out_features == CFG.intermediate_size - 2
    side = q.layers[0].float_channels.mm
    assert side.out_features == 2 and side.output_range == q.layers[0].ffn_in.output_range
    with pytest.raises(condense.CondenseError, match="last hidden states only"):
        q(ids, mask, output_hidden_states=True)
    assert torch.equal(q(ids, mask), got)  # with autograd on too (inference kernels: computed without it)
    # pooled straight from the packed rows: what mean pooling of the padded output gives
    assert torch.allclose(q.mean_pooled(ids, mask), _pooled(got, mask), atol=1e-6)


def test_packed_encoder_with_the_kernel_matches_torch_attention(kernel):
    cfg = BertConfig(vocab_size=60, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                     max_position=32)  # head size 32, as MiniLM's
    torch.manual_seed(0)
    q = condense.quantize_(Bert(cfg).eval(), OneDnnInt8Config(), calibration=_batches(0))
    ids, mask = _batches(3, 1)[0]
    with torch.no_grad():
        ours = q(ids, mask)
        q.native = False
        theirs = q(ids, mask)
    keep = mask.bool()
    assert (ours - theirs)[keep].norm() < 0.01 * theirs[keep].norm() and (ours[~keep] == 0).all()


def test_packed_encoder_saves_and_loads_to_identical_outputs(tmp_path):
    torch.manual_seed(0)
    q = condense.quantize_(Bert(CFG).eval(), OneDnnInt8Config(), calibration=_batches(0))
    ids, mask = _batches(2, 1)[0]
    with torch.no_grad():
        want = q(ids, mask)
    back = condense.load(condense.save(q, tmp_path / "q"), model=Bert(CFG).eval())
    with torch.no_grad():
        got = back(ids, mask)
    assert isinstance(back, PackedInt8Bert) and torch.equal(got, want)


def test_per_linear_path_on_a_model_condense_did_not_write(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4)).eval()
    x = torch.randn(64, 16)
    want = model(x).detach()
    q = condense.quantize_(model, OneDnnInt8Config(exclude=("2",)), calibration=[x[:32], x[32:]])
    d = lineage(q)["transforms"][-1]["details"]
    assert d["path"] == "linear" and d["layers"] == ["0"]
    assert isinstance(q[0], Int8Linear) and isinstance(q[2], torch.nn.Linear)
    with torch.no_grad():
        got = q(x)
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    back = condense.load(condense.save(q, tmp_path / "l"), model=torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4)))
    with torch.no_grad():
        assert torch.equal(back(x), got)


def test_config_checks_and_clear_errors(monkeypatch):
    with pytest.raises(ConfigError, match="smooth_quant"):
        OneDnnInt8Config(smooth_quant=1.5)
    with pytest.raises(ConfigError, match="packed must be"):
        OneDnnInt8Config(packed="yes")
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ConfigError, match="no packed int8 encoder"):
        condense.quantize_(mlp, OneDnnInt8Config(packed=True), calibration=[torch.randn(2, 4)])
    import condense.quantize.onednn.config as cfg_mod

    monkeypatch.setattr(cfg_mod, "onednn_int8", lambda: (False, "no amx_int8/avx512_vnni/avx_vnni (test)"))
    with pytest.raises(ConfigError, match=r"avx_vnni \(test\); use Int8Config"):
        condense.quantize_(mlp, OneDnnInt8Config(), calibration=[torch.randn(2, 4)])


def test_export_of_a_onednn_model_is_a_clear_error_naming_the_fix(tmp_path):
    from condense.export.files import export_model

    torch.manual_seed(0)
    q = condense.quantize_(Bert(CFG).eval(), OneDnnInt8Config(), calibration=_batches(0))
    with pytest.raises(condense.CondenseError, match=r"cannot express; for ONNX Runtime, quantize with OrtInt8Config"):
        export_model(q, None, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_hugging_face_bert_gets_the_per_linear_path_and_reloads_exactly(tmp_path):
    pytest.importorskip("transformers")
    from tests.quantize._tiny_bert import padded_batch, tiny_bert

    model = tiny_bert()
    ref = copy.deepcopy(model)
    q = condense.quantize_(model, OneDnnInt8Config(), calibration=[padded_batch(s) for s in range(4)])
    assert lineage(q)["transforms"][-1]["details"]["path"] == "linear"  # no packed encoder for HF's BertModel
    assert sum(isinstance(m, Int8Linear) for m in q.modules()) == 2 * 6 + 1  # q, k, v, out, FFN x2 per layer; pooler
    b = padded_batch(9)
    keep = b["attention_mask"].bool()
    with torch.no_grad():
        want, got = ref(**b).last_hidden_state, q(**b).last_hidden_state
    assert (got - want)[keep].norm() < 0.01 * want[keep].norm()
    back = condense.load(condense.save(q, tmp_path / "hf"), model=tiny_bert())
    with torch.no_grad():
        assert torch.equal(back(**b).last_hidden_state, got)


def test_hugging_face_gpt2_conv1d_layers_are_quantized_and_reload_exactly(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=256, n_positions=64)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    cal, x = [torch.randint(0, 256, (4, 32), generator=g) for _ in range(4)], torch.randint(0, 256, (2, 32), generator=g)
    q = condense.quantize_(model, OneDnnInt8Config(exclude=("lm_head",)), calibration=cal)
    d = lineage(q)["transforms"][-1]["details"]
    assert len(d["linearized"]) == 4 * cfg.n_layer  # c_attn, c_proj, c_fc, mlp.c_proj: Conv1D -> Linear first
    assert sum(isinstance(m, Int8Linear) for m in q.modules()) == 4 * cfg.n_layer
    with torch.no_grad():
        want, got = ref(x).logits, q(x).logits
    assert (got - want).norm() < 0.03 * want.norm() and (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.95
    back = condense.load(condense.save(q, tmp_path / "g"), model=transformers.GPT2LMHeadModel(cfg).eval())
    with torch.no_grad():
        assert torch.equal(back(x).logits, got)
