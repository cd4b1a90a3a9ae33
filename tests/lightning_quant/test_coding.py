"""Entropy coding on the wire: lossless, near the codes' entropy, robust, and the same
training as packed codes on many ranks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_quant import QuantizedDDPStrategy
from lightning_quant.collectives import Collective
from lightning_quant.hooks import make_comm_hook
from lightning_quant.packing import unpack
from lightning_quant.quantizers import kernels
from lightning_quant.quantizers.kernels import coded
from tests.utils.ranks import run_ranks
from tests.utils.schemes import STOCHASTIC, make, registry_name, with_widths

pytestmark = pytest.mark.skipif(not kernels.available(), reason="the coder needs Numba")

WORKERS = "tests.lightning_quant.ddp_workers"
WIDTHS = tuple(range(2, 9))


def _gaussian(numel: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(numel, generator=torch.Generator().manual_seed(seed))


def _encode(q, x: torch.Tensor, seed: int = 1):
    scale = x.abs().amax().reshape(1) if q.shared_scale else None
    return q.encode(x, torch.Generator().manual_seed(seed), scale=scale)


def _pair(scheme: str, bits: int, x: torch.Tensor, **config):
    """The same draw of ``x``'s codes, packed and entropy-coded."""
    packed = _encode(make(scheme, bits=bits, **config), x)
    entropy = make(scheme, bits=bits, coding="entropy", **config)
    return packed, entropy, _encode(entropy, x)


@pytest.mark.parametrize(("scheme", "bits"), with_widths(STOCHASTIC, WIDTHS))
def test_coded_payloads_decode_to_the_packed_values(scheme: str, bits: int) -> None:
    x = _gaussian(70_001) * torch.linspace(0.01, 3.0, 70_001)  # uneven buckets, last short
    packed, q, payload = _pair(scheme, bits, x)
    assert payload.coding == "entropy" and payload.sealed
    expected = make(scheme, bits=bits).decode(packed)
    assert torch.equal(q.decode(payload), expected)
    wire = torch.cat([payload.to_wire(), torch.full((37,), 0xA5, dtype=torch.uint8)])
    assert torch.equal(q.decode(payload.read_wire(wire)), expected)  # padding is ignored
    assert payload.nbytes <= 1.005 * packed.nbytes  # never worse than packed, headers in


@pytest.mark.parametrize(("bucket_size", "numel"), [(1000, 600_001), (2**19, 600_001)])
def test_payloads_of_several_tasks(bucket_size: int, numel: int) -> None:
    # tasks of whole buckets (262 of 1000), or one bucket larger than a task
    packed, q, payload = _pair("qsgd", 4, _gaussian(numel, 3), bucket_size=bucket_size)
    assert torch.equal(
        q.decode(payload), make("qsgd", bits=4, bucket_size=bucket_size).decode(packed)
    )


def _entropy_bits(codes: np.ndarray) -> float:
    counts = np.bincount(codes, minlength=256)
    p = counts[counts > 0] / codes.size
    return float(-(p * np.log2(p)).sum()) * codes.size


@pytest.mark.parametrize(("scheme", "bits"), with_widths(STOCHASTIC, WIDTHS))
def test_coded_size_is_within_3_percent_of_the_entropy(scheme: str, bits: int) -> None:
    numel = 131_072  # one task: one table
    packed, _, payload = _pair(scheme, bits, _gaussian(numel, 5))
    codes = unpack(packed.data, bits, numel).numpy().astype(np.int64)
    overhead = payload.scales.numel() * 4 + coded.PREFIX + 12 + 2 * (1 << bits)
    bound = _entropy_bits(codes) / 8 + overhead  # the order-0 entropy of the packed codes
    assert payload.nbytes <= 1.03 * bound


def test_four_bit_qsgd_sends_about_one_bit_a_coordinate() -> None:
    numel = 1 << 20
    _, _, payload = _pair("qsgd", 4, _gaussian(numel, 7))
    bits_per_coordinate = 8 * payload.nbytes / numel  # scales and headers included
    assert bits_per_coordinate < 1.3  # 4.06 packed; about 1.12 measured


def test_codes_that_do_not_compress_go_packed_with_a_flag() -> None:
    x = torch.rand(50_000, generator=torch.Generator().manual_seed(2)) * 2 - 1
    packed, q, payload = _pair("qsgd_inf", 8, x)  # near-uniform levels: ~8 bits of entropy
    assert payload.data[0] == coded.PACKED
    assert payload.nbytes == packed.nbytes + coded.PREFIX <= 1.005 * packed.nbytes
    assert torch.equal(q.decode(payload), make("qsgd_inf", bits=8).decode(packed))


def test_small_payloads_go_packed_without_a_header() -> None:
    packed, q, payload = _pair("qsgd", 4, _gaussian(1000))
    assert not payload.sealed and payload.nbytes == packed.nbytes
    assert torch.equal(q.decode(payload), make("qsgd", bits=4).decode(packed))


def test_nan_and_inf_decode_as_on_the_packed_path() -> None:
    x = _gaussian(20_000)
    x[100], x[3000], x[9000] = float("nan"), float("inf"), -float("inf")
    for scheme in STOCHASTIC:
        packed, q, payload = _pair(scheme, 4, x)
        expected = make(scheme, bits=4).decode(packed)
        torch.testing.assert_close(q.decode(payload), expected, rtol=0, atol=0, equal_nan=True)


# --- corrupted payloads --------------------------------------------------------------------

_SEALED = _pair("qsgd", 4, _gaussian(5000, 11))[2]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cut=st.one_of(st.none(), st.integers(0, _SEALED.data.numel() - 1)),
    flips=st.lists(st.tuples(st.integers(0, _SEALED.nbytes - 1), st.integers(1, 255)), max_size=4),
)
def test_a_cut_or_corrupted_payload_raises(cut: int | None, flips: list[tuple[int, int]]) -> None:
    wire = _SEALED.to_wire().clone()
    for position, mask in flips:
        wire[position] ^= mask
    if cut is not None:
        wire = wire[: 4 * _SEALED.scales.numel() + cut]
    if cut is None and torch.equal(wire, _SEALED.to_wire()):
        return  # the flips cancelled out
    q = make("qsgd", bits=4, coding="entropy")
    with pytest.raises(ValueError, match="entropy-coded payload"):
        q.decode(_SEALED.read_wire(wire))


_RAW = _SEALED.data.numpy()
_HEADER = coded.header_bytes(1, 4)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(
            st.one_of(st.integers(0, _HEADER - 1), st.integers(0, _RAW.size - 1)),
            st.integers(0, 255),
        ),
        min_size=1,
        max_size=6,
    ),
    cut=st.integers(0, 64),
)
def test_the_decoder_never_reads_or_writes_out_of_bounds(edits, cut: int) -> None:
    # straight to the kernel, past the checksum: lengths, tables, states and streams
    # rewritten at random must raise or decode, and never touch memory outside
    data = _RAW.copy()
    for position, value in edits:
        data[position] = value
    data = data[: data.size - cut]
    numel = _SEALED.numel
    guarded = torch.full((numel + 64,), 7.0)
    out = guarded[32 : 32 + numel]
    try:
        coded.decode_buckets(
            torch.from_numpy(data), _SEALED.scales, bits=4, bucket_size=512, levels=7,
            exponential=False, numel=numel, out=out,
        )  # fmt: skip
    except ValueError as error:
        assert "entropy-coded payload" in str(error)
    assert torch.equal(guarded[:32], torch.full((32,), 7.0))
    assert torch.equal(guarded[-32:], torch.full((32,), 7.0))
    assert bool(torch.isfinite(out).all())  # whatever was decoded is levels times scales


def test_a_stream_that_does_not_end_at_its_states_is_reported() -> None:
    data = _RAW.copy()
    data[_HEADER + 40] ^= 0x10  # one bit of the stream, the checksum not consulted
    with pytest.raises(ValueError, match="task 0 of 1"):
        coded.decode_buckets(
            torch.from_numpy(data), _SEALED.scales, bits=4, bucket_size=512, levels=7,
            exponential=False, numel=_SEALED.numel,
        )  # fmt: skip


# --- where coding cannot go ---------------------------------------------------------------


def test_entropy_coding_off_cpu_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="no GPU run has proved a coder"):
        kernels.backend("cuda", "entropy")
    with pytest.raises(ValueError, match="coding='packed'"):
        make("qsgd", coding="entropy").warm_up(torch.device("cuda"))
    assert kernels.backend("cpu", "entropy") is coded


def test_a_summing_allreduce_refuses_coded_payloads_and_auto_avoids_it() -> None:
    q = make("global_qsgd", bits=4, coding="entropy")
    assert Collective.ALLREDUCE not in q.reducible_with()
    with pytest.raises(ValueError, match="entropy-coded ones do not add up"):
        q.check_collective("allreduce")
    with pytest.raises(ValueError, match="collective='auto' or coding='packed'"):
        make_comm_hook("global_qsgd", coding="entropy", collective="allreduce")
    with pytest.raises(ValueError, match="entropy"):
        q.encode_summable(_gaussian(4096), None, world_size=2, scale=torch.ones(1))


def test_bad_codings_are_refused_where_they_are_given() -> None:
    with pytest.raises(ValueError, match="coding must be one of packed, entropy"):
        make("qsgd", coding="huffman")
    with pytest.raises(ValueError, match="sends no codes"):
        QuantizedDDPStrategy("torch_fp16", coding="entropy")
    strategy = QuantizedDDPStrategy("nuqsgd", bits=3, coding="entropy")
    assert strategy.scheme.config_dict()["coding"] == "entropy"


# --- many ranks ---------------------------------------------------------------------------


def _pairs(scheme: str, collective: Collective, **extra) -> list[dict]:
    name, preset = registry_name(scheme)
    base = {
        "scheme": name, "bits": 4, "collective": str(collective), "min_compress_numel": 0,
        "compress_1d": True, **preset, **extra,
    }  # fmt: skip
    return [base, {**base, "coding": "entropy"}]


def _assert_replicas_identical(results: list[list[dict]]) -> None:
    """Every rank ends each of ``train_each``'s trainings with the same parameters."""
    for rank in results[1:]:
        for mine, theirs in zip(results[0], rank, strict=True):
            for a, b in zip(mine["params"], theirs["params"], strict=True):
                assert torch.equal(a, b)


_RUNS = [
    (scheme, collective)
    for scheme in STOCHASTIC
    for collective in make(scheme, coding="entropy").reducible_with()
]


def test_coded_training_on_three_ranks_keeps_replicas_identical(tmp_path) -> None:
    configs = [c for scheme, collective in _RUNS for c in _pairs(scheme, collective)]
    configs += _pairs("qsgd", Collective.REDUCE_SCATTER, error_feedback=True)
    results = run_ranks(
        f"{WORKERS}:train_each", 3, tmp_path, configs=configs, steps=3, hidden=256,
        many_buckets=True, timeout=420,
    )  # fmt: skip
    first = results[0]
    _assert_replicas_identical(results)
    for i in range(0, len(configs), 2):
        packed, entropy = first[i], first[i + 1]
        assert entropy["collective"] == packed["collective"]
        if packed["collective"] == Collective.ALLGATHER:
            # the same codes: the same training. (On the reduce-scatter path the extra
            # stages interleave the buckets' re-encodings, and so their random draws,
            # in another order: another draw of the same unbiased estimate.)
            for a, b in zip(packed["params"], entropy["params"], strict=True):
                assert torch.equal(a, b), configs[i + 1]
        smaller = all(
            e["sent_bytes"] < p["sent_bytes"]
            for e, p in zip(entropy["stats"], packed["stats"], strict=True)
        )
        assert smaller, configs[i + 1]


def test_coded_reduce_scatter_is_unbiased(tmp_path) -> None:
    results = run_ranks(
        f"{WORKERS}:aggregated_gradients", 3, tmp_path, scheme="qsgd", draws=200,
        many_buckets=True, hidden=256, bits=3, coding="entropy", collective="reduce_scatter",
        min_compress_numel=0, compress_1d=True,
    )  # fmt: skip
    exact, samples = results[0]["exact"].double(), results[0]["samples"].double()
    assert torch.equal(results[0]["samples"], results[-1]["samples"])  # all ranks agree
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])
    assert ((mean - exact) ** 2).sum() <= 1.5 * (se**2).sum()
    assert samples.std(0).max() > 0


def test_coded_reduce_scatter_on_five_ranks_with_error_feedback(tmp_path) -> None:
    configs = _pairs("qsgd", Collective.REDUCE_SCATTER, error_feedback=True)
    results = run_ranks(
        f"{WORKERS}:train_each", 5, tmp_path, configs=configs, steps=3, hidden=256,
        many_buckets=True, timeout=420,
    )  # fmt: skip
    _assert_replicas_identical(results)
    packed, entropy = results[0]
    ratio = entropy["stats"][-1]["sent_bytes"] / packed["stats"][-1]["sent_bytes"]
    assert ratio < 0.6, ratio  # size exchanges and padding included
