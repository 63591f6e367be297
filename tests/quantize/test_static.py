"""Static int8 (torch.ao FX, x86 kernels): accuracy kept, real quantized modules, exact save/load, no silent skips."""
import warnings

import pytest
import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
from torch import nn

import condense
from condense.core.config import config_from_dict
from condense.core.lineage import lineage
from condense.errors import CondenseError, ConfigError
from condense.quantize.static import StaticInt8Config
from condense.testing import TinyMLP


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits(one_thread):
    task = condense.get_task("digits", channels=(16, 32, 64), epochs=8)  # trains in seconds (isolated cache)
    fp32 = task.build_model()
    q = condense.quantize_(task.build_model(), StaticInt8Config(), task=task)
    return task, fp32, q


def test_digits_accuracy_within_one_point_of_fp32(digits):
    task, fp32, q = digits
    base, got = task.metrics(fp32)["accuracy"], task.metrics(q)["accuracy"]
    assert got >= base - 0.01, (base, got)


def test_conv_bn_relu_is_fused_into_int8_kernels(digits):
    _, _, q = digits
    mods = dict(q.named_modules())
    for name in ("features.0.0", "features.1.0", "features.3.0"):  # each conv-bn-relu block -> one int8 module
        assert isinstance(mods[name], nniq.ConvReLU2d), type(mods[name])
    assert isinstance(mods["classifier"], nnq.Linear)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Conv2d, nn.Linear)) for m in q.modules())
    assert mods["features.1.0"].weight().dtype == torch.qint8
    details = lineage(q)["transforms"][-1]["details"]
    assert details["skipped"] == [] and details["calibration_batches"] == 8


def test_save_load_gives_identical_outputs(digits, tmp_path):
    task, _, q = digits
    loaded = condense.load(condense.save(q, tmp_path / "static"))
    x = task.batch(64)
    with torch.inference_mode():
        assert torch.equal(loaded(x), q(x))


def test_exclude_keeps_layer_float_and_records_it(digits):
    task, _, _ = digits
    q = condense.quantize_(task.build_model(), StaticInt8Config(observer="minmax", exclude=("classifier",)),
                           task=task)
    assert type(dict(q.named_modules())["classifier"]) is nn.Linear
    assert lineage(q)["transforms"][-1]["details"]["excluded"] == ["classifier"]


class _WithBilinear(nn.Module):
    """Linear -> Bilinear: torch's x86 int8 backend has no Bilinear kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.bil = nn.Bilinear(8, 8, 4)

    def forward(self, x):
        h = self.fc(x)
        return self.bil(h, h)


def test_layer_without_int8_kernel_is_reported_not_silent(tmp_path):
    torch.manual_seed(0)
    m = _WithBilinear().eval()
    calib = [torch.randn(16, 8) for _ in range(2)]
    with pytest.warns(UserWarning, match="kept in float.*bil"):
        q = condense.quantize_(m, StaticInt8Config(), calibration=calib)
    assert lineage(q)["transforms"][-1]["details"]["skipped"] == ["bil"]
    x = torch.randn(4, 8)
    assert torch.equal(condense.load(condense.save(q, tmp_path / "b"), model=_WithBilinear())(x), q(x))


class _ConvNorm(nn.Module):
    """Conv1d -> LayerNorm -> Linear: exercises the codecs for quantized norms (python-float output scales)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3, padding=1)
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.norm(self.conv(x)))  # (B, 8, 3)


def test_quantized_norm_round_trips_exactly(tmp_path):
    torch.manual_seed(0)
    calib = [torch.randn(8, 4, 16) for _ in range(3)]
    q = condense.quantize_(_ConvNorm().eval(), StaticInt8Config(observer="minmax"), calibration=calib)
    assert isinstance(dict(q.named_modules())["norm"], nnq.LayerNorm)
    x = torch.randn(5, 4, 16)
    assert torch.equal(condense.load(condense.save(q, tmp_path / "n"), model=_ConvNorm())(x), q(x))


def test_config_round_trips_and_rejects_bad_values():
    cfg = StaticInt8Config(observer="moving_average", per_channel=False, calibration_batches=3)
    assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="observer must be one of"):
        StaticInt8Config(observer="percentile")
    with pytest.raises(ConfigError, match="calibration_batches"):
        StaticInt8Config(calibration_batches=0)


def test_text_batches_are_refused_with_the_alternative():
    with pytest.raises(CondenseError, match="DynamicInt8Config or OrtInt8Config"):
        condense.quantize_(TinyMLP(), StaticInt8Config(), calibration=[["some text"]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CondenseError, match="needs calibration data"):
            condense.quantize_(TinyMLP(), StaticInt8Config())
