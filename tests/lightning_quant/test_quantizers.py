import itertools
import math

import pytest
import torch

from lightning_quant.packing import unpack
from lightning_quant.quantizers import available_quantizers, get_quantizer
from lightning_quant.quantizers.bucketed import (
    BucketedQuantizer,
    exponential_levels,
    uniform_levels,
)
from lightning_quant.quantizers.dqsgd import DQSGDPolicy
from lightning_quant.quantizers.global_qsgd import max_world_size, worker_levels
from lightning_quant.quantizers.nuqsgd import DEFAULT_BASES, magnitudes
from tests.utils.schemes import (
    ALL,
    BUCKETED,
    FLOATS,
    QUANTIZERS,
    SHARED_SCALE,
    STOCHASTIC,
    make,
    with_widths,
)


def vectors(kind: str, d: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        return torch.randn(d, generator=gen)
    # heavy-tailed: Student's t with 2 degrees of freedom
    z = torch.randn(d, generator=gen)
    chi2 = torch.randn(d, 2, generator=gen).pow(2).sum(1)
    return z / (chi2 / 2).sqrt()


def draws(name: str, v: torch.Tensor, repeats: int, bits: int, bucket: int) -> torch.Tensor:
    """Decode `repeats` independent quantizations of v (v tiled, one bucket grid per copy)."""
    config = {"bits": bits} if make(name).shared_scale else {"bits": bits, "bucket_size": bucket}
    q = make(name, **config)
    gen = torch.Generator().manual_seed(1234)
    out = q.decode(q.encode(v.repeat(repeats), gen))
    return out.view(repeats, -1)


def test_every_registered_scheme_is_a_quantizer_or_a_float_cast() -> None:
    """Every list the tests draw from comes from the registry: a new scheme joins them."""
    assert QUANTIZERS == available_quantizers()
    assert set(QUANTIZERS) <= set(STOCHASTIC) | set(FLOATS)
    assert set(SHARED_SCALE) | set(BUCKETED) == set(STOCHASTIC)  # scaled one way or other


def test_unknown_scheme_lists_the_available_names() -> None:
    with pytest.raises(KeyError, match="available: .*qsgd"):
        get_quantizer("qsgd_typo")


@pytest.mark.parametrize(
    ("name", "config", "match"),
    [
        ("qsgd", {"bits": 0}, "bits must be an integer from 2 to 8"),
        ("qsgd", {"bits": 9}, "bits must be an integer from 2 to 8"),
        ("nuqsgd", {"bucket_size": 0}, "bucket_size must be a positive integer"),
        ("nuqsgd", {"levels": "authors"}, "levels must be one of"),
        ("nuqsgd", {"base": 1.0}, r"base must lie in \(0, 0.99\]"),
        ("qsgd", {"bitz": 4}, "has no setting bitz"),
        ("global_qsgd", {"bits": 3}, "one of"),
        ("dqsgd", {"min_bits": 6, "max_bits": 4}, "must not exceed"),
        ("dqsgd", {"target_error": 0}, "target_error"),
        ("fp32", {"bits": 4}, "has no setting bits"),
    ],
)
def test_bad_settings_say_what_is_allowed(name, config, match) -> None:
    with pytest.raises(ValueError, match=match):
        get_quantizer(name, **config)


def test_levels_per_width() -> None:
    assert [uniform_levels(b) for b in (2, 4, 8)] == [1, 7, 127]
    assert [exponential_levels(b) for b in (2, 4, 8)] == [0, 6, 126]


@pytest.mark.parametrize(("name", "bits"), with_widths(STOCHASTIC, (2, 3, 4, 8)))
@pytest.mark.parametrize("kind", ["gaussian", "heavy"])
def test_unbiased(name: str, kind: str, bits: int) -> None:
    v = vectors(kind, 256, seed=bits)
    samples = draws(name, v, repeats=2000, bits=bits, bucket=64).double()
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])
    err = (mean - v.double()).abs()
    varied = se > 0  # wherever the draws varied at all
    z = err[varied] / se[varied]
    # Jointly: the squared z-scores add up to a chi-square with one degree of freedom per
    # coordinate (about 256: 1.5x its mean is over 5 standard deviations away). Weighing
    # each coordinate by its own spread keeps a few wide ones from dominating.
    assert (z**2).mean() <= 1.5
    # Coordinate by coordinate.
    assert torch.all(z <= 6), f"max z = {z.max():.2f}"


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("kind", ["gaussian", "heavy"])
def test_qsgd_variance_within_bound(bits: int, kind: str) -> None:
    d = 128
    v = vectors(kind, d, seed=3)
    samples = draws("qsgd", v, repeats=1000, bits=bits, bucket=d)
    variance = (samples - v).pow(2).sum(1).mean().item()
    s = uniform_levels(bits)
    bound = min(d / s**2, math.sqrt(d) / s) * v.pow(2).sum().item()
    assert variance <= bound


def measured_variance(name: str, bits: int, v: torch.Tensor, bucket: int = 512) -> float:
    samples = draws(name, v, repeats=200, bits=bits, bucket=bucket)
    return (samples - v).pow(2).sum(1).mean().item() / v.pow(2).sum().item()


@pytest.mark.parametrize("kind", ["gaussian", "heavy"])
def test_nuqsgd_default_variance_is_at_most_qsgds_at_every_width(kind: str) -> None:
    v = vectors(kind, 2048, seed=6)
    for bits in range(2, 9):
        qsgd, nuqsgd = (measured_variance(name, bits, v) for name in ("qsgd", "nuqsgd"))
        # At 2 bits both level sets are {0, 1}: equal up to sampling noise.
        assert nuqsgd <= qsgd * (1.05 if bits == 2 else 0.9), (bits, nuqsgd, qsgd)


def test_nuqsgd_layouts() -> None:
    assert magnitudes(4, 0.5).tolist() == [0.0, 2**-6, 2**-5, 2**-4, 2**-3, 2**-2, 0.5, 1.0]
    assert magnitudes(3, 0.1, "reference").tolist() == pytest.approx([1e-3, 1e-2, 0.1, 1.0])
    # Base 1/2 in the paper's layout is computed by the kernels, any other base is a table.
    assert get_quantizer("nuqsgd", bits=4).table(4) is None
    assert torch.equal(get_quantizer("nuqsgd", bits=8).table(8), magnitudes(8, 0.95))
    reference = get_quantizer("nuqsgd", bits=2, levels="reference")
    assert reference.table(2).tolist() == pytest.approx([0.1, 1.0])
    assert DEFAULT_BASES["reference"][8] == 0.95  # the authors' choice at 8 bits


def test_nuqsgd_reference_layout_has_no_zero_level() -> None:
    # A bucket of one large and many tiny values: the tiny ones round to +-a, never to 0.
    x = torch.full((512,), 1e-6)
    x[0] = 1.0
    q = get_quantizer("nuqsgd", bits=2, levels="reference")
    y = q.decode(q.encode(x.repeat(200), torch.Generator().manual_seed(0))).view(200, -1)
    a = 0.1 * x.norm().item()
    assert torch.allclose(y[:, 1:].abs(), torch.full_like(y[:, 1:], a))
    assert abs(y[:, 1:].mean().item() - 1e-6) < 5 * a / math.sqrt(y[:, 1:].numel())


def test_nuqsgd_and_qsgd_inf_beat_qsgd_at_4_bits() -> None:
    v = vectors("gaussian", 4096, seed=5)
    qsgd = measured_variance("qsgd", 4, v)
    assert measured_variance("nuqsgd", 4, v) < qsgd
    assert measured_variance("qsgd_inf", 4, v) < qsgd


@pytest.mark.parametrize(("name", "bits"), with_widths(BUCKETED, (2, 3, 4, 5, 8)))
@pytest.mark.parametrize("numel", [0, 1, 7, 511, 512, 513, 1025, 3001])
def test_wire_size_formula_bucketed(name: str, numel: int, bits: int) -> None:
    q = make(name, bits=bits, bucket_size=512)
    payload = q.encode(torch.randn(numel))
    expected = math.ceil(numel * bits / 8) + 4 * math.ceil(numel / 512)
    assert payload.nbytes == q.wire_nbytes(numel) == expected
    assert payload.to_wire().numel() == expected


@pytest.mark.parametrize(("name", "bits"), with_widths(SHARED_SCALE, (2, 3, 4, 8)))
@pytest.mark.parametrize("numel", [0, 1, 7, 513, 3001])
def test_wire_size_formula_shared_scale(name: str, numel: int, bits: int) -> None:
    q = make(name, bits=bits)
    payload = q.encode(torch.randn(numel))
    assert payload.nbytes == q.wire_nbytes(numel) == math.ceil(numel * bits / 8) + 4


@pytest.mark.parametrize("name", STOCHASTIC)
def test_own_scale_is_max_abs_for_schemes_that_share_one(name: str) -> None:
    q = make(name)
    x = torch.tensor([0.5, -3.0, 2.0])
    if not q.shared_scale:
        assert q.own_scale(x) is None
        return
    assert torch.equal(q.own_scale(x), torch.tensor([3.0]))
    assert torch.equal(q.own_scale(x[:0]), torch.tensor([0.0]))
    assert torch.equal(q.own_scale(torch.tensor([1.0, float("nan")])), torch.tensor([math.inf]))


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("numel", [0, 1, 513])
def test_wire_size_floats(name: str, numel: int) -> None:
    q = make(name)
    itemsize = q.bits // 8
    assert q.encode(torch.randn(numel)).nbytes == q.wire_nbytes(numel) == numel * itemsize


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(), (0,), (1,), (3, 5), (2, 3, 257), (1000,)])
def test_every_dtype_and_shape_round_trips(name: str, dtype, shape) -> None:
    x = torch.randn(shape).to(dtype)
    q = make(name)
    payload = q.encode(x, torch.Generator().manual_seed(0))
    y = q.decode(payload)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    if x.numel():
        assert (y.float() - x.float()).abs().max() <= 2 * x.float().abs().max() * (
            1 if q.lossy else 0.01
        )


@pytest.mark.parametrize("name", ALL)
def test_payload_survives_the_wire(name: str) -> None:
    q = make(name)
    x = torch.randn(1500)
    payload = q.encode(x, torch.Generator().manual_seed(0))
    received = payload.read_wire(payload.to_wire().clone())
    assert torch.equal(q.decode(received), q.decode(payload))


@pytest.mark.parametrize("name", ALL)
def test_all_zero_buckets_decode_to_exact_zeros(name: str) -> None:
    q = make(name)
    y = q.decode(q.encode(torch.zeros(1030)))
    assert torch.equal(y, torch.zeros(1030))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_is_never_made_finite(name: str, bad: float) -> None:
    x = torch.randn(2048)
    x[700] = bad
    q = make(name)
    y = q.decode(q.encode(x, torch.Generator().manual_seed(0)))
    assert not torch.isfinite(y[700])
    if isinstance(make(name), BucketedQuantizer):  # only the bucket holding it is touched
        assert torch.isfinite(y[:512]).all() and torch.isfinite(y[1024:]).all()


def test_non_floating_input_is_refused() -> None:
    for name in ALL:
        with pytest.raises(TypeError, match="floating-point"):
            make(name).encode(torch.arange(10))


def test_generator_makes_encoding_reproducible() -> None:
    q = get_quantizer("qsgd")
    x = torch.randn(5000)
    a = q.encode(x, torch.Generator().manual_seed(7))
    b = q.encode(x, torch.Generator().manual_seed(7))
    c = q.encode(x, torch.Generator().manual_seed(8))
    assert torch.equal(a.data, b.data) and not torch.equal(a.data, c.data)


# --- Global-QSGD -------------------------------------------------------------------------


def lane_sum(payloads) -> torch.Tensor:
    """Add uint8 buffers with wraparound, as a SUM allreduce over uint8 does."""
    total = torch.zeros_like(payloads[0].data)
    for p in payloads:
        total += p.data
    return total


@pytest.mark.parametrize("bits", [4, 8])
def test_global_qsgd_never_overflows_at_the_extremes(bits: int) -> None:
    q = get_quantizer("global_qsgd", bits=bits)
    scale = 3.0
    for n in range(1, max_world_size(bits) + 1):
        for sign in (1.0, -1.0):
            x = torch.full((37,), sign * scale)
            payloads = [q.encode_summable(x, None, world_size=n, scale=scale) for _ in range(n)]
            mean = q.decode(q.summed(payloads[0], lane_sum(payloads), n))
            assert torch.allclose(mean, x), (n, sign)


@pytest.mark.parametrize("eager", [False, True])
def test_global_qsgd_lanes_stay_in_range_for_noise_near_one(eager: bool) -> None:
    # In float32 -63 + u rounds to -62 for u within 2**-19 of 1: a few of 4M draws.
    q = get_quantizer("global_qsgd", bits=8)
    for sign in (1.0, -1.0):
        x = torch.full((1 << 22,), sign)
        encode = q.encode_eager if eager else q.encode_summable
        payload = encode(x, torch.Generator().manual_seed(0), world_size=2, scale=1.0)
        lanes = unpack(payload.data, 8, x.numel())
        assert torch.all(lanes == (126 if sign > 0 else 0))


def test_global_qsgd_refuses_a_world_size_it_cannot_hold() -> None:
    q = get_quantizer("global_qsgd", bits=4)
    assert max_world_size(4) == 7 and max_world_size(8) == 127
    with pytest.raises(ValueError, match="at most 7 workers"):
        q.encode_summable(torch.randn(10), None, world_size=8)
    assert worker_levels(8, 2) == 63 and worker_levels(8, 127) == 1


@pytest.mark.parametrize(("bits", "n"), [(8, 2), (8, 3), (4, 3), (8, 16)])
def test_global_qsgd_sum_is_an_unbiased_mean(bits: int, n: int) -> None:
    q = get_quantizer("global_qsgd", bits=bits)
    gen = torch.Generator().manual_seed(n)
    workers = [vectors("heavy", 64, seed=10 + i) for i in range(n)]
    scale = max(w.abs().max() for w in workers)
    repeats = 2000
    payloads = [
        q.encode_summable(w.repeat(repeats), gen, world_size=n, scale=scale) for w in workers
    ]
    mean = q.decode(q.summed(payloads[0], lane_sum(payloads), n)).view(repeats, -1).double()
    target = torch.stack(workers).mean(0).double()
    se = mean.std(0) / math.sqrt(repeats)
    assert torch.all((mean.mean(0) - target).abs() <= 5 * se + 1e-6)


# --- Global-QSGD with exponential dithering ----------------------------------------------


@pytest.mark.parametrize(("bits", "exponents"), [(2, 1), (3, 3), (4, 7), (8, 127)])
def test_global_qsgd_exp_codes_are_zero_or_signed_powers_of_two(bits: int, exponents: int):
    q = get_quantizer("global_qsgd_exp", bits=bits)
    assert q.exponents == exponents
    x = vectors("heavy", 4096, seed=bits)
    scale = 2 * x.abs().max()
    y = q.decode(q.encode(x, torch.Generator().manual_seed(0), scale=scale)) / scale
    powers = torch.tensor([0.0] + [2.0**-j for j in range(exponents)])
    assert torch.isin(y.abs(), powers).all()
    assert torch.equal(torch.sign(y)[y != 0], torch.sign(x)[y != 0])


@pytest.mark.parametrize("kind", ["gaussian", "heavy"])
def test_global_qsgd_exp_variance_beside_linear_dithering(kind: str) -> None:
    # Exponential levels bound the error relative to each value (1/8 of ||v||^2 between
    # powers of two, plus what rounds below 2**-s of the scale); linear levels bound it
    # relative to the scale. So exponential wins on heavy tails at few bits, and linear
    # at 8 bits, where 127 even steps beat powers of two.
    v = vectors(kind, 2048, seed=6)
    scale = v.abs().max()
    measured = {}
    for name, bits in itertools.product(SHARED_SCALE, (4, 8)):
        q = get_quantizer(name, bits=bits)
        samples = q.decode(q.encode(v.repeat(200), torch.Generator().manual_seed(1), scale=scale))
        error = (samples.view(200, -1) - v).pow(2).sum(1).mean() / v.pow(2).sum()
        measured[name, bits] = error.item()
    for bits in (4, 8):
        s = 2 ** (bits - 1) - 2
        tail = 2.0**-s * (scale * v.abs().sum() / v.pow(2).sum()).item()
        assert measured["global_qsgd_exp", bits] <= 1 / 8 + tail
        linear = v.numel() * (scale / (2 ** (bits - 1) - 1)).item() ** 2 / 4
        assert measured["global_qsgd", bits] <= linear / v.pow(2).sum().item()
    assert measured["global_qsgd", 8] < measured["global_qsgd_exp", 8]
    if kind == "heavy":
        assert measured["global_qsgd_exp", 4] < measured["global_qsgd", 4] / 3


# --- DQ-SGD ------------------------------------------------------------------------------


def test_dqsgd_bits_grow_with_gradient_norm_and_step() -> None:
    q = get_quantizer("dqsgd", total_steps=100, target_error=10.0, lr=0.1, mu=0.5)
    policy = q.make_policy()
    by_norm = [policy.bits_for(norm, step=50) for norm in (0.001, 0.1, 1.0, 10.0, 1000.0)]
    assert by_norm == sorted(by_norm) and by_norm[0] == 2 and by_norm[-1] == 8
    by_step = [policy.bits_for(1.0, step) for step in (0, 25, 50, 75, 99)]
    assert by_step == sorted(by_step) and by_step[0] < by_step[-1]


def test_dqsgd_rule_matches_its_closed_form() -> None:
    c = get_quantizer("dqsgd", bucket_size=256, total_steps=40, target_error=2.0, lr=0.05, mu=1.0)
    norm, step = 0.3, 10
    # kappa: one worker; the mean of n = 4 (variance / n); and two stages (1 + 1/n)
    for (workers, two_stage), kappa in {(1, False): 1, (4, False): 0.25, (4, True): 1.25}.items():
        policy = c.make_policy(workers=workers, two_stage=two_stage)
        s = norm * math.sqrt(kappa * 40 * 256 * (1 - 0.05) ** (40 - 1 - step) / (4 * 2.0))
        assert policy.levels_for(norm, step) == pytest.approx(s)
        assert policy.bits_for(norm, step) == min(8, max(2, 1 + math.ceil(math.log2(s + 1))))


def test_dqsgd_policy_state_round_trips() -> None:
    q = get_quantizer("dqsgd", total_steps=10)
    a = q.make_policy()
    for norm in (0.5, 5.0, 50.0):
        a.choose(norm)
    b = DQSGDPolicy(q.config)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    assert b.choose(3.0) == a.choose(3.0)


def test_dqsgd_encodes_at_the_chosen_width() -> None:
    q = get_quantizer("dqsgd", bucket_size=512)
    x = torch.randn(1024)
    for bits in (2, 5, 8):
        payload = q.encode(x, bits=bits)
        assert payload.bits == bits and payload.nbytes == q.wire_nbytes(1024, bits=bits)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ALL)
def test_codecs_on_cuda(name: str) -> None:
    q = make(name)
    x = torch.randn(100_003, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    payload = q.encode(x, gen)
    assert payload.data.is_cuda and payload.nbytes == q.wire_nbytes(x.numel())
    y = q.decode(payload)
    assert y.is_cuda and y.shape == x.shape
    assert (y - x).norm() <= 2 * x.norm()


@pytest.mark.parametrize("name", ALL)
def test_decode_into_a_given_tensor(name: str) -> None:
    q = make(name)
    payload = q.encode(torch.randn(1500), torch.Generator().manual_seed(0))
    out = torch.empty(1500)
    assert q.decode(payload, out=out) is out
    assert torch.equal(out, q.decode(payload))
