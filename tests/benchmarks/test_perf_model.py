"""The step-time model's formulas, and its fit to step times measured in PEERS.md."""

from __future__ import annotations

import dataclasses
import math

import pytest

from benchmarks.netem import LINK_PRESETS
from benchmarks.perf_model import (
    LINK_SPECS,
    TCP_PAYLOAD_FRACTION,
    Collective,
    LinkSpec,
    bytes_sent_per_rank,
    codec_seconds,
    collective_for,
    comm_seconds,
    predict_step_time,
    ring_allgather_seconds,
    ring_allreduce_seconds,
)
from lightning_quant.quantizers import available_quantizers, get_quantizer

# beta = 1 MB/s of payload, so bandwidth terms read as "seconds per MB".
MB_PER_S = LinkSpec(rate_bits_per_s=8e6 / TCP_PAYLOAD_FRACTION, latency_s=0.0)


@pytest.mark.parametrize("n", [2, 3, 4, 8, 16])
def test_ring_allreduce_moves_2_n_minus_1_over_n_of_the_tensor(n):
    assert bytes_sent_per_rank(Collective.ALLREDUCE, 1e6, n) == pytest.approx(2 * (n - 1) / n * 1e6)
    assert ring_allreduce_seconds(1e6, n, MB_PER_S) == pytest.approx(2 * (n - 1) / n)


@pytest.mark.parametrize("n", [2, 3, 4, 8, 16])
def test_ring_allgather_moves_n_minus_1_payloads(n):
    assert bytes_sent_per_rank(Collective.ALLGATHER, 1e6, n) == pytest.approx((n - 1) * 1e6)
    assert ring_allgather_seconds(1e6, n, MB_PER_S) == pytest.approx(n - 1)


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("k", [1, 4])
def test_latency_terms_per_collective(n, k):
    link = LinkSpec(rate_bits_per_s=1e9, latency_s=1e-3)
    allreduce = ring_allreduce_seconds(0, n, link, collectives_per_step=k)
    allgather = ring_allgather_seconds(0, n, link, collectives_per_step=k)
    assert allreduce == pytest.approx(2 * (n - 1) * k * 1e-3)
    assert allgather == pytest.approx((n - 1) * k * 1e-3)


def test_reduce_throughput_term():
    with_gamma = ring_allreduce_seconds(1e6, 4, MB_PER_S, reduce_bytes_per_s=1e6)
    assert with_gamma - ring_allreduce_seconds(1e6, 4, MB_PER_S) == pytest.approx(3 / 4)


def test_one_rank_has_no_communication():
    for collective in Collective:
        assert comm_seconds(collective, 1e9, 1, LINK_SPECS["100mbit"]) == 0


def test_allgather_overtakes_allreduce_as_ranks_grow():
    # A payload 4x smaller than fp32 wins at 2 ranks and loses from 9 ranks on (n-1 > 2(n-1)/n*4).
    link = LINK_SPECS["100mbit"]
    fp32, qsgd8 = 40e6, 10e6
    assert comm_seconds("allgather", qsgd8, 2, link) < comm_seconds("allreduce", fp32, 2, link)
    assert comm_seconds("allgather", qsgd8, 9, link) > comm_seconds("allreduce", fp32, 9, link)


def test_step_is_compute_plus_codec_plus_comm():
    step = predict_step_time(
        compute_s=0.05, codec_s=0.02, wire_bytes=1e6, world_size=3, link=MB_PER_S,
        collective="allgather",
    )  # fmt: skip
    assert (step.compute_s, step.codec_s, step.comm_s) == (0.05, 0.02, pytest.approx(2.0))
    assert step.total_s == pytest.approx(2.07)
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.comm_s = 0  # type: ignore[misc]


def test_codec_seconds_from_throughput():
    assert codec_seconds(
        4e9, encode_bytes_per_s=2e9, decode_bytes_per_s=4e9, payloads_decoded=3
    ) == pytest.approx(2 + 3)


def test_link_specs_are_the_netem_presets():
    assert set(LINK_SPECS) == set(LINK_PRESETS)
    for name, spec in LINK_SPECS.items():
        assert spec.rate_bits_per_s == LINK_PRESETS[name].rate_bits_per_s
        assert spec.latency_s == LINK_PRESETS[name].latency_s
    assert LINK_SPECS["100mbit"].payload_bytes_per_s == pytest.approx(100e6 / 8 * 1448 / 1514)


def test_collective_for_every_registered_scheme():
    assert collective_for("fp32") is collective_for("global_qsgd") is Collective.ALLREDUCE
    assert collective_for("qsgd") is Collective.ALLGATHER
    for name in available_quantizers():
        reducible = type(get_quantizer(name)).reducible
        assert (collective_for(name) is Collective.ALLREDUCE) == reducible, name


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate_bits_per_s": 0, "latency_s": 0},
        {"rate_bits_per_s": 1e9, "latency_s": -1},
        {"rate_bits_per_s": math.nan, "latency_s": 0},
    ],
)
def test_linkspec_rejects_nonsense(kwargs):
    with pytest.raises(ValueError, match="must be"):
        LinkSpec(**kwargs)


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="world_size"):
        ring_allreduce_seconds(1, 0, MB_PER_S)
    with pytest.raises(ValueError, match="wire_bytes"):
        ring_allgather_seconds(-1, 2, MB_PER_S)
    with pytest.raises(KeyError, match="100mbit"):
        predict_step_time(
            compute_s=0, wire_bytes=0, world_size=2, link="10mbit", collective="allreduce"
        )
    with pytest.raises(ValueError):
        comm_seconds("broadcast", 1, 2, MB_PER_S)


@pytest.mark.parametrize(
    ("wire_bytes", "measured_s"),
    [(42.05e6, (3.730, 3.800)), (42.05e6 / 2, (1.884, 1.855))],  # fp32, fp16_compress_hook
)
def test_model_fits_the_measured_peer_steps(wire_bytes, measured_s):
    # PEERS.md: 2 ranks, 100 Mbit/s tbf, compute 35-55 ms; the no-overlap model is within 10%.
    step = predict_step_time(
        compute_s=0.045, wire_bytes=wire_bytes, world_size=2, link="100mbit",
        collective="allreduce",
    )  # fmt: skip
    for measured in measured_s:
        assert step.total_s == pytest.approx(measured, rel=0.10)
