"""Predict a data-parallel training step's time from compute, codec and wire costs.

In the spirit of Global-QSGD's model (Xin et al., https://arxiv.org/abs/2305.18627),
``T = 2 log n * alpha + 2 log n * S/beta + log n * S/gamma`` for a tree allreduce, but for
the ring algorithms gloo actually runs on CPU. With ``n`` ranks, per-message latency
``alpha`` (s), payload bandwidth ``beta`` (bytes/s), reduction throughput ``gamma``
(bytes/s) and ``k`` collectives per step (DDP buckets, extra scalar collectives):

* ring allreduce of ``S`` bytes per rank (fp32, fp16, Global-QSGD: payloads that sum)::

      T_comm = 2 (n-1) k alpha + 2 (n-1)/n * S/beta + (n-1)/n * S/gamma

* ring allgather of a ``P``-byte payload per rank (QSGD family: every rank receives the
  ``n-1`` other payloads and forwards them, so it also sends ``(n-1) P``)::

      T_comm = (n-1) k alpha + (n-1) * P/beta

``S`` and ``P`` are summed over a step's buckets; ``k`` multiplies only the latency terms.

Overlap assumption: none. gloo overlaps DDP's bucketed communication with backward only
partly, and on a slow link the wire dominates, so the model adds the parts::

      T_step = T_compute + T_codec + T_comm

It therefore over-predicts when communication hides behind backward (fast links, many
buckets) and is meant for links where the wire dominates. Checked against PEERS.md
(42.05 MB of fp32 gradient, 2 ranks, 100 Mbit/s): fp32 predicted 3.56 s vs 3.73-3.80 s
measured, fp16 1.80 s vs 1.86-1.88 s.

``beta`` is the link rate times :data:`TCP_PAYLOAD_FRACTION`: ``tbf`` meters Ethernet
frames, and a 1500-byte MTU frame of 1514 bytes carries 1448 bytes of TCP payload.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from benchmarks.netem import LINK_PRESETS, LinkPreset

__all__ = [
    "LINK_SPECS",
    "REDUCIBLE_SCHEMES",
    "TCP_PAYLOAD_FRACTION",
    "Collective",
    "LinkSpec",
    "StepPrediction",
    "bytes_sent_per_rank",
    "codec_seconds",
    "collective_for",
    "comm_seconds",
    "predict_step_time",
    "ring_allgather_seconds",
    "ring_allreduce_seconds",
]

TCP_PAYLOAD_FRACTION = 1448 / 1514  # TCP payload per Ethernet frame (MTU 1500, timestamps)


@dataclass(frozen=True)
class LinkSpec:
    """A link as the model sees it: rate and per-message latency.

    Attributes:
        rate_bits_per_s: link rate in bit/s (what ``tbf`` meters: Ethernet frames).
        latency_s: one-way cost of one message in seconds (``alpha``).
    """

    rate_bits_per_s: float
    latency_s: float

    def __post_init__(self) -> None:
        """Check the rate is positive and the latency is not negative."""
        if not self.rate_bits_per_s > 0:
            raise ValueError(f"rate_bits_per_s must be > 0, got {self.rate_bits_per_s}")
        if not self.latency_s >= 0:
            raise ValueError(f"latency_s must be >= 0, got {self.latency_s}")

    @property
    def payload_bytes_per_s(self) -> float:
        """Return ``beta``: TCP payload bytes per second, ``rate / 8 * 1448 / 1514``."""
        return self.rate_bits_per_s / 8 * TCP_PAYLOAD_FRACTION

    @classmethod
    def from_preset(cls, link: str | LinkPreset) -> LinkSpec:
        """Return the spec of a :data:`benchmarks.netem.LINK_PRESETS` link."""
        preset = LINK_PRESETS[link] if isinstance(link, str) else link
        return cls(rate_bits_per_s=preset.rate_bits_per_s, latency_s=preset.latency_s)


LINK_SPECS: dict[str, LinkSpec] = {
    name: LinkSpec.from_preset(preset) for name, preset in LINK_PRESETS.items()
}


class Collective(StrEnum):
    """The collective a scheme's payloads cross the wire with."""

    ALLREDUCE = "allreduce"  # payloads sum: gloo's ring allreduce
    ALLGATHER = "allgather"  # payloads do not sum: gloo's ring allgather


# Keep in step with ``Quantizer.reducible`` in lightning_quant.quantizers.
REDUCIBLE_SCHEMES = frozenset({"fp32", "fp16", "bf16", "global_qsgd"})


def collective_for(scheme: str) -> Collective:
    """Return the collective ``scheme`` uses: allreduce if payloads sum, else allgather."""
    return Collective.ALLREDUCE if scheme in REDUCIBLE_SCHEMES else Collective.ALLGATHER


def _check(world_size: int, wire_bytes: float, collectives_per_step: int) -> None:
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if wire_bytes < 0:
        raise ValueError(f"wire_bytes must be >= 0, got {wire_bytes}")
    if collectives_per_step < 1:
        raise ValueError(f"collectives_per_step must be >= 1, got {collectives_per_step}")


def ring_allreduce_seconds(
    nbytes: float,
    world_size: int,
    link: LinkSpec,
    *,
    collectives_per_step: int = 1,
    reduce_bytes_per_s: float = math.inf,
) -> float:
    """Return the time of a ring allreduce of ``nbytes`` per rank.

    ``T = 2 (n-1) k alpha + 2 (n-1)/n * S/beta + (n-1)/n * S/gamma``: a reduce-scatter and
    an allgather of ``n-1`` steps each, moving ``S/n`` per step; each rank reduces
    ``(n-1)/n * S`` bytes at ``gamma = reduce_bytes_per_s`` (default: free).

    Args:
        nbytes: ``S``, the bytes of the tensor each rank contributes in a step.
        world_size: ``n``.
        link: gives ``alpha`` and ``beta``.
        collectives_per_step: ``k``, separate allreduces the step's bytes are split into.
        reduce_bytes_per_s: ``gamma``, how fast a rank sums incoming data.
    """
    _check(world_size, nbytes, collectives_per_step)
    n = world_size
    if n == 1:
        return 0.0
    latency = 2 * (n - 1) * collectives_per_step * link.latency_s
    wire = 2 * (n - 1) / n * nbytes / link.payload_bytes_per_s
    reduce = (n - 1) / n * nbytes / reduce_bytes_per_s
    return latency + wire + reduce


def ring_allgather_seconds(
    payload_bytes: float, world_size: int, link: LinkSpec, *, collectives_per_step: int = 1
) -> float:
    """Return the time of a ring allgather of one ``payload_bytes`` payload per rank.

    ``T = (n-1) k alpha + (n-1) * P/beta``: ``n-1`` steps, each sending one payload to the
    next rank and receiving one from the previous.

    Args:
        payload_bytes: ``P``, the bytes of one rank's payloads in a step.
        world_size: ``n``.
        link: gives ``alpha`` and ``beta``.
        collectives_per_step: ``k``, separate allgathers the step's payloads are split into.
    """
    _check(world_size, payload_bytes, collectives_per_step)
    n = world_size
    latency = (n - 1) * collectives_per_step * link.latency_s
    return latency + (n - 1) * payload_bytes / link.payload_bytes_per_s


_COMM: dict[Collective, Callable[..., float]] = {
    Collective.ALLREDUCE: ring_allreduce_seconds,
    Collective.ALLGATHER: ring_allgather_seconds,
}


def bytes_sent_per_rank(collective: Collective, wire_bytes: float, world_size: int) -> float:
    """Return the bytes one rank sends in a step: ``2(n-1)/n * S`` or ``(n-1) * P``."""
    _check(world_size, wire_bytes, 1)
    n = world_size
    if Collective(collective) is Collective.ALLREDUCE:
        return 2 * (n - 1) / n * wire_bytes
    return (n - 1) * wire_bytes


def comm_seconds(
    collective: Collective | str,
    wire_bytes: float,
    world_size: int,
    link: LinkSpec,
    *,
    collectives_per_step: int = 1,
) -> float:
    """Return a step's communication time with ``collective`` (see the module formulas)."""
    function = _COMM[Collective(collective)]
    return function(wire_bytes, world_size, link, collectives_per_step=collectives_per_step)


def codec_seconds(
    gradient_bytes: float,
    *,
    encode_bytes_per_s: float,
    decode_bytes_per_s: float,
    payloads_decoded: int = 1,
) -> float:
    """Return a step's encode + decode time from codec throughputs.

    ``T_codec = G / encode + m * G / decode``, with ``G`` the fp32 gradient bytes of a
    step and ``m`` the payloads decoded: 1 after an allreduce, ``n`` after an allgather.
    Use a measured time instead when there is one.

    Example::

        codec_seconds(42.05e6, encode_bytes_per_s=2e9, decode_bytes_per_s=4e9,
                      payloads_decoded=2)
    """
    if gradient_bytes < 0 or payloads_decoded < 0:
        raise ValueError("gradient_bytes and payloads_decoded must be >= 0")
    if not (encode_bytes_per_s > 0 and decode_bytes_per_s > 0):
        raise ValueError("encode_bytes_per_s and decode_bytes_per_s must be > 0")
    encode = gradient_bytes / encode_bytes_per_s
    return encode + payloads_decoded * gradient_bytes / decode_bytes_per_s


@dataclass(frozen=True)
class StepPrediction:
    """A predicted step time and its parts, in seconds."""

    compute_s: float
    codec_s: float
    comm_s: float

    @property
    def total_s(self) -> float:
        """Return ``compute + codec + comm`` (no overlap)."""
        return self.compute_s + self.codec_s + self.comm_s


def predict_step_time(
    *,
    compute_s: float,
    wire_bytes: float,
    world_size: int,
    link: LinkSpec | str,
    collective: Collective | str,
    codec_s: float = 0.0,
    collectives_per_step: int = 1,
) -> StepPrediction:
    """Predict one training step's time: ``T = compute + codec + comm``.

    Args:
        compute_s: measured time of a step with no communication (forward, backward,
            optimizer).
        wire_bytes: bytes one rank hands to the collective in a step, summed over buckets
            (``S`` for an allreduce, its own payload ``P`` for an allgather).
        world_size: number of ranks ``n``.
        link: a :class:`LinkSpec` or a preset name (``"none"``, ``"1gbit"``, ``"100mbit"``).
        collective: ``"allreduce"`` or ``"allgather"``; see :func:`collective_for`.
        codec_s: encode + decode seconds per step, measured or from :func:`codec_seconds`.
        collectives_per_step: collectives the step issues (buckets times collectives per
            bucket), which multiplies the latency terms.

    Returns:
        The prediction, with its parts.

    Example::

        fp32 = predict_step_time(compute_s=0.045, wire_bytes=42.05e6, world_size=2,
                                 link="100mbit", collective="allreduce")
        fp32.total_s  # about 3.56 s
    """
    if compute_s < 0 or codec_s < 0:
        raise ValueError("compute_s and codec_s must be >= 0")
    if isinstance(link, str):
        if link not in LINK_SPECS:
            raise KeyError(f"unknown link {link!r}; available: {', '.join(LINK_SPECS)}")
        link = LINK_SPECS[link]
    comm = comm_seconds(
        collective, wire_bytes, world_size, link, collectives_per_step=collectives_per_step
    )
    return StepPrediction(compute_s=compute_s, codec_s=codec_s, comm_s=comm)
