"""Predict a data-parallel training step's time from compute, codec and network costs.

In the spirit of Global-QSGD's model (Xin et al., https://arxiv.org/abs/2305.18627),
``T = 2 log n * alpha + 2 log n * S/beta + log n * S/gamma`` for a tree allreduce, but
driven by what the hook counted for the collectives gloo really ran: the bytes each rank
sent (``sent_bytes``, from each collective's algorithm, see
:mod:`lightning_quant.collectives`) and their sequential message rounds. With per-message
latency ``alpha`` (s) and payload bandwidth ``beta`` (bytes/s) of the link a rank sends on::

    T_comm = sent_bytes / beta + rounds * alpha

Between emulated nodes (each a network namespace holding several ranks) a node's link
carries the inter-node bytes of all its ranks at once; what ranks send inside a node goes
over the node's loopback, at the ``"none"`` preset's rate::

    T_comm = node's inter-node bytes / beta + a rank's intra-node bytes / beta_loopback
             + rounds * alpha

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

from dataclasses import dataclass

from benchmarks.links import LINK_PRESETS, LinkPreset, link_preset
from lightning_quant.hooks.link import LinkModel

__all__ = [
    "LINK_SPECS",
    "TCP_PAYLOAD_FRACTION",
    "LinkSpec",
    "StepPrediction",
    "comm_seconds",
    "predict_step_time",
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
        """Return the spec of a link: a preset, or a name :func:`link_preset` reads."""
        preset = link_preset(link) if isinstance(link, str) else link
        return cls(rate_bits_per_s=preset.rate_bits_per_s, latency_s=preset.latency_s)


LINK_SPECS: dict[str, LinkSpec] = {
    name: LinkSpec.from_preset(preset) for name, preset in LINK_PRESETS.items()
}
LOOPBACK = LINK_SPECS["none"]


def _spec(link: LinkSpec | str) -> LinkSpec:
    if isinstance(link, LinkSpec):
        return link
    if link not in LINK_SPECS:
        try:
            return LinkSpec.from_preset(link)
        except ValueError as error:
            raise KeyError(str(error)) from None
    return LINK_SPECS[link]


def comm_seconds(sent_bytes: float, rounds: float, link: LinkSpec | str) -> float:
    """Return ``sent_bytes / beta + rounds * alpha`` on ``link``."""
    spec = _spec(link)
    return LinkModel(spec.latency_s, spec.payload_bytes_per_s).seconds(sent_bytes, rounds)


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
    link_bytes: float,
    rounds: float,
    link: LinkSpec | str,
    codec_s: float = 0.0,
    loopback_bytes: float = 0.0,
) -> StepPrediction:
    """Predict one training step's time: ``T = compute + codec + comm``.

    Args:
        compute_s: measured time of a step with no communication (forward, backward,
            optimizer).
        link_bytes: bytes that cross a node's link in a step: the inter-node bytes of all
            its ranks (with one rank per node, what the rank sends: the hook's
            ``sent_bytes``).
        rounds: sequential message rounds of the step's collectives (the hook's ``rounds``).
        link: the link between nodes, a :class:`LinkSpec` or a preset name.
        codec_s: encode + decode seconds per step.
        loopback_bytes: bytes a rank sends to ranks of its own node, over the loopback.

    Example::

        fp32 = predict_step_time(compute_s=0.045, link_bytes=42.05e6, rounds=2,
                                 link="100mbit")
        fp32.total_s  # about 3.56 s
    """
    if compute_s < 0 or codec_s < 0:
        raise ValueError("compute_s and codec_s must be >= 0")
    comm = comm_seconds(link_bytes, rounds, link) + comm_seconds(loopback_bytes, 0, LOOPBACK)
    return StepPrediction(compute_s=compute_s, codec_s=codec_s, comm_s=comm)
