"""The Triton kernels against the eager path and the CPU kernels.

On a GPU they run compiled, on CUDA tensors. Where there is none (CI), ``tests/conftest.py``
sets ``TRITON_INTERPRET=1`` before anything imports Triton, and the interpreter runs the
very kernels the CUDA path launches, program by program, in NumPy, on CPU tensors: the
layout, the noise, the rounding and the packing are checked there too. Speed is measured
by ``benchmarks/gpu_check.py``.
"""

import math
import os

import pytest
import torch

import lightning_quant.quantizers.kernels as kernels
from lightning_quant.packing import unpack
from lightning_quant.quantizers import Payload
from lightning_quant.quantizers.global_qsgd import worker_levels
from tests.utils.schemes import BUCKETED, make

pytest.importorskip("triton", reason="triton is not installed (it comes with CUDA torch)")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU, and Triton's interpreter is off", allow_module_level=True)

from lightning_quant.quantizers.kernels import gpu, levels  # noqa: E402 - after the skip


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator(DEVICE).manual_seed(seed)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE)


def encode(q, x: torch.Tensor, seed: int = 0, bits: int | None = None) -> Payload:
    """What ``BucketedQuantizer.encode`` does on a CUDA tensor, through the interpreter."""
    bits = bits or q.config.bits
    data, scales = gpu.encode_buckets(
        x, bits=bits, bucket_size=q.config.bucket_size, levels=q.levels(bits),
        exponential=q.exponential, inf_norm=q.norm == "inf", generator=gen(seed),
        table=q.table(bits),
    )  # fmt: skip
    return q._payload(x, data, scales, bits)


def decode(q, payload: Payload, out: torch.Tensor | None = None) -> torch.Tensor:
    return gpu.decode_buckets(
        payload.data, payload.scales, bits=payload.bits, bucket_size=q.config.bucket_size,
        levels=payload.levels, exponential=q.exponential, numel=payload.numel, out=out,
        table=q.table(payload.bits),
    )  # fmt: skip


@pytest.mark.parametrize("name", BUCKETED)
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("numel", [1, 9, 1003])
def test_the_layout_is_the_eager_paths(name: str, bits: int, numel: int) -> None:
    q = make(name, bits=bits, bucket_size=100)
    x = randn(numel, seed=bits) * 3
    fast, eager = encode(q, x), q.encode_eager(x, gen(), bits=bits)
    assert torch.equal(fast.scales, eager.scales)
    assert fast.data.shape == eager.data.shape and fast.nbytes == q.wire_nbytes(numel, bits)
    mask = (1 << (bits - 1)) - 1
    a, b = (unpack(p.data, bits, numel).long() for p in (fast, eager))
    assert ((a & mask) - (b & mask)).abs().max() <= 1  # a neighbouring level of the same
    # either payload decodes to the same values on either path
    for payload in (fast, eager):
        assert torch.equal(decode(q, payload), q.decode_eager(payload).reshape(-1))


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_values_on_levels_give_the_eager_payload_exactly(bits: int) -> None:
    # every value on a level: no rounding, so the noise does not matter. NUQSGD's base-1/2
    # levels hold 1 and 1/2 (from 3 bits); QSGD's odd s only 0 and 1.
    halves = torch.tensor([1.0] * 3 + [0.5] * 4 + [0.0] * 9, device=DEVICE)
    single = torch.tensor([0.0] * 5 + [3.0] + [0.0] * 10, device=DEVICE)
    signs = torch.where(randn(32 * 8) < 0, -1.0, 1.0)
    on_halves = torch.cat([halves, single] if bits > 2 else [single, single]).repeat(8) * signs
    on_ends = single.repeat(16) * signs
    for name, config, x in (("nuqsgd", {"base": 0.5}, on_halves), ("qsgd_inf", {}, on_ends)):
        q = make(name, bits=bits, bucket_size=16, **config)
        fast, eager = encode(q, x), q.encode_eager(x, gen(), bits=bits)
        assert torch.equal(fast.data, eager.data) and torch.equal(fast.scales, eager.scales)


@pytest.mark.parametrize("name", ["qsgd", "nuqsgd", "nuqsgd_reference"])
def test_the_rounding_is_unbiased(name: str) -> None:
    q = make(name, bits=3, bucket_size=50)
    v = randn(200, seed=1) * randn(200, seed=2).abs() * 3
    repeats = 1000
    samples = decode(q, encode(q, v.repeat(repeats))).view(repeats, -1).double()
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(repeats)
    varied = se > 0
    z = (mean - v.double()).abs()[varied] / se[varied]
    assert (z**2).mean() <= 1.5


def test_non_finite_values_stay_non_finite_and_only_in_their_bucket() -> None:
    q = make("qsgd", bits=4, bucket_size=100)
    x = randn(1000)
    x[150] = float("nan")
    y = decode(q, encode(q, x))
    assert torch.isnan(y[100:200]).all()
    assert torch.isfinite(y[:100]).all() and torch.isfinite(y[200:]).all()


def test_half_precision_input_is_read_as_it_is() -> None:
    q = make("qsgd", bits=4, bucket_size=64)
    x = randn(640).half()
    fast, eager = encode(q, x), q.encode_eager(x, gen())
    assert torch.equal(fast.scales, eager.scales)  # no float32 copy needed first


def test_decode_writes_into_the_given_tensor() -> None:
    q = make("nuqsgd", bits=4, bucket_size=100)
    payload = encode(q, randn(500))
    out = torch.empty(500, device=DEVICE)
    assert decode(q, payload, out) is not None
    assert torch.equal(out, q.decode_eager(payload))
    with pytest.raises(ValueError, match="contiguous float32"):
        decode(q, payload, torch.empty(500, dtype=torch.float64, device=DEVICE))


@pytest.mark.parametrize("bits", [4, 8])
def test_global_qsgd_lanes_are_the_eager_ones_and_sum(bits: int) -> None:
    q = make("global_qsgd", bits=bits)
    n = 3
    workers = [randn(1001, seed=i) for i in range(n)]
    scale = torch.stack([w.abs().max() for w in workers]).max().reshape(1)
    inverse = scale.reciprocal()
    s = worker_levels(bits, n)
    lanes = [
        gpu.encode_shared(w, bits=bits, levels=s, inverse=inverse, generator=gen(i))
        for i, w in enumerate(workers)
    ]
    eager = [q.encode_eager(w, gen(i), scale=scale, world_size=n) for i, w in enumerate(workers)]
    for fast, reference in zip(lanes, eager, strict=True):
        a, b = unpack(fast, bits, 1001).long(), unpack(reference.data, bits, 1001).long()
        assert (a - b).abs().max() <= 1
    total = lanes[0].clone()
    for data in lanes[1:]:
        total += data  # the uint8 SUM all-reduce: lanes add without carries
    summed = q.summed(eager[0], total, n)
    step = summed.scales / (summed.levels * n)
    mean = gpu.decode_shared(total, bits=bits, numel=1001, offset=n * s, step=step)
    assert torch.equal(mean, q.decode_eager(summed))


def test_global_qsgd_exp_codes_are_the_eager_ones() -> None:
    q = make("global_qsgd_exp", bits=8)
    x = randn(3001) ** 3
    scale = x.abs().max().reshape(1)
    data = gpu.encode_shared(
        x, bits=8, levels=126, inverse=scale.reciprocal(), generator=gen(), exponential=True
    )
    eager = q.encode_eager(x, gen(), scale=scale)
    a, b = unpack(data, 8, 3001).long(), unpack(eager.data, 8, 3001).long()
    assert ((a & 127) - (b & 127)).abs().max() <= 1
    values = gpu.decode_buckets(
        data, scale, bits=8, bucket_size=3001, levels=126, exponential=True, numel=3001
    )
    assert torch.equal(values, q.decode_eager(q._payload(x, data, scale, 126)))


def test_a_generator_gives_a_reproducible_key() -> None:
    assert gpu.generator_key(gen(5), DEVICE) == gpu.generator_key(gen(5), DEVICE)
    assert gpu.generator_key(gen(5), DEVICE) != gpu.generator_key(gen(6), DEVICE)
    first = gen(5)
    assert gpu.generator_key(first, DEVICE) != gpu.generator_key(first, DEVICE)  # it moves on


@pytest.mark.skipif(not kernels.available(), reason="the CPU kernels need numba")
@pytest.mark.parametrize(("name", "bits"), [("qsgd", 4), ("nuqsgd", 3), ("nuqsgd_reference", 8)])
def test_the_same_key_gives_the_cpu_kernels_payload_to_the_bit(name: str, bits: int) -> None:
    q = make(name, bits=bits, bucket_size=100)
    x = randn(1003, seed=7)
    cpu_data, cpu_scales = kernels.backend("cpu").encode_buckets(
        x.cpu(), bits=bits, bucket_size=100, levels=q.levels(bits), exponential=q.exponential,
        inf_norm=q.norm == "inf", generator=torch.Generator().manual_seed(3), table=q.table(bits),
    )  # fmt: skip
    key = kernels.draw_key(torch.Generator().manual_seed(3))
    data = gpu.encode(
        x, gpu._inverse(cpu_scales.to(DEVICE)), bits=bits, bucket_size=100,
        levels=q.levels(bits), mode=levels.mode_of(q.exponential, q.table(bits)), key=key,
        table=q.table(bits),
    )  # fmt: skip
    assert torch.equal(data.cpu(), cpu_data)
