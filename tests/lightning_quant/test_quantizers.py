import math

import pytest
import torch

from lightning_quant.quantizers import available_quantizers, get_quantizer
from lightning_quant.quantizers.bucketed import exponential_levels, uniform_levels
from lightning_quant.quantizers.dqsgd import DQSGDPolicy
from lightning_quant.quantizers.global_qsgd import max_world_size, worker_levels

STOCHASTIC = ["qsgd", "qsgd_inf", "nuqsgd", "dqsgd", "global_qsgd"]
BUCKETED = ["qsgd", "qsgd_inf", "nuqsgd", "dqsgd"]
FLOATS = {"fp32": 4, "fp16": 2, "bf16": 2}


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
    config = {"bits": bits} if name == "global_qsgd" else {"bits": bits, "bucket_size": bucket}
    q = get_quantizer(name, **config)
    gen = torch.Generator().manual_seed(1234)
    out = q.decode(q.encode(v.repeat(repeats), gen))
    return out.view(repeats, -1)


def test_registry_lists_every_scheme() -> None:
    assert set(available_quantizers()) >= set(STOCHASTIC) | set(FLOATS)


def test_unknown_scheme_lists_the_available_names() -> None:
    with pytest.raises(KeyError, match="available: .*qsgd"):
        get_quantizer("qsgd_typo")


@pytest.mark.parametrize(
    ("name", "config", "match"),
    [
        ("qsgd", {"bits": 0}, "bits must be an integer from 2 to 8"),
        ("qsgd", {"bits": 9}, "bits must be an integer from 2 to 8"),
        ("nuqsgd", {"bucket_size": 0}, "bucket_size must be a positive integer"),
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


@pytest.mark.parametrize("name", STOCHASTIC)
@pytest.mark.parametrize("kind", ["gaussian", "heavy"])
@pytest.mark.parametrize("bits", [2, 4])
def test_unbiased(name: str, kind: str, bits: int) -> None:
    v = vectors(kind, 256, seed=bits)
    samples = draws(name, v, repeats=2000, bits=bits, bucket=64).double()
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])
    err = (mean - v.double()).abs()
    # Jointly: squared errors add up to what the sampling variance predicts (chi-square,
    # 256 degrees of freedom: 1.5x its mean is over 5 standard deviations away).
    assert (err**2).sum() <= 1.5 * (se**2).sum()
    # Coordinate by coordinate, wherever the draws varied at all.
    varied = se > 0
    z = err[varied] / se[varied]
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


def test_nuqsgd_and_qsgd_inf_beat_qsgd_at_4_bits() -> None:
    v = vectors("gaussian", 4096, seed=5)
    qsgd = measured_variance("qsgd", 4, v)
    assert measured_variance("nuqsgd", 4, v) < qsgd
    assert measured_variance("qsgd_inf", 4, v) < qsgd


@pytest.mark.parametrize("name", BUCKETED)
@pytest.mark.parametrize("numel", [0, 1, 7, 511, 512, 513, 1025, 3001])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_wire_size_formula_bucketed(name: str, numel: int, bits: int) -> None:
    q = get_quantizer(name, bits=bits, bucket_size=512)
    payload = q.encode(torch.randn(numel))
    expected = math.ceil(numel * bits / 8) + 4 * math.ceil(numel / 512)
    assert payload.nbytes == q.wire_nbytes(numel) == expected
    assert payload.to_wire().numel() == expected


@pytest.mark.parametrize("numel", [0, 1, 7, 513, 3001])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_wire_size_formula_global(numel: int, bits: int) -> None:
    q = get_quantizer("global_qsgd", bits=bits)
    payload = q.encode(torch.randn(numel))
    assert payload.nbytes == q.wire_nbytes(numel) == math.ceil(numel * bits / 8) + 4


@pytest.mark.parametrize(("name", "itemsize"), FLOATS.items())
@pytest.mark.parametrize("numel", [0, 1, 513])
def test_wire_size_floats(name: str, itemsize: int, numel: int) -> None:
    q = get_quantizer(name)
    assert q.encode(torch.randn(numel)).nbytes == q.wire_nbytes(numel) == numel * itemsize


@pytest.mark.parametrize("name", available_quantizers())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(), (0,), (1,), (3, 5), (2, 3, 257), (1000,)])
def test_every_dtype_and_shape_round_trips(name: str, dtype, shape) -> None:
    x = torch.randn(shape).to(dtype)
    q = get_quantizer(name)
    payload = q.encode(x, torch.Generator().manual_seed(0))
    y = q.decode(payload)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    if x.numel():
        assert (y.float() - x.float()).abs().max() <= 2 * x.float().abs().max() * (
            1 if name in STOCHASTIC else 0.01
        )


@pytest.mark.parametrize("name", available_quantizers())
def test_payload_survives_the_wire(name: str) -> None:
    q = get_quantizer(name)
    x = torch.randn(1500)
    payload = q.encode(x, torch.Generator().manual_seed(0))
    received = payload.read_wire(payload.to_wire().clone())
    assert torch.equal(q.decode(received), q.decode(payload))


@pytest.mark.parametrize("name", available_quantizers())
def test_all_zero_buckets_decode_to_exact_zeros(name: str) -> None:
    q = get_quantizer(name)
    y = q.decode(q.encode(torch.zeros(1030)))
    assert torch.equal(y, torch.zeros(1030))


@pytest.mark.parametrize("name", available_quantizers())
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_is_never_made_finite(name: str, bad: float) -> None:
    x = torch.randn(2048)
    x[700] = bad
    q = get_quantizer(name)
    y = q.decode(q.encode(x, torch.Generator().manual_seed(0)))
    assert not torch.isfinite(y[700])
    if name in BUCKETED:  # only the bucket holding it is touched
        assert torch.isfinite(y[:512]).all() and torch.isfinite(y[1024:]).all()


def test_non_floating_input_is_refused() -> None:
    for name in available_quantizers():
        with pytest.raises(TypeError, match="floating-point"):
            get_quantizer(name).encode(torch.arange(10))


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
    policy = c.make_policy()
    norm, step = 0.3, 10
    s = norm * math.sqrt(40 * 256 * (1 - 0.05) ** (40 - 1 - step) / (4 * 2.0))
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
@pytest.mark.parametrize("name", available_quantizers())
def test_codecs_on_cuda(name: str) -> None:
    q = get_quantizer(name)
    x = torch.randn(100_003, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    payload = q.encode(x, gen)
    assert payload.data.is_cuda and payload.nbytes == q.wire_nbytes(x.numel())
    y = q.decode(payload)
    assert y.is_cuda and y.shape == x.shape
    assert (y - x).norm() <= 2 * x.norm()


@pytest.mark.parametrize("name", available_quantizers())
def test_decode_into_a_given_tensor(name: str) -> None:
    q = get_quantizer(name)
    payload = q.encode(torch.randn(1500), torch.Generator().manual_seed(0))
    out = torch.empty(1500)
    assert q.decode(payload, out=out) is out
    assert torch.equal(out, q.decode(payload))
