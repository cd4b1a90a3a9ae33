"""Launch collectives in an order every rank agrees on, counting what each one sends.

A bucket's reduction is a sequence of collectives, each depending on the one before (the
reduce-scatter path: an all-to-all, then an all-gather of what it produced). gloo needs
every rank to start the same collectives in the same order on each process group, so no
collective is ever started from a future's callback, whose timing differs between ranks.
Instead a path is written as a generator of stages:

* it runs in the DDP hook body of its bucket up to its first collective, which it yields;
* the :class:`Pipeline` resumes it in the hook body of the next bucket, after waiting for
  that collective, and it launches its next one;
* the last bucket of a step (``bucket.is_last()``) drains every reduction still pending;
* a path ends by returning its final collective and a ``finish`` function, which runs in
  that collective's callback (decoding, no collective) and yields the bucket's mean.

So on every rank bucket ``k``'s second stage starts right after bucket ``k+1``'s first,
whatever the timing: the order depends on the bucket sequence only, which DDP fixes.
A single-stage path simply returns ``(work, finish)`` without yielding.

The launch helpers (:func:`all_reduce`, :func:`all_gather`, :func:`all_to_all`) add to
the step's statistics the bytes the collective's algorithm makes this rank send
(:mod:`lightning_quant.collectives`), how many left its node, and, from a callback, the
seconds until it completed; the group's link fit (:mod:`~lightning_quant.hooks.link`)
learns from the same figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch
import torch.distributed as dist
from torch.futures import Future

from lightning_quant.collectives import Collective, Traffic, all_to_all_traffic, ring_traffic
from lightning_quant.hooks.groups import Group
from lightning_quant.hooks.stats import StepStats

__all__ = [
    "Final",
    "Pipeline",
    "Stages",
    "all_gather",
    "all_reduce",
    "all_to_all",
    "as_stages",
]

Final: TypeAlias = tuple[dist.Work, Callable[[], torch.Tensor]]
Stages: TypeAlias = Generator[dist.Work, None, Final]


def as_stages(path: Stages | Final) -> Stages:
    """Treat a single-stage path's ``(work, finish)`` as stages, for ``yield from``."""
    if isinstance(path, tuple):
        return path
    return (yield from path)


# --- launching and counting --------------------------------------------------------------


def _launched(
    stats: StepStats, group: Group, work: dist.Work | None, traffic: Traffic, payload: int
) -> dist.Work:
    assert work is not None
    start = group.link.launched()
    stats.add(
        payload_bytes=payload,
        sent_bytes=traffic.sent,
        inter_node_bytes=traffic.inter_node,
        collectives=1,
        rounds=traffic.rounds,
    )

    def completed(_: Future[Any]) -> None:
        stats.add(communicate_s=time.perf_counter() - start)
        group.link.completed(start, traffic.sent, traffic.rounds)

    work.get_future().then(completed)
    return work


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def all_reduce(
    stats: StepStats, group: Group, tensor: torch.Tensor, op: Any = dist.ReduceOp.SUM
) -> dist.Work:
    """Start a ring all-reduce of ``tensor`` in place."""
    work = dist.all_reduce(tensor, op=op, group=group.process_group, async_op=True)
    traffic = ring_traffic(
        Collective.ALLREDUCE, _nbytes(tensor), group.ranks, group.index, group.node_of
    )
    return _launched(stats, group, work, traffic, _nbytes(tensor))


def all_gather(
    stats: StepStats, group: Group, output: torch.Tensor, tensor: torch.Tensor
) -> dist.Work:
    """Start a ring all-gather of every member's ``tensor`` into ``output``, in rank order."""
    work = dist.all_gather_single(output, tensor, group=group.process_group, async_op=True)
    traffic = ring_traffic(
        Collective.ALLGATHER, _nbytes(tensor), group.ranks, group.index, group.node_of
    )
    return _launched(stats, group, work, traffic, _nbytes(tensor))


def all_to_all(
    stats: StepStats,
    group: Group,
    output: torch.Tensor,
    tensor: torch.Tensor,
    output_splits: Sequence[int],
    input_splits: Sequence[int],
) -> dist.Work:
    """Start an all-to-all sending ``input_splits[j]`` elements of ``tensor`` to member ``j``."""
    work = dist.all_to_all_single(
        output,
        tensor,
        list(output_splits),
        list(input_splits),
        group=group.process_group,
        async_op=True,
    )
    size = tensor.element_size()
    splits = [count * size for count in input_splits]
    traffic = all_to_all_traffic(splits, group.ranks, group.index, group.node_of)
    return _launched(stats, group, work, traffic, _nbytes(tensor))


# --- the pipeline ------------------------------------------------------------------------


@dataclass
class _Reduction:
    stages: Stages
    future: Future[torch.Tensor]
    work: dist.Work | None = None


class Pipeline:
    """Reductions of a step's buckets, advanced from hook bodies only (see the module)."""

    def __init__(self) -> None:
        self._pending: list[_Reduction] = []

    def run(
        self,
        path: Stages | Final,
        device: torch.device,
        last: bool,
    ) -> Future[torch.Tensor]:
        """Start a bucket's reduction, move the earlier ones one stage on, and drain all at
        the last bucket; return the future DDP waits for.
        """
        future: Future[torch.Tensor] = Future(devices=[device] if device.type == "cuda" else None)
        earlier, self._pending = self._pending, []
        self._resume(_Reduction(as_stages(path), future))
        for reduction in earlier:
            self._advance(reduction)
        while last and self._pending:
            waiting, self._pending = self._pending, []
            for reduction in waiting:
                self._advance(reduction)
        return future

    @property
    def pending(self) -> int:
        """Reductions waiting for a later hook body to move them on."""
        return len(self._pending)

    def _advance(self, reduction: _Reduction) -> None:
        assert reduction.work is not None
        reduction.work.wait()
        self._resume(reduction)

    def _resume(self, reduction: _Reduction) -> None:
        try:
            reduction.work = next(reduction.stages)
        except StopIteration as stop:
            work, finish = stop.value
            work.get_future().then(lambda done: _complete(reduction, done, finish))
            return
        except Exception as error:
            reduction.future.set_exception(error)  # type: ignore[arg-type]
            raise
        self._pending.append(reduction)


def _complete(reduction: _Reduction, done: Future[Any], finish: Callable[[], torch.Tensor]) -> None:
    try:
        done.value()  # raises if the collective failed
        mean = finish()
    except Exception as error:  # DDP raises it when it waits for the bucket
        reduction.future.set_exception(error)  # type: ignore[arg-type]
        return
    reduction.future.set_result(mean)
