import pytest
import torch

from lightning_quant.packing import pack, packed_nbytes, unpack

LENGTHS = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 4099]


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("numel", LENGTHS)
def test_round_trip_every_width(bits: int, numel: int) -> None:
    gen = torch.Generator().manual_seed(bits * 1000 + numel)
    codes = torch.randint(0, 2**bits, (numel,), generator=gen, dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == packed_nbytes(numel, bits) == (numel * bits + 7) // 8
    assert torch.equal(unpack(packed, bits, numel), codes)


@pytest.mark.parametrize("bits", range(1, 9))
def test_extreme_codes_round_trip(bits: int) -> None:
    codes = torch.tensor([0, 2**bits - 1] * 13, dtype=torch.uint8)
    assert torch.equal(unpack(pack(codes, bits), bits, codes.numel()), codes)


def test_layout_is_little_endian() -> None:
    codes = torch.tensor([1, 2, 3, 0], dtype=torch.uint8)
    assert pack(codes, 2).tolist() == [0b00111001]
    assert pack(torch.tensor([5, 3], dtype=torch.uint8), 3).tolist() == [0b011101]


def test_unpack_ignores_trailing_bytes() -> None:
    codes = torch.tensor([3, 1, 2], dtype=torch.uint8)
    packed = torch.cat([pack(codes, 3), torch.tensor([255], dtype=torch.uint8)])
    assert torch.equal(unpack(packed, 3, 3), codes)


@pytest.mark.parametrize("bits", [0, 9, 2.0])
def test_bad_width_is_refused(bits) -> None:
    with pytest.raises(ValueError, match="bits must be"):
        pack(torch.zeros(4, dtype=torch.uint8), bits)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="uint8"):
        pack(torch.zeros(4, dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="need"):
        unpack(torch.zeros(1, dtype=torch.uint8), 4, 5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bits", range(1, 9))
def test_round_trip_on_cuda(bits: int) -> None:
    codes = torch.randint(0, 2**bits, (12345,), dtype=torch.uint8, device="cuda")
    packed = pack(codes, bits)
    assert packed.is_cuda
    assert torch.equal(unpack(packed, bits, codes.numel()), codes)
