"""What a :class:`~lightning_quant.hooks.auto.Choice` costs a bucket: its predicted time,
and the measurements the prediction rests on (``hooks/auto.py`` says how they combine)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from lightning_quant.collectives import Collective, message_rounds, sent_bytes
from lightning_quant.hooks.errors import ErrorSums
from lightning_quant.hooks.groups import Group
from lightning_quant.hooks.link import DEFAULT_LINK, LinkModel
from lightning_quant.hooks.pipeline import all_reduce
from lightning_quant.hooks.stats import StepStats

if TYPE_CHECKING:
    from lightning_quant.hooks.auto import Choice

__all__ = ["measure", "predicted_seconds", "probe_link"]


def _codec_passes(choice: Choice, n: int) -> tuple[float, float]:
    """Encodes and decodes of the bucket's size a choice's path makes on one rank (the
    error measurement's decode of its own payload included)."""
    if choice.collective is Collective.ALLGATHER:
        return 1.0, n + 1.0
    if choice.collective is Collective.REDUCE_SCATTER:
        return 1.0 + 1.0 / n, 3.0  # shards; owned mean re-encoded; n shards in, all out
    return 1.0, 2.0


def predicted_seconds(
    choice: Choice,
    numel: int,
    workers: int,
    link: LinkModel,
    bytes_per_coord: float,
    encode_s: float,
    decode_s: float,
) -> float:
    """Return a bucket's predicted reduction time under ``choice`` (the module's formula)."""
    n, collective = workers, choice.collective
    sent = sent_bytes(collective, numel * bytes_per_coord, n)
    rounds = message_rounds(collective, n)
    if not choice.plain:
        rounds += message_rounds(Collective.ALLREDUCE, n)  # the NaN guard
    if choice.quantizer.coding == "entropy":  # sizes: an all-to-all and/or a MAX all-reduce
        rounds += message_rounds(Collective.ALLREDUCE, n)
        if collective is Collective.REDUCE_SCATTER:
            rounds += n - 1
    encodes, decodes = _codec_passes(choice, n) if not choice.plain else (0.0, 0.0)
    return link.seconds(sent, rounds) + numel * (encodes * encode_s + decodes * decode_s)


PROBE_SECONDS = 0.02  # a probe shorter than this on every rank is redone 16x larger
PROBE_MAX_BYTES = 16 << 20


def probe_link(
    group: Group, stats: StepStats, device: torch.device, nbytes: int = 256 * 1024
) -> LinkModel:
    """Time the link with every rank at the start line: after a synchronizing one-float
    all-reduce, one more (latency), then one of ``nbytes`` (bandwidth), the best of two,
    16x larger while the slowest rank took less than :data:`PROBE_SECONDS`.

    The hook's online fit (:mod:`.link`) times collectives from their launch, so it also
    counts the waits for slower ranks' compute and codecs: it tells when the link moved,
    but prices bytes too high for choosing. The probe's bytes are counted as sent.
    """
    n = group.size
    if not dist.is_initialized() or n < 2:
        return DEFAULT_LINK
    small = torch.zeros(1, device=device)

    def timed(tensor: torch.Tensor) -> float:
        began = time.perf_counter()
        all_reduce(stats, group, tensor).wait()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - began

    timed(small)  # every rank is here after this one
    rounds = message_rounds(Collective.ALLREDUCE, n)
    latency = timed(small) / rounds
    size = nbytes
    while True:
        big = torch.zeros(size // 4, device=device)
        seconds = min(timed(big) for _ in range(2))
        # a fast link: time 16x more bytes, that noise and caches weigh less (all agree)
        slowest = torch.tensor([seconds], device=device)
        all_reduce(stats, group, slowest, dist.ReduceOp.MAX).wait()
        if float(slowest) >= PROBE_SECONDS or size >= PROBE_MAX_BYTES:
            break
        size *= 16
    sent = sent_bytes(Collective.ALLREDUCE, size, n)
    return LinkModel(latency, sent / max(seconds - rounds * latency, 1e-9))


def measure(
    choice: Choice, sample: torch.Tensor, generator: torch.Generator, n: int
) -> list[float]:
    """Return ``[relative variance, wire bytes per coordinate, encode s, decode s]`` per
    coordinate of ``sample`` under ``choice``. The encode time includes what the hook does
    around the codec for a compressed bucket: its NaN guard and its error sums."""
    q = choice.quantizer
    began = time.perf_counter()
    bool(torch.isfinite(sample).all())  # the guard's pass
    scale = q.own_scale(sample)
    if choice.collective is Collective.ALLREDUCE and q.lossy:
        payload = q.encode_summable(sample, generator, world_size=n, scale=scale)
        wire = q.summable(payload)
        nbytes = wire.numel() * wire.element_size()
    else:
        payload = q.encode(sample, generator, scale=scale)
        nbytes = payload.nbytes
    encoded = time.perf_counter()
    decoded = q.decode(payload).reshape(-1).float()
    done = time.perf_counter()
    sums = ErrorSums()  # the hook's own measurement of this encoding
    sums.add(decoded, sample, sample, 1.0)
    error, energy, _ = (sums.sums if sums.sums is not None else torch.zeros(3)).tolist()
    measured = time.perf_counter()
    d = max(sample.numel(), 1)
    variance = error / energy if energy > 0 else 0.0
    encode_s = (encoded - began) + (measured - done)
    return [variance, nbytes / d, encode_s / d, (done - encoded) / d]
