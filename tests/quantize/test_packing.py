"""Packing b-bit integers into bytes: exact round trips, exact byte counts, exact bytes against a bit-stream reference."""
import pytest
import torch

from condense.errors import ConfigError
from condense.quantize.weight_only.packing import pack, packed_nbytes, unpack


def _reference_pack(values: list[int], bits: int) -> list[int]:
    """Straightforward little-endian bit stream: value i at bits [bits*i, bits*i + bits)."""
    stream = 0
    for i, v in enumerate(values):
        stream |= v << (bits * i)
    nbytes = (len(values) * bits + 7) // 8
    return [(stream >> (8 * j)) & 0xFF for j in range(nbytes)]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 7, 8, 9, 15, 17, 1001])
def test_round_trip_and_byte_count_are_exact(bits, n):
    g = torch.Generator().manual_seed(bits * 1000 + n)
    v = torch.randint(0, 1 << bits, (n,), generator=g)
    p = pack(v, bits)
    assert p.dtype == torch.uint8 and p.dim() == 1
    assert p.numel() == packed_nbytes(n, bits) == -(-n * bits // 8)
    assert p.tolist() == _reference_pack(v.tolist(), bits)
    out = unpack(p, bits, n)
    assert out.dtype == torch.uint8 and torch.equal(out.long(), v)


def test_byte_counts_of_the_documented_layouts():
    assert packed_nbytes(7, 4) == 4  # two per byte
    assert packed_nbytes(7, 2) == 2  # four per byte
    assert packed_nbytes(8, 3) == 3 and packed_nbytes(16, 3) == 6 and packed_nbytes(3, 3) == 2  # 8 in 3 bytes
    assert packed_nbytes(7, 8) == 7


def test_known_bytes():
    assert pack(torch.tensor([1, 2, 15]), 4).tolist() == [0x21, 0x0F]  # first value in the low nibble
    assert pack(torch.tensor([1, 2, 3, 0, 3]), 2).tolist() == [0b00111001, 0b11]
    # 3-bit: 0..7 -> stream 0b111_110_101_100_011_010_001_000 = 0xFAC688, little-endian bytes
    assert pack(torch.arange(8), 3).tolist() == [0x88, 0xC6, 0xFA]


def test_multidimensional_input_is_packed_row_major():
    v = torch.randint(0, 8, (5, 7))
    assert torch.equal(unpack(pack(v, 3), 3, 35).view(5, 7).long(), v)


def test_errors_name_the_fix():
    with pytest.raises(ConfigError, match=r"lie in \[0, 15\]"):
        pack(torch.tensor([16]), 4)
    with pytest.raises(ConfigError, match=r"lie in \[0, 3\]"):
        pack(torch.tensor([-1]), 2)
    with pytest.raises(ConfigError, match="bits must be one of"):
        pack(torch.tensor([1]), 9)
    with pytest.raises(ConfigError, match="need 4"):
        unpack(torch.zeros(3, dtype=torch.uint8), 4, 8)
    with pytest.raises(ConfigError, match="1-D uint8"):
        unpack(torch.zeros(3, dtype=torch.int32), 4, 2)
