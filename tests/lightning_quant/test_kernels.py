"""The fused CPU kernels against the eager reference path.

Both paths must write the same wire layout (packed codes, scales) and differ only in the
random stream; the kernels' stream must keep the rounding unbiased and independent.
"""

import math

import numpy as np
import pytest
import torch

from lightning_quant.packing import pack, unpack
from lightning_quant.quantizers import get_quantizer, kernels
from lightning_quant.quantizers.kernels import _cpu, cpu, levels
from tests.utils.schemes import BUCKETED, SHARED_SCALE, make

pytestmark = pytest.mark.skipif(not kernels.available(), reason="numba kernels unavailable")

# bucket sizes: fused tasks (512, odd 7, 100), tasks of several buckets, and buckets larger
# than a task (two-pass path, with pieces).
BUCKET_SIZES = [512, 7, 100, 40_000, 2 * _cpu.PIECE + 3]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def both(name: str, x: torch.Tensor, seed: int = 0, **config):
    q = make(name, **config)
    return q, q.encode(x, gen(seed)), q.encode_eager(x, gen(seed))


# --- same layout as the eager path --------------------------------------------------------


@pytest.mark.parametrize("name", BUCKETED)
@pytest.mark.parametrize("size", BUCKET_SIZES)
def test_scales_match_the_eager_path(name: str, size: int) -> None:
    x = torch.randn(3 * size + 5, generator=gen(size)) * 10.0 ** (size % 7 - 3)
    q, fast, eager = both(name, x, bits=4, bucket_size=size)
    assert fast.scales.dtype == eager.scales.dtype == torch.float32
    assert torch.equal(fast.scales, eager.scales)
    assert fast.data.shape == eager.data.shape and fast.nbytes == q.wire_nbytes(x.numel())


@pytest.mark.parametrize("name", BUCKETED)
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_either_payload_decodes_identically_on_either_path(name: str, bits: int) -> None:
    x = torch.randn(5003, generator=gen(bits))
    q, fast, eager = both(name, x, bits=bits, bucket_size=128)
    for payload in (fast, eager):
        assert torch.equal(q.decode(payload), q.decode_eager(payload))


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_values_on_levels_give_the_eager_payload_exactly(bits: int) -> None:
    # NUQSGD at base 1/2 (the kernels' own levels): a bucket of norm 2 holding 1 and 0.5
    # (levels 1/2 and 1/4, from 3 bits on), and a bucket with one nonzero (level 1). At base
    # 1/4 (a table): a bucket of sixteen ones (norm 4, level 1/4).
    halves = torch.tensor([1.0] * 3 + [0.5] * 4 + [0.0] * 9)
    quarters = torch.ones(16)
    single = torch.tensor([0.0] * 5 + [3.0] + [0.0] * 10)
    for base, bucket in ((0.5, halves), (0.25, quarters)):
        x = torch.cat([bucket, single] if bits > 2 else [single, single]).repeat(32)
        x *= torch.where(torch.rand(x.numel(), generator=gen()) < 0.5, -1.0, 1.0)
        q, fast, eager = both("nuqsgd", x, seed=1, bits=bits, bucket_size=16, base=base)
        assert (q.table(bits) is None) == (base == 0.5)
        assert torch.equal(fast.scales, eager.scales) and torch.equal(fast.data, eager.data)
    # Uniform levels: 0 and the full scale are exact (clamped) for any noise.
    y = torch.zeros(1000)
    y[::7] = 3.0
    y[::11] = -3.0
    for name in ("qsgd_inf", "qsgd"):
        _, fast, eager = both(name, y, seed=2, bits=bits, bucket_size=1 if name == "qsgd" else 50)
        assert torch.equal(fast.data, eager.data) and torch.equal(fast.scales, eager.scales)


@pytest.mark.parametrize("name", BUCKETED)
@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_fast_codes_are_a_neighbouring_level_with_the_right_sign(name: str, bits: int) -> None:
    x = torch.randn(4099, generator=gen(bits))
    q, fast, eager = both(name, x, bits=bits, bucket_size=64)
    mask = (1 << (bits - 1)) - 1
    a = unpack(fast.data, bits, x.numel()).long()
    b = unpack(eager.data, bits, x.numel()).long()
    assert ((a & mask) - (b & mask)).abs().max() <= 1
    nonzero = (a & mask) > 0
    assert torch.equal((a >> (bits - 1))[nonzero].bool(), x[nonzero] < 0)


def test_table_levels_must_be_a_step_apart_for_the_guide() -> None:
    assert levels.lookup(np.array([0.0, 0.5, 0.51, 1.0]))[1].dtype == np.uint8
    with pytest.raises(ValueError, match="1/128 apart"):
        levels.lookup(np.array([0.0, 0.5, 0.501, 1.0]))


def test_packing_is_packing_py_layout() -> None:
    x = torch.randn(1001, generator=gen())
    for bits in range(2, 9):
        q = get_quantizer("qsgd", bits=bits, bucket_size=77)
        payload = q.encode(x, gen())
        codes = unpack(payload.data, bits, x.numel())
        assert torch.equal(pack(codes, bits), payload.data)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_match_the_eager_scales(dtype) -> None:
    x = torch.randn(3, 700, generator=gen()).to(dtype)
    q, fast, eager = both("nuqsgd", x, bits=4, bucket_size=256)
    assert torch.equal(fast.scales, eager.scales)
    y = q.decode(fast)
    assert y.dtype == dtype and y.shape == x.shape


def test_global_qsgd_matches_the_eager_layout() -> None:
    q = get_quantizer("global_qsgd", bits=8)
    workers = [torch.randn(3001, generator=gen(i)) for i in range(3)]
    scale = max(w.abs().max() for w in workers)
    fast = [q.encode_summable(w, gen(i), world_size=3, scale=scale) for i, w in enumerate(workers)]
    eager = [q.encode_eager(w, gen(i), scale=scale, world_size=3) for i, w in enumerate(workers)]
    for f, e in zip(fast, eager, strict=True):
        assert torch.equal(f.scales, e.scales) and f.data.shape == e.data.shape
        lanes = unpack(f.data, 8, 3001).long() - unpack(e.data, 8, 3001).long()
        assert lanes.abs().max() <= 1
    total = fast[0].data.clone()
    for f in fast[1:]:
        total += f.data
    summed = q.summed(fast[0], total, 3)
    assert torch.equal(q.decode(summed), q.decode_eager(summed))
    # The shared scale defaults to the tensor's own max |x|, NaN and Inf included.
    for bad in (None, float("inf"), float("nan")):
        x = torch.randn(70_001, generator=gen())
        if bad is not None:
            x[12_345] = -bad
        expected, got = x.abs().amax(), cpu.max_abs(x)
        assert torch.equal(got, expected) or (expected.isnan() and got.isnan())


# --- the random stream --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "bits"),
    [(name, bits) for name in ("qsgd", "qsgd_inf", "nuqsgd") for bits in (2, 3, 4)]
    + [(name, bits) for name in SHARED_SCALE for bits in (2, 4)]
    + [("global_qsgd_exp", 3), ("global_qsgd_exp", 8)],
)
def test_fast_path_is_unbiased(name: str, bits: int) -> None:
    v = torch.randn(200, generator=gen(bits)) * torch.rand(200, generator=gen(bits + 1)) * 3
    repeats = 1000
    config = {"bits": bits} if make(name).shared_scale else {"bits": bits, "bucket_size": 50}
    q = make(name, **config)
    assert kernels.supports(v)
    samples = q.decode(q.encode(v.repeat(repeats), gen(7))).view(repeats, -1).double()
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(repeats)
    err = (mean - v.double()).abs()
    assert (err**2).sum() <= 1.5 * (se**2).sum()
    varied = se > 0
    assert torch.all(err[varied] / se[varied] <= 6)


@pytest.mark.parametrize("name", ["qsgd", "nuqsgd"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_fast_path_variance_within_the_bound(name: str, bits: int) -> None:
    d, draws = 128, 500
    v = torch.randn(d, generator=gen(bits)) / torch.rand(d, generator=gen(bits + 9)).sqrt()
    q = make(name, bits=bits, bucket_size=d)
    samples = q.decode(q.encode(v.repeat(draws), gen(3))).view(draws, -1)
    relative = ((samples - v).pow(2).sum(1).mean() / v.pow(2).sum()).item()
    if name == "qsgd":  # QSGD's bound (Alistarh et al.)
        s = 2 ** (bits - 1) - 1
        bound = min(d / s**2, math.sqrt(d) / s)
    else:  # NUQSGD, the bound derived in shared/PAPERS.md
        s = 2 ** (bits - 1) - 2
        bound = 1 / 8 + min(d / 2 ** (2 * s + 2), math.sqrt(d) / 2**s)
    assert relative <= bound


def round_up_indicators(seed: int, n: int = 200_000) -> torch.Tensor:
    """Rounding decisions of values halfway between two levels: fair coin flips."""
    q = get_quantizer("qsgd_inf", bits=4, bucket_size=n)
    x = torch.full((n,), 3.5 / 7)
    x[0] = 1.0  # the scale; every other value sits halfway between levels 3 and 4
    codes = unpack(q.encode(x, gen(seed)).data, 4, n)[1:]
    assert set(codes.unique().tolist()) == {3, 4}
    return (codes == 4).double()


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return ((a * b).mean() / (a.std() * b.std())).item()


def test_rounding_is_fair_and_uncorrelated_within_and_across_streams() -> None:
    a, b, c = (round_up_indicators(seed) for seed in (0, 1, 2))
    n = a.numel()
    limit = 5 / math.sqrt(n)  # five standard errors of a correlation under independence
    assert abs(a.mean().item() - 0.5) <= 5 * 0.5 / math.sqrt(n)
    assert abs(correlation(a, b)) <= limit and abs(correlation(b, c)) <= limit
    for lag in (1, 2, 7, 8, 64, 512):
        assert abs(correlation(a[:-lag], a[lag:])) <= limit, lag


def test_uniforms_have_the_moments_of_u01_and_adjacent_keys_are_independent() -> None:
    n = 1 << 18
    keys = [kernels.draw_key(gen(seed)) for seed in (0, 1)]
    u, w = (cpu.uniforms(key, 0, n).double() for key in keys)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) <= 5 * math.sqrt(1 / 12 / n)
    assert abs(u.var().item() - 1 / 12) <= 5 * math.sqrt(1 / 180 / n)
    assert abs(correlation(u, w)) <= 5 / math.sqrt(n)
    # The stream is indexed by element: any window of it is the same numbers.
    assert torch.equal(cpu.uniforms(keys[0], 1000, 50), u[1000:1050].float())
    # Raw keys one apart (the counter's own step) still give unrelated streams.
    assert abs(correlation(u, cpu.uniforms(keys[0] + 1, 0, n).double())) <= 5 / math.sqrt(n)


def test_generator_state_fixes_the_payload_and_thread_count_does_not_matter() -> None:
    q = get_quantizer("nuqsgd", bits=4, bucket_size=512)
    x = torch.randn(1_000_003, generator=gen())  # enough tasks for every thread
    threads = torch.get_num_threads()
    a = q.encode(x, gen(5))
    try:
        torch.set_num_threads(1)
        b = q.encode(x, gen(5))
    finally:
        torch.set_num_threads(threads)
    c = q.encode(x, gen(6))
    assert torch.equal(a.data, b.data) and torch.equal(a.scales, b.scales)
    assert not torch.equal(a.data, c.data)


# --- edge cases ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*BUCKETED, *SHARED_SCALE])
@pytest.mark.parametrize("numel", [0, 1, 2, 7, 8, 9, 511, 513, 70_001])
def test_lengths_round_trip_with_the_wire_size(name: str, numel: int) -> None:
    config = {"bits": 4} if make(name).shared_scale else {"bits": 4, "bucket_size": 512}
    q = make(name, **config)
    x = torch.randn(numel, generator=gen(numel))
    payload = q.encode(x, gen())
    assert payload.nbytes == q.wire_nbytes(numel)
    y = q.decode(payload)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert torch.equal(y, q.decode_eager(payload))


@pytest.mark.parametrize(
    ("name", "size"),
    [(name, size) for name in BUCKETED for size in (512, 7, 40_000)]
    + [(name, 0) for name in SHARED_SCALE],
)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_buckets_match_the_eager_path(name: str, size: int, bad: float) -> None:
    config = {"bits": 4} if make(name).shared_scale else {"bits": 4, "bucket_size": size}
    q = make(name, **config)
    x = torch.randn(100_000, generator=gen())
    x[[3, 50_000, 99_999]] = bad
    fast, eager = q.decode(q.encode(x, gen())), q.decode_eager(q.encode_eager(x, gen()))
    assert torch.equal(torch.isfinite(fast), torch.isfinite(eager))
    assert not torch.isfinite(fast[[3, 50_000, 99_999]]).any()
    scales = q.encode(x, gen()).scales
    assert torch.equal(scales.isnan(), q.encode_eager(x, gen()).scales.isnan())


@pytest.mark.parametrize("name", [*BUCKETED, *SHARED_SCALE])
def test_zeros_decode_to_exact_zeros_and_huge_values_stay_finite(name: str) -> None:
    q = make(name)
    x = torch.randn(5000, generator=gen())
    x[1024:2048] = 0.0
    y = q.decode(q.encode(x, gen()))
    assert torch.equal(y[1024:2048], torch.zeros(1024))
    huge = torch.randn(4096, generator=gen()) * 1e30  # squares overflow float32
    fast, eager = q.encode(huge, gen()), q.encode_eager(huge, gen())
    assert torch.isfinite(q.decode(fast)).all()
    assert torch.equal(fast.scales, eager.scales)


@pytest.mark.parametrize("name", [*BUCKETED, *SHARED_SCALE])
def test_decode_into_out_writes_in_place(name: str) -> None:
    q = make(name, bits=4)
    x = torch.randn(4, 1000, generator=gen())
    payload = q.encode(x, gen())
    expected = q.decode(payload)
    for decode in (q.decode, q.decode_eager):
        out = torch.empty(4, 1000)
        assert decode(payload, out=out) is out and torch.equal(out, expected)
        half = torch.empty(4000, dtype=torch.float16)  # any dtype and shape of that size
        assert torch.equal(decode(payload, out=half), expected.reshape(-1).half())
        with pytest.raises(ValueError, match="elements"):
            decode(payload, out=torch.empty(3999))


def test_one_bucket_larger_than_the_tensor_costs_no_memory_for_empty_pieces() -> None:
    # The eager path would pad to the bucket size; the kernels only touch real elements.
    x = torch.randn(100_003, generator=gen())
    for name, norm in (("qsgd", x.double().norm()), ("qsgd_inf", x.abs().max())):
        payload = make(name, bits=4, bucket_size=10**12).encode(x, gen())
        assert payload.scales.tolist() == [pytest.approx(norm.item(), rel=1e-7)]
