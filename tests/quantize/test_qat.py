import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.nn import quantized as nnq
from torch.ao.quantization import FakeQuantizeBase

import condense
from condense.core.config import config_from_dict
from condense.core.lineage import lineage
from condense.errors import ConfigError
from condense.quantize.error import sqnr_db
from condense.quantize.fake import (ActivationFakeQuantize, FakeQuantConv2d, FakeQuantLinear, WeightFakeQuantize,
                                    fake_quantize_ste, swap_fake_quant_)
from condense.quantize.primitives import Granularity, QuantKind, QuantSpec, compute_qparams, fake_quantize
from condense.quantize.qat import QATConfig, _finetune
from condense.testing import TinyMLP, tiny_task


# -- straight-through estimator ---------------------------------------------------------------------------------
def test_ste_matches_torch_fake_quantize_forward_and_gradient_per_tensor():
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 2001)  # the range below covers [-1.28, 1.27]: both ends get clipped
    g = torch.randn_like(x)
    spec = QuantSpec(bits=8, symmetric=False)
    scale, zp = torch.tensor(0.01), torch.tensor(128, dtype=torch.int32)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = fake_quantize_ste(a, spec, scale, zp)
    ref = torch.fake_quantize_per_tensor_affine(b, 0.01, 128, 0, 255)
    (ours * g).sum().backward()
    (ref * g).sum().backward()
    assert torch.equal(ours, ref)
    assert torch.equal(a.grad, b.grad)
    inside, outside = x.abs() < 1.25, x.abs() > 1.3  # (away from the float-rounded edges)
    assert torch.equal(a.grad[inside], g[inside]) and bool((a.grad[outside] == 0).all())


def test_ste_matches_torch_fake_quantize_gradient_per_channel():
    torch.manual_seed(0)
    w = torch.randn(6, 20)
    spec = QuantSpec(bits=4, granularity=Granularity.PER_CHANNEL)
    scale, zp = compute_qparams(w, spec)
    scale = scale * 0.6  # a tighter range, so some values are clipped
    a, b = w.clone().requires_grad_(), w.clone().requires_grad_()
    g = torch.randn_like(w)
    (fake_quantize_ste(a, spec, scale, zp) * g).sum().backward()
    (torch.fake_quantize_per_channel_affine(b, scale, zp, 0, -7, 7) * g).sum().backward()
    assert torch.equal(a.grad, b.grad) and bool((a.grad == 0).any())


def test_ste_for_codebook_kinds_is_identity():
    w = torch.randn(4, 8, requires_grad=True)
    for spec in (QuantSpec(bits=2, kind=QuantKind.TERNARY), QuantSpec(bits=3, kind=QuantKind.KMEANS)):
        w.grad = None
        out = fake_quantize_ste(w, spec)
        assert torch.equal(out, fake_quantize(w, spec))
        out.sum().backward()
        assert torch.equal(w.grad, torch.ones_like(w))


# -- fake-quant layers ------------------------------------------------------------------------------------------
def test_fake_quant_linear_equals_manual_fake_quantization():
    torch.manual_seed(0)
    lin = nn.Linear(8, 4)
    m = FakeQuantLinear.from_float(lin)
    x = torch.randn(16, 8)
    out = m(x)  # first batch: the running range is the batch's min/max
    ref = F.linear(fake_quantize(x, QuantSpec(bits=8, symmetric=False)),
                   fake_quantize(lin.weight, QuantSpec(bits=8, granularity=Granularity.PER_CHANNEL)), lin.bias)
    assert torch.equal(out, ref)
    out.sum().backward()
    assert lin.weight.grad is not None and bool(lin.weight.grad.abs().sum() > 0)
    assert torch.equal(m.to_float().weight, lin.weight)


def test_fake_quant_conv_and_swap():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    spec = QuantSpec(bits=1, kind=QuantKind.BINARY, granularity=Granularity.PER_CHANNEL)
    m = FakeQuantConv2d.from_float(conv, weight_spec=spec, act_bits=None)
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(m(x), F.conv2d(x, fake_quantize(conv.weight, spec), padding=1))
    net = swap_fake_quant_(TinyMLP(), ["fc1"], act_bits=4)
    assert isinstance(net.fc1, FakeQuantLinear) and type(net.fc2) is nn.Linear
    assert net.fc1.input_fake_quant.spec.bits == 4
    with pytest.raises(ConfigError, match="cannot fake-quantize 'act'"):
        swap_fake_quant_(TinyMLP(), ["act"])


def test_fake_quantizers_report_qparams_for_torch_ao():
    w = WeightFakeQuantize()
    w(torch.randn(5, 3))
    assert w.calculate_qparams()[0].shape == (5,) and w.qscheme == torch.per_channel_symmetric
    a = ActivationFakeQuantize(bits=8, reduce_range=True)
    assert (a.quant_min, a.quant_max, a.dtype) == (0, 127, torch.quint8)
    with pytest.raises(ConfigError, match="activation bits must be in 2..8"):
        ActivationFakeQuantize(bits=1)


# -- the config -------------------------------------------------------------------------------------------------
def test_config_round_trips_and_errors_name_the_fix():
    cfg = QATConfig(weight_bits=4, steps=10, lr=3e-4, exclude=("classifier",))
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.weight_spec() == QuantSpec(bits=4, granularity=Granularity.PER_CHANNEL)
    for kwargs, match in ((dict(weight_bits=16), "weight_bits must be in 2..8, got 16; use weight_bits=8"),
                          (dict(act_bits=1), "act_bits must be in 2..8"),
                          (dict(act_bits=2), "reduce_range leaves"),
                          (dict(steps=-1), "steps must be an int >= 0"),
                          (dict(lr=0.0), "lr must be a positive number"),
                          (dict(include="fc1"), "tuple of patterns")):
        with pytest.raises(ConfigError, match=match):
            QATConfig(**kwargs)


def test_finetune_lowers_the_loss_and_checks_targets():
    torch.manual_seed(0)
    m = TinyMLP()
    x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
    with torch.no_grad():
        before = float(F.cross_entropy(m(x), y))
    assert _finetune(m, iter([(x, y)] * 30), 100, 3e-2) == 30  # stops when the batches run out
    with torch.no_grad():
        assert float(F.cross_entropy(m(x), y)) < before * 0.8
    with pytest.raises(ConfigError, match="integer class targets"):
        _finetune(m, iter([(x, torch.randn(64))]), 1, 1e-2)


# -- conversion to int8 kernels ---------------------------------------------------------------------------------
def test_tiny_model_converts_with_excludes_and_coarser_weights():
    task = tiny_task()
    m = task.build_model()
    x = task.calibration_data and next(iter(task.calibration_data()))
    q8 = condense.quantize_(m, QATConfig(steps=0, exclude=("fc2",)), task=task)
    assert isinstance(q8.fc1, nnq.Linear) and type(q8.fc2) is nn.Linear
    assert type(m.fc1) is nn.Linear  # the input model is left as it was
    q4 = condense.quantize_(m, QATConfig(steps=0, weight_bits=4), task=task)
    w4 = q4.fc1.weight().int_repr()
    assert int(w4.abs().max()) == 7  # a 4-bit symmetric grid held in int8
    ref = m(x)
    assert sqnr_db(ref, q8(x)) > sqnr_db(ref, q4(x))


def test_untraceable_model_is_a_clear_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with pytest.raises(ConfigError, match="cannot be traced.*DynamicInt8Config"):
        condense.quantize_(Branchy(), QATConfig(steps=0), calibration=[torch.randn(4, 8)])


@pytest.fixture(scope="module")
def digits():
    task = condense.get_task("digits")
    model = task.build_model()
    fp32 = task.metrics(model)["accuracy"]
    q = condense.quantize_(model, QATConfig(steps=30), task=task)
    return task, model, fp32, q


def test_digits_qat_int8_is_within_one_point_of_fp32(digits):
    task, model, fp32, q = digits
    int8 = task.metrics(q)["accuracy"]
    assert int8 >= fp32 - 0.01, (fp32, int8)
    kinds = [type(m) for m in q.modules()]
    assert sum(issubclass(k, nnq.Conv2d) for k in kinds) == 3  # conv-bn-relu x3 fused into int8 ConvReLU2d
    assert isinstance(q.classifier, nnq.Linear) and q.classifier.weight().dtype == torch.qint8
    assert not any(issubclass(k, (FakeQuantizeBase, nn.BatchNorm2d, nn.Conv2d)) for k in kinds)
    assert lineage(q)["transforms"][-1]["details"]["layers"] == ["features.0.0", "features.1.0", "features.3.0",
                                                                 "classifier"]
    x = task.batch(64)
    assert sqnr_db(model(x), q(x)) > 15  # int8 logits track fp32 ones


def test_digits_qat_save_load_gives_identical_outputs(digits, tmp_path):
    task, _, _, q = digits
    path = condense.save(q, tmp_path / "qat")
    loaded = condense.load(path)
    x = task.batch(256)
    assert torch.equal(loaded(x), q(x))
    assert isinstance(dict(loaded.named_modules())["features.1.0"], nnq.Conv2d)
