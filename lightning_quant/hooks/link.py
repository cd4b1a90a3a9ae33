"""The alpha-beta model of a link, and its online fit from the collectives the hook times.

A collective that makes a rank send ``s`` bytes in ``r`` sequential message rounds takes::

    T = r * alpha + s / beta

with ``alpha`` the cost of one message (latency, stack, gloo) and ``beta`` the payload
bandwidth in bytes per second (Global-QSGD's model, https://arxiv.org/abs/2305.18627;
``benchmarks/perf_model.py`` predicts whole steps with it).

:class:`LinkFit` learns ``alpha`` and ``beta`` while training: each collective the hook
launches reports its bytes, rounds and duration. gloo and NCCL run a process group's
collectives one after another, so a collective's own duration starts when it was launched
or when the one before it on the group completed, whichever is later; the fit is a least
squares of ``T`` on ``(r, s)`` over the latest samples.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

__all__ = ["DEFAULT_LINK", "LinkFit", "LinkModel"]


@dataclass(frozen=True)
class LinkModel:
    """``T = rounds * latency_s + sent_bytes / bytes_per_s``."""

    latency_s: float
    bytes_per_s: float

    def __post_init__(self) -> None:
        if not self.bytes_per_s > 0:
            raise ValueError(f"bytes_per_s must be > 0, got {self.bytes_per_s}")
        if not self.latency_s >= 0:
            raise ValueError(f"latency_s must be >= 0, got {self.latency_s}")

    def seconds(self, sent_bytes: float, rounds: float) -> float:
        """Return the time to send ``sent_bytes`` in ``rounds`` sequential rounds."""
        if sent_bytes < 0 or rounds < 0:
            raise ValueError(f"sent_bytes and rounds must be >= 0, got {sent_bytes}, {rounds}")
        return rounds * self.latency_s + sent_bytes / self.bytes_per_s


# before anything is measured: a 100 us message and a 10 Gbit/s link (fp32 looks cheap)
DEFAULT_LINK = LinkModel(latency_s=100e-6, bytes_per_s=1.25e9)


class LinkFit:
    """Fit a :class:`LinkModel` to the latest ``window`` collectives of one process group.

    Args:
        window: samples kept.
        min_bytes: a fit needs at least one sample this large (to see the bandwidth).
    """

    def __init__(self, window: int = 256, min_bytes: int = 64 * 1024) -> None:
        self.min_bytes = min_bytes
        self._samples: deque[tuple[float, float, float]] = deque(maxlen=window)
        self._last_done = 0.0
        self._lock = threading.Lock()

    def launched(self) -> float:
        """Return the clock at a collective's launch (pass it to :meth:`completed`)."""
        return time.perf_counter()

    def completed(self, launched_at: float, sent_bytes: float, rounds: float) -> None:
        """Record a collective that completed now (called from its future's callback)."""
        now = time.perf_counter()
        with self._lock:
            began = max(launched_at, self._last_done)  # it waited for the one before it
            self._last_done = now
            if rounds > 0:
                self._samples.append((rounds, sent_bytes, now - began))

    def clear(self) -> None:
        """Forget every sample (after the link changed)."""
        with self._lock:
            self._samples.clear()

    def model(self) -> LinkModel | None:
        """Return the least-squares fit, or ``None`` before a large enough sample."""
        with self._lock:
            samples = list(self._samples)
        if not any(s >= self.min_bytes for _, s, _ in samples):
            return None
        return fit_link(samples)


def fit_link(samples: list[tuple[float, float, float]]) -> LinkModel:
    """Least squares of ``T = r alpha + s / beta`` on ``(rounds, bytes, seconds)`` samples,
    with ``alpha >= 0`` and ``beta > 0``."""
    rr = sum(r * r for r, _, _ in samples)
    ss = sum(s * s for _, s, _ in samples)
    rs = sum(r * s for r, s, _ in samples)
    rt = sum(r * t for r, _, t in samples)
    st = sum(s * t for _, s, t in samples)
    det = rr * ss - rs * rs
    alpha, inverse = (0.0, 0.0)
    if det > 1e-12 * rr * ss:
        alpha = (rt * ss - st * rs) / det
        inverse = (st * rr - rt * rs) / det
    if alpha < 0 or inverse <= 0 or det <= 1e-12 * rr * ss:
        # one term only: the bandwidth from the bytes (alpha 0) or, failing that, latency
        alpha = 0.0
        inverse = st / ss if ss else 0.0
        if inverse <= 0:
            return LinkModel(max(rt / rr, 0.0) if rr else 0.0, DEFAULT_LINK.bytes_per_s)
    return LinkModel(latency_s=alpha, bytes_per_s=1.0 / inverse)
