import torch
from torch import nn

import condense
from condense.measurement.counts import count_parameters
from condense.measurement.macs import count_macs
from condense.tasks.digits import DigitsCNN


def test_linear_parameters_and_macs_exact():
    lin = nn.Linear(10, 20)
    assert count_parameters(lin) == (10 * 20 + 20, 10 * 20 + 20)
    assert count_macs(lin, lambda: lin(torch.zeros(3, 10))) == 3 * 10 * 20


def test_conv_macs_exact_including_groups():
    conv = nn.Conv2d(4, 8, 3, padding=1)
    x = torch.zeros(1, 4, 10, 10)
    assert count_macs(conv, lambda: conv(x)) == 8 * 10 * 10 * 4 * 9
    dw = nn.Conv2d(4, 8, 3, padding=1, groups=4)
    assert count_macs(dw, lambda: dw(x)) == 8 * 10 * 10 * 1 * 9


def test_attention_matmuls_are_counted():
    q = torch.zeros(2, 4, 16, 8)  # (B, heads, T, head_dim)
    # QK^T: B*h*T*T*d MACs, then PV: the same again
    assert count_macs(nn.Identity(), lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q)) \
        == 2 * (2 * 4 * 16 * 16 * 8)


def test_digits_cnn_macs_match_hand_count():
    m = DigitsCNN((32, 64, 128)).eval()
    expected = 64 * 32 * 1 * 9 + 64 * 64 * 32 * 9 + 16 * 128 * 64 * 9 + 128 * 10
    assert count_macs(m, lambda: m(torch.zeros(1, 1, 8, 8))) == expected == 2_379_008


def test_quantized_layers_keep_their_counts_and_zeros_are_seen():
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        m[0].weight[:5].zero_()
    total, nonzero = count_parameters(m)
    assert (total, nonzero) == (16 * 32 + 32 + 32 * 4 + 4, 16 * 32 + 32 + 32 * 4 + 4 - 5 * 16)
    x = torch.zeros(2, 16)
    macs = count_macs(m, lambda: m(x))
    condense.quantize_(m, condense.DynamicInt8Config())
    assert count_parameters(m)[0] == total  # packed int8 weights are still counted
    assert count_parameters(m)[1] <= nonzero  # zeros stay zero (rounding may add more)
    assert count_macs(m, lambda: m(x)) == macs == 2 * (16 * 32 + 32 * 4)
