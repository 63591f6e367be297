"""Static int8's accuracy aids (SmoothQuant, bias correction, float layers) on a tiny Hugging Face BERT, ORT path."""
import pytest
import torch
import torch.nn.functional as F

import condense
from condense.core.lineage import lineage
from condense.errors import ConfigError
from condense.quantize.static import StaticInt8Config
from condense.quantize.static_aids import SmoothedLinear, fake_int8_weight, prepare

from tests.quantize._tiny_bert import padded_batch, tiny_bert

transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(batches):
    def run(m):
        for b in batches:
            m(**b)
    return run


def _linears(m):
    return [n for n, x in m.named_modules() if isinstance(x, torch.nn.Linear)]


def test_smoothquant_keeps_the_float_function_and_shares_scales_across_query_key_value():
    model = tiny_bert()
    names = _linears(model)  # per layer q, k, v, attention out, FFN in, FFN out; plus the pooler
    assert len(names) == 2 * 6 + 1
    smoothed, d = prepare(model, names, _run([padded_batch(i) for i in range(2)]), smooth_quant=0.5,
                          bias_correction=False, float_layers=0)
    assert sum(isinstance(m, SmoothedLinear) for m in smoothed.modules()) == 13
    assert sorted(len(g) for g in d["smooth_quant"]["groups"]) == [1] * 7 + [3] * 2  # q/k/v read one input
    x = padded_batch(9)
    with torch.no_grad():
        ref, got = model(**x).last_hidden_state, smoothed(**x).last_hidden_state
    assert (got - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()  # fp32 rounding only
    assert not isinstance(model.encoder.layer[0].attention.self.query, SmoothedLinear)  # the original is untouched


def test_bias_correction_subtracts_the_int8_weight_shift_of_the_mean_input():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    xs = [torch.randn(16, 8) + 2.0 for _ in range(2)]

    def run(m):
        for x in xs:
            m(x)

    fixed, d = prepare(model, ["0"], run, smooth_quant=0.0, bias_correction=True, float_layers=0)
    w = model[0].weight.detach()
    mean = torch.cat(xs).mean(dim=0)
    want = model[0].bias.detach() - (fake_int8_weight(w) - w) @ mean
    assert torch.allclose(fixed[0].bias, want, atol=1e-6) and not torch.equal(fixed[0].bias, model[0].bias)
    # the corrected int8 layer's mean output error on the calibration inputs is (nearly) zero
    with torch.no_grad():
        x = torch.cat(xs)
        err_before = (F.linear(x, fake_int8_weight(w), model[0].bias) - model[0](x)).mean(dim=0).abs().max()
        err_after = (F.linear(x, fake_int8_weight(w), fixed[0].bias) - model[0](x)).mean(dim=0).abs().max()
    assert err_after <= 1e-5 < err_before


@pytest.fixture(scope="module")
def aided(one_thread):
    q = condense.quantize_(tiny_bert(), StaticInt8Config(calibration_batches=2, smooth_quant=0.5, bias_correction=True,
                                                     float_layers=3),
                           calibration=[padded_batch(i) for i in range(2)])
    return q


def test_float_layers_keeps_exactly_the_largest_error_layers_in_float(aided):
    d = lineage(aided)["transforms"][-1]["details"]
    aids = d["aids"]
    errors = aids["relative_errors"]
    assert len(errors) == 13 and len(aids["float_layers"]) == 3
    assert aids["float_layers"] == sorted(errors, key=lambda n: -errors[n])[:3]
    # quantized MatMuls: the 13 weight ones less the 3 kept in float, plus 2 activation x activation per layer
    assert len(d["excluded_nodes"]) == 3 and d["quantized_nodes"] == 13 - 3 + 2 * 2
    assert "accuracy aids" in d["fx_error"] and d["path"] == "onnxruntime"


def test_aided_static_int8_stays_close_to_fp32_and_reloads_exactly(aided, tmp_path):
    x = padded_batch(100, b=3, t=12)
    with torch.inference_mode():
        ref, got = tiny_bert()(**x).last_hidden_state, aided(**x).last_hidden_state
    cos = F.cosine_similarity(got, ref, dim=-1)  # (B, T)
    assert cos.min() > 0.99 and (got - ref).abs().max() > 0
    back = condense.load(condense.save(aided, tmp_path / "aided"), model=tiny_bert())
    with torch.inference_mode():
        assert torch.equal(back(**x).last_hidden_state, aided(**x).last_hidden_state)


def test_aid_options_are_checked():
    with pytest.raises(ConfigError, match="smooth_quant"):
        StaticInt8Config(smooth_quant=1.0)
    with pytest.raises(ConfigError, match="float_layers"):
        StaticInt8Config(float_layers=-1)
