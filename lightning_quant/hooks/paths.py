"""How a bucket's gradient is averaged, one function per collective a scheme may declare.

Each path reduces a flat tensor ``x`` (the bucket, or a region of it starting at element
``start``) over a :class:`~lightning_quant.hooks.groups.Group` and writes the mean into
``out``; see :mod:`lightning_quant.hooks.pipeline` for how its stages are launched.

* :func:`allreduce`: payloads that sum (the float baselines, Global-QSGD up to its lane
  limit): one SUM all-reduce of ``Quantizer.summable``.
* :func:`allgather`: every rank receives every payload and averages the decoded values;
  each rank sends ``(n-1) q`` bytes.
* :func:`reduce_scatter_path`: the bucket is cut into one shard per rank, aligned to the
  quantization buckets. Each rank encodes every shard and sends shard ``j`` to rank ``j``
  (one all-to-all). Rank ``j`` decodes the ``n`` payloads of its shard, averages them in
  fp32, re-encodes the mean with the same scheme and width (a second, independent
  stochastic rounding) and all-gathers it; every rank, the owner too, decodes every shard
  from the bytes it received, so replicas stay bit-identical. Each rank sends
  ``2 (n-1)/n q`` bytes, flat in ``n``.

Variance of the two stages. For an unbiased quantizer with ``E||Q(v)-v||^2 <= b ||v||^2``
on each quantization bucket (QSGD: ``b = min(d/s^2, sqrt(d)/s)``), ranks' values ``v_i``
and their mean ``m``, one all-gather stage gives
``E||m^ - m||^2 <= (b/n^2) sum_i ||v_i||^2`` (the ``n`` roundings are independent). The
second rounding of ``m^`` is unbiased given ``m^``, so the variances add::

    E||Q(m^) - m||^2 <= b E||m^||^2 + (b/n^2) sum_i ||v_i||^2
                     <= b ||m||^2 + (b + b^2) (1/n^2) sum_i ||v_i||^2

The result stays unbiased; the price of flat traffic is the ``b ||m||^2`` term of the
second rounding (tested in ``tests/lightning_quant/test_reduce_scatter.py``).

Error feedback covers both stages, as DeepSpeed's compressed allreduce does: every rank
keeps a residual of its own encoding of the whole bucket, and the owner of a shard keeps
a second residual of its re-encoding of the mean; every payload is contracted first, so
the residuals stay bounded (:mod:`lightning_quant.quantizers.contraction` says how and
why).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lightning_quant.collectives import Collective
from lightning_quant.hooks.errors import ErrorSums
from lightning_quant.hooks.feedback import Layout, ResidualMemory
from lightning_quant.hooks.groups import Group
from lightning_quant.hooks.pipeline import (
    Final,
    Stages,
    all_gather,
    all_reduce,
    all_to_all,
    as_stages,
)
from lightning_quant.hooks.stats import StepStats
from lightning_quant.quantizers import Payload, Quantizer
from lightning_quant.quantizers.contraction import RESIDUAL_BOUND, fit_factors

__all__ = [
    "PATHS",
    "Job",
    "allgather",
    "allreduce",
    "hierarchical",
    "reduce_scatter_path",
    "shard_bounds",
]


@dataclass
class Job:
    """One bucket's reduction: the scheme, this step's width and the memories it uses."""

    layout: Layout  # the parameters the reduced tensor holds, for error feedback
    quantizer: Quantizer
    bits: int | None  # this step's width (None: the quantizer's own)
    stats: StepStats
    generator: torch.Generator
    worker_residuals: ResidualMemory | None  # None: no error feedback
    owner_residuals: ResidualMemory | None
    errors: ErrorSums | None = None  # None: errors not measured
    scale: torch.Tensor | None = None  # the shared scale, where the NaN guard agreed it

    def timed(self, name: str) -> AbstractContextManager[None]:
        """Time a codec stage on the bucket's device (CUDA events there)."""
        return self.stats.timed(name, self.generator.device)

    def encode(self, x: torch.Tensor, scale: torch.Tensor | None) -> Payload:
        return self.quantizer.encode(x, self.generator, bits=self.bits, scale=scale)

    def with_residual(
        self, memory: ResidualMemory | None, x: torch.Tensor, start: int
    ) -> torch.Tensor:
        """Return ``x`` (the bucket's elements from ``start`` on) plus its residual."""
        return x if memory is None else memory.add(self.layout, x, start)

    def target(
        self, group: Group, memory: ResidualMemory | None, x: torch.Tensor, start: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return what to encode (``x`` plus its residual in ``memory``) and the shared scale
        (for schemes that declare ``shared_scale``, else ``None``)."""
        with self.timed("encode_s"):
            target = self.with_residual(memory, x, start)
        return target, shared_scale(self, group, target)

    def finalize(
        self, memory: ResidualMemory | None, target: torch.Tensor, fresh: torch.Tensor,
        payloads: list[Payload], start: int, weight: float,
    ) -> list[Payload]:  # fmt: skip
        """Settle ``payloads``, consecutive pieces of ``target`` (``fresh`` plus the residual
        carried in), before they are sent: with error feedback (a ``memory``) contract them
        (:meth:`Quantizer.contract`) and store what they lose; with error sums, add their
        errors, ``weight`` their share in the mean's (:mod:`~lightning_quant.hooks.errors`).
        """
        if memory is None and self.errors is None:
            return payloads
        fitted, sent, offset = [], [], 0
        for payload in payloads:
            piece = slice(offset, offset + payload.numel)
            if memory is not None:
                payload, decoded = self.quantizer.contract(
                    payload, target.reshape(-1)[piece], fresh.reshape(-1)[piece]
                )
            else:
                decoded = self.quantizer.decode(payload).reshape(-1).float()
            fitted.append(payload)
            sent.append(decoded)
            offset += payload.numel
        decoded = torch.cat(sent)
        if memory is not None:
            memory.store(self.layout, target.reshape(-1).float() - decoded, start)
        if self.errors is not None:
            self.errors.add(decoded, target, fresh, weight)
        return fitted


def shared_scale(job: Job, group: Group, x: torch.Tensor) -> torch.Tensor | None:
    """Return the max of ``|x|`` over the group for schemes that declare ``shared_scale``:
    the one the NaN guard agreed (``hooks/hook.py``), else a scalar all-reduce's, waited
    for here in the hook body (the encoding needs it)."""
    if job.scale is not None:
        return job.scale
    scale = job.quantizer.own_scale(x)
    if scale is not None:
        all_reduce(job.stats, group, scale, dist.ReduceOp.MAX).wait()
    return scale


def _mean_into(
    out: torch.Tensor, parts: list[Callable[[torch.Tensor | None], torch.Tensor]], n: int
) -> torch.Tensor:
    """Decode ``parts`` (each decodes into ``out=`` or returns a new tensor), sum in fp32,
    divide by ``n``, and write the mean into ``out``."""
    total = out if out.dtype == torch.float32 else torch.empty_like(out, dtype=torch.float32)
    parts[0](total)
    for part in parts[1:]:
        total += part(None)
    total.div_(n)
    if total is not out:
        out.copy_(total)
    return out


# --- the paths ---------------------------------------------------------------------------


def allreduce(job: Job, group: Group, x: torch.Tensor, out: torch.Tensor, start: int) -> Final:
    """One SUM all-reduce of payloads that add up.

    With error feedback the ranks' payloads cannot carry scales of their own (they are
    summed), so every rank takes the smallest of the ranks' :func:`fit_factors` (one
    scalar ``allreduce(MIN)``) and scales the mean by it: at most each rank's own factor,
    it still shrinks each rank's error.
    """
    q = job.quantizer
    target, scale = job.target(group, job.worker_residuals, x, start)
    factor: torch.Tensor | None = None
    with job.timed("encode_s"):
        payload = q.encode_summable(target, job.generator, world_size=group.size, scale=scale)
        if job.errors is not None:
            mine = q.decode_own(payload, group.size).reshape(-1).float()
            job.errors.add(mine, target, x, 1 / group.size**2)
        if job.worker_residuals is not None:
            own = q.decode(payload).reshape(-1).float()
            allowed = RESIDUAL_BOUND**2 * x.float().pow(2).sum().reshape(1)
            factor = fit_factors(target.reshape(-1).float(), own, max(own.numel(), 1), allowed)
    if job.worker_residuals is not None and factor is not None:
        all_reduce(job.stats, group, factor, dist.ReduceOp.MIN).wait()
        job.worker_residuals.store(job.layout, target.reshape(-1).float() - own * factor, start)
    with job.timed("encode_s"):
        wire = q.summable(payload)
    work = all_reduce(job.stats, group, wire)

    def finish() -> torch.Tensor:
        with job.timed("decode_s"):
            mean = q.decode_sum(payload, wire, group.size, out)
            return mean if factor is None else mean.mul_(factor.to(mean.dtype))

    return work, finish


def allgather(job: Job, group: Group, x: torch.Tensor, out: torch.Tensor, start: int) -> Stages:
    """All-gather every rank's payload; decode and average them all.

    Entropy-coded payloads differ in size between ranks, and gloo's all-gather takes
    equal ones: a first stage agrees on the largest (a one-number ``allreduce(MAX)``), and
    every payload is padded to it (the padding is counted as sent).
    """
    q = job.quantizer
    target, scale = job.target(group, job.worker_residuals, x, start)
    with job.timed("encode_s"):
        encoded = [job.encode(target, scale)]
        (payload,) = job.finalize(
            job.worker_residuals, target, x, encoded, start, 1 / group.size**2
        )
        wire = payload.to_wire()
    if payload.coding == "entropy":
        wire = yield from _padded_to_the_largest(job, group, wire)
    gathered = wire.new_empty(group.size * wire.numel())
    work = all_gather(job.stats, group, gathered, wire)

    def finish() -> torch.Tensor:
        rows = gathered.view(group.size, wire.numel())
        with job.timed("decode_s"):
            parts = [_decoder(q, payload, row) for row in rows]
            return _mean_into(out, parts, group.size)

    return work, finish


def reduce_scatter_path(
    job: Job, group: Group, x: torch.Tensor, out: torch.Tensor, start: int
) -> Stages:
    """All-to-all of shards, reduce and re-encode the owned shard, all-gather (module doc).

    Entropy-coded shards differ in size: the all-to-all first exchanges their sizes (one
    number per pair of ranks), then sends each shard at its own size (uneven splits, no
    padding); the re-encoded shards are all-gathered padded to the largest, agreed by an
    ``allreduce(MAX)``. Two more stages, each one latency round of a few bytes.
    """
    q, n, me = job.quantizer, group.size, group.index
    coded = q.coding == "entropy"
    bounds = shard_bounds(x.numel(), q.alignment, n)
    target, scale = job.target(group, job.worker_residuals, x, start)
    with job.timed("encode_s"):
        payloads = [job.encode(target[a:b], scale) for a, b in bounds]
        payloads = job.finalize(job.worker_residuals, target, x, payloads, start, 1 / group.size**2)
        send = torch.cat([p.to_wire() for p in payloads])
    mine = payloads[me]
    sizes = [p.nbytes for p in payloads]
    incoming = [mine.nbytes] * n
    if coded:
        counts = torch.tensor(sizes, dtype=torch.int64, device=x.device)
        theirs = torch.empty_like(counts)
        yield all_to_all(job.stats, group, theirs, counts, [1] * n, [1] * n)
        incoming = theirs.tolist()
    received = send.new_empty(sum(incoming))
    yield all_to_all(job.stats, group, received, send, incoming, sizes)

    # this rank owns shard ``me``: average the n payloads, re-encode the mean
    a, b = bounds[me]
    with job.timed("decode_s"):
        rows = received.split(incoming)
        mean = _mean_into(
            torch.empty(b - a, dtype=torch.float32, device=x.device),
            [_decoder(q, mine, row) for row in rows],
            n,
        )
    with job.timed("encode_s"):
        owned = job.with_residual(job.owner_residuals, mean, start + a)
        (reencoded,) = job.finalize(
            job.owner_residuals, owned, mean, [job.encode(owned, scale)], start + a, 1.0
        )
        wire = reencoded.to_wire()
    if coded:
        wire = yield from _padded_to_the_largest(job, group, wire)
    else:  # every rank knows every shard's packed size
        wire = _padded(wire, max(sizes))
    width = wire.numel()
    gathered = wire.new_empty(n * width)
    work = all_gather(job.stats, group, gathered, wire)

    def finish() -> torch.Tensor:
        rows = gathered.view(n, width)
        with job.timed("decode_s"):
            for (lo, hi), layout, row in zip(bounds, payloads, rows, strict=True):
                if hi > lo:
                    read = row if coded else row[: layout.nbytes]
                    q.decode(layout.read_wire(read), out=out[lo:hi])
        return out

    return work, finish


def _padded_to_the_largest(
    job: Job, group: Group, wire: torch.Tensor
) -> Generator[dist.Work, None, torch.Tensor]:
    """Agree on the group's largest ``wire`` (one stage: an ``allreduce(MAX)``); return
    this rank's padded to it."""
    width = torch.tensor([wire.numel()], dtype=torch.int64, device=wire.device)
    yield all_reduce(job.stats, group, width, dist.ReduceOp.MAX)
    return _padded(wire, int(width))


def _padded(wire: torch.Tensor, width: int) -> torch.Tensor:
    if wire.numel() == width:
        return wire
    padded = torch.zeros(width, dtype=wire.dtype, device=wire.device)
    padded[: wire.numel()] = wire
    return padded


PATHS: dict[Collective, Callable[..., Stages | Final]] = {
    Collective.ALLREDUCE: allreduce,
    Collective.ALLGATHER: allgather,
    Collective.REDUCE_SCATTER: reduce_scatter_path,
}


def hierarchical(
    job: Job,
    local: Group,
    node: Group,
    collective: Collective,
    intra_dtype: torch.dtype,
    x: torch.Tensor,
    out: torch.Tensor,
) -> Stages:
    """Reduce inside the node at full precision, quantize only between nodes (qgZ's layout).

    1. A reduce-scatter inside the node in ``intra_dtype``: local rank ``l`` gets the
       node's mean of the ``l``-th of ``L`` equal chunks of the bucket (whole quantization
       buckets; the bucket is zero-padded to ``L`` chunks, the padding never leaves). It
       is an all-to-all of the chunks and a sum in fp32, in rank order (gloo's
       ``reduce_scatter_tensor`` has no future to chain on; the bytes are the same).
    2. Local rank ``l`` reduces its chunk across nodes with the scheme's ``collective``,
       among the ranks of local index ``l``: every node's link carries all ``L`` chunks
       at once, each quantized once per stage.
    3. An all-gather of the chunks inside the node, written into the bucket.

    Ranks of one local index end step 2 with bit-identical chunks, so every rank ends
    step 3 with the same bucket. Error feedback keeps each rank's residual on its chunk.
    """
    numel, ranks = x.numel(), local.size
    align = job.quantizer.alignment
    units = -(-numel // align)
    chunk = -(-units // ranks) * align  # whole quantization buckets, one chunk per rank
    with job.timed("encode_s"):
        padded = x.new_zeros(ranks * chunk, dtype=intra_dtype)
        padded[:numel] = x.reshape(-1) / ranks  # divided first: the sum is the node's mean
    received = padded.new_empty(ranks * chunk)
    yield all_to_all(job.stats, local, received, padded, [chunk] * ranks, [chunk] * ranks)
    with job.timed("decode_s"):
        mine = received.view(ranks, chunk).float().sum(0)

    a, b = min(numel, local.index * chunk), min(numel, (local.index + 1) * chunk)
    mean = torch.empty(b - a, dtype=torch.float32, device=x.device)
    between_nodes = PATHS[collective](job, node, mine[: b - a].float(), mean, a)
    work, finish = yield from as_stages(between_nodes)
    yield work
    finish()

    mine = padded.new_zeros(chunk)
    mine[: b - a] = mean
    gathered = padded.new_empty(ranks * chunk)
    work = all_gather(job.stats, local, gathered, mine)

    def write() -> torch.Tensor:
        return out.copy_(gathered[:numel].view(out.shape))

    return work, write


def shard_bounds(numel: int, align: int, parts: int) -> list[tuple[int, int]]:
    """Cut ``numel`` elements into ``parts`` shards of whole ``align``-element units.

    Units are shared out as evenly as possible (shard sizes differ by one unit at most);
    the last unit may be short, and with fewer units than parts some shards are empty.
    """
    units = -(-numel // align)
    cuts = [min(numel, (j * units // parts) * align) for j in range(parts + 1)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def _decoder(
    q: Quantizer, layout: Payload, row: torch.Tensor
) -> Callable[[torch.Tensor | None], torch.Tensor]:
    """Return a function decoding ``row`` (bytes in ``layout``'s format), into ``out`` if given."""

    def decode(out: torch.Tensor | None) -> torch.Tensor:
        return q.decode(layout.read_wire(row), out=out)

    return decode
