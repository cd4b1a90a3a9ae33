"""The step-time model's formulas, and its fit to step times measured in PEERS.md."""

from __future__ import annotations

import dataclasses
import math

import pytest

from benchmarks.netem import LINK_PRESETS
from benchmarks.perf_model import (
    LINK_SPECS,
    TCP_PAYLOAD_FRACTION,
    LinkSpec,
    comm_seconds,
    predict_step_time,
)
from lightning_quant.collectives import Collective, sent_bytes

# beta = 1 MB/s of payload, so bandwidth terms read as "seconds per MB".
MB_PER_S = LinkSpec(rate_bits_per_s=8e6 / TCP_PAYLOAD_FRACTION, latency_s=0.0)


@pytest.mark.parametrize("n", [2, 3, 4, 8, 16])
def test_bytes_per_rank_of_each_collective(n):
    assert sent_bytes(Collective.ALLREDUCE, 1e6, n) == pytest.approx(2 * (n - 1) / n * 1e6)
    assert sent_bytes(Collective.ALLGATHER, 1e6, n) == pytest.approx((n - 1) * 1e6)
    assert sent_bytes(Collective.REDUCE_SCATTER, 1e6, n) == pytest.approx(2 * (n - 1) / n * 1e6)
    assert comm_seconds(sent_bytes("allgather", 1e6, n), 0, MB_PER_S) == pytest.approx(n - 1)


def test_latency_terms_per_round():
    link = LinkSpec(rate_bits_per_s=1e9, latency_s=1e-3)
    assert comm_seconds(0, 12, link) == pytest.approx(12e-3)


def test_allgather_overtakes_allreduce_as_ranks_grow():
    # A payload 4x smaller than fp32 wins at 2 ranks and loses from 9 ranks on (n-1 > 2(n-1)/n*4).
    fp32, qsgd8 = 40e6, 10e6
    for n, gathers_less in ((2, True), (7, True), (9, False), (16, False)):
        gathered = sent_bytes("allgather", qsgd8, n)
        assert (gathered < sent_bytes("allreduce", fp32, n)) is gathers_less, n
        # the reduce-scatter's bytes stay flat: always 4x below fp32's
        assert sent_bytes("reduce_scatter", qsgd8, n) == pytest.approx(
            sent_bytes("allreduce", fp32, n) / 4
        )


def test_step_is_compute_plus_codec_plus_comm():
    step = predict_step_time(compute_s=0.05, codec_s=0.02, link_bytes=2e6, rounds=4, link=MB_PER_S)
    assert (step.compute_s, step.codec_s, step.comm_s) == (0.05, 0.02, pytest.approx(2.0))
    assert step.total_s == pytest.approx(2.07)
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.comm_s = 0  # type: ignore[misc]


def test_only_inter_node_bytes_cross_the_shaped_link():
    step = predict_step_time(
        compute_s=0, link_bytes=1e6, loopback_bytes=2e6, rounds=0, link=MB_PER_S
    )
    loopback = LINK_SPECS["none"].payload_bytes_per_s
    assert step.comm_s == pytest.approx(1.0 + 2e6 / loopback)


def test_link_specs_are_the_netem_presets():
    assert set(LINK_SPECS) == set(LINK_PRESETS)
    for name, spec in LINK_SPECS.items():
        assert spec.rate_bits_per_s == LINK_PRESETS[name].rate_bits_per_s
        assert spec.latency_s == LINK_PRESETS[name].latency_s
    assert LINK_SPECS["100mbit"].payload_bytes_per_s == pytest.approx(100e6 / 8 * 1448 / 1514)


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
        sent_bytes("allreduce", 1, 0)
    with pytest.raises(ValueError, match="sent_bytes"):
        comm_seconds(-1, 0, MB_PER_S)
    with pytest.raises(KeyError, match="10mbit"):
        predict_step_time(compute_s=0, link_bytes=0, rounds=0, link="10 megabits")
    with pytest.raises(ValueError):
        sent_bytes("broadcast", 1, 2)


@pytest.mark.parametrize(
    ("sent", "measured_s"),
    [(42.05e6, (3.730, 3.800)), (42.05e6 / 2, (1.884, 1.855))],  # fp32, fp16_compress_hook
)
def test_model_fits_the_measured_peer_steps(sent, measured_s):
    # PEERS.md: 2 ranks, 100 Mbit/s tbf, compute 35-55 ms; the no-overlap model is within 10%.
    # One ring all-reduce of 2 ranks: each sends the whole tensor once, in 2 rounds.
    step = predict_step_time(compute_s=0.045, link_bytes=sent, rounds=2, link="100mbit")
    for measured in measured_s:
        assert step.total_s == pytest.approx(measured, rel=0.10)
