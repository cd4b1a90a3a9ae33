"""The kinds of emulated link: how ``tbf`` shapes each, and what the performance model
assumes of it."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["LINK_PRESETS", "LinkPreset", "link_preset"]


@dataclass(frozen=True)
class LinkPreset:
    """One kind of link: how ``tbf`` shapes it and what the performance model assumes.

    Attributes:
        name: the preset's name, e.g. ``"100mbit"``.
        shaped: whether a ``tbf`` qdisc is installed (``False``: a plain veth).
        rate_bits_per_s: the link rate in bit/s. For a shaped link this is the ``tbf``
            rate (``tc`` counts Ethernet frames, so TCP payload gets about 95.6% of it at
            MTU 1500); for ``none`` it is a nominal figure for an unshaped veth on a
            2-core machine, used only by the performance model.
        latency_s: one-way cost of one message (propagation, stack, gloo), used only by
            the performance model; ``tbf`` adds no delay of its own.
        burst_bytes: ``tbf`` bucket size in bytes.
        queue_latency_s: ``tbf`` ``latency``: the longest a packet may wait in the queue
            (sets the queue length, not a delay).
    """

    name: str
    shaped: bool
    rate_bits_per_s: float
    latency_s: float
    burst_bytes: int = 0
    queue_latency_s: float = 0.0

    def tbf_args(self) -> list[str]:
        """Return the ``tc qdisc add ... tbf`` arguments after ``tbf``."""
        if not self.shaped:
            raise ValueError(f"link {self.name!r} is not shaped; it has no tbf settings")
        return [
            "rate", f"{int(self.rate_bits_per_s)}bit",
            "burst", str(self.burst_bytes),
            "latency", f"{round(self.queue_latency_s * 1e6)}us",
        ]  # fmt: skip


# tbf: burst 128 KiB and a 100 ms queue, the settings calibrated in NETWORK-EMULATION.md.
# Model figures, measured with gloo between namespaces on this project's 2-core machines:
# latency_s: a 4-byte all_reduce took 120-190 us over 2 ring steps with 2 ranks and
# 170-280 us over 4 steps with 3 ranks (a 1-byte all_gather: about 200 us a step), so
# 100 us a message; rate for "none": a 10 MB all_reduce moved about 6 Gbit/s per rank
# (raw TCP over the unshaped veth: 12-17 Gbit/s); there copies, not the wire, dominate.
LINK_PRESETS: dict[str, LinkPreset] = {
    "none": LinkPreset("none", shaped=False, rate_bits_per_s=6e9, latency_s=100e-6),
    "1gbit": LinkPreset(
        "1gbit", shaped=True, rate_bits_per_s=1e9, latency_s=100e-6,
        burst_bytes=128 * 1024, queue_latency_s=0.1,
    ),
    "100mbit": LinkPreset(
        "100mbit", shaped=True, rate_bits_per_s=100e6, latency_s=100e-6,
        burst_bytes=128 * 1024, queue_latency_s=0.1,
    ),
}  # fmt: skip

_UNITS = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}


def link_preset(name: str) -> LinkPreset:
    """Return the preset ``name`` names: one of :data:`LINK_PRESETS`, or any ``tbf`` rate
    written ``<number><kbit|mbit|gbit>`` (``10mbit``, ``25mbit``, ``2.5gbit``), shaped
    like the presets (128 KiB burst, 100 ms queue).

    Raises:
        ValueError: a name that is neither, saying what is allowed.
    """
    if name in LINK_PRESETS:
        return LINK_PRESETS[name]
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(kbit|mbit|gbit)", name)
    if match is None or not float(match.group(1)) > 0:
        raise ValueError(
            f"unknown link {name!r}: give none, or a tbf rate such as 10mbit, 100mbit, 1gbit"
        )
    rate = float(match.group(1)) * _UNITS[match.group(2)]
    return LinkPreset(
        name, shaped=True, rate_bits_per_s=rate, latency_s=100e-6,
        burst_bytes=max(128 * 1024, int(rate / 8 / 1000)), queue_latency_s=0.1,
    )  # fmt: skip
