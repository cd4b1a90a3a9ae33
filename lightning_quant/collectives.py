"""The collectives a scheme can reduce with, what each costs per rank, and ``auto``'s choice.

A scheme declares the collectives it supports on its class (``Quantizer.collectives``, in
order of preference); :func:`choose_collective` picks one for a world size, and the DDP
hook dispatches on the choice. The byte counts here follow the algorithms gloo (and NCCL's
ring) run, so the hook can count what each rank really transmits:

==================  ====================================  ==========================
collective          bytes one rank sends, payload ``q``    sequential message rounds
==================  ====================================  ==========================
ring all-reduce     ``2 (n-1)/n * q``                       ``2 (n-1)``
ring all-gather     ``(n-1) * q``                           ``n - 1``
all-to-all          ``(n-1)/n * q`` (its shards for others) ``n - 1``
reduce-scatter      all-to-all + all-gather of a ``q/n``    ``2 (n-1)``
(two stages)        shard: ``2 (n-1)/n * q``
==================  ====================================  ==========================

The ring collectives send everything to the next rank of the group (``rank + 1 mod n``);
an all-to-all sends each shard straight to its owner. Knowing which node each rank sits
on, :class:`Traffic` also says how many of those bytes leave the node.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "AUTO",
    "Collective",
    "check_collective",
    "Traffic",
    "all_to_all_traffic",
    "choose_collective",
    "fp32_allreduce_bytes",
    "message_rounds",
    "ring_traffic",
    "sent_bytes",
]

log = logging.getLogger(__name__)

AUTO = "auto"


class Collective(StrEnum):
    """How a bucket's payloads are combined across ranks."""

    ALLREDUCE = "allreduce"  # payloads that sum: one ring all-reduce
    ALLGATHER = "allgather"  # every rank receives every payload and averages them
    REDUCE_SCATTER = "reduce_scatter"  # all-to-all of shards, reduce, re-encode, all-gather


def sent_bytes(collective: Collective | str, payload_bytes: float, world_size: int) -> float:
    """Return the bytes one rank sends to reduce a payload of ``payload_bytes`` (table above)."""
    n = world_size
    if n < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    collective = Collective(collective)
    if collective is Collective.ALLGATHER:
        return (n - 1) * payload_bytes
    return 2 * (n - 1) / n * payload_bytes  # ring all-reduce, or the two-stage reduce-scatter


def message_rounds(collective: Collective | str, world_size: int) -> int:
    """Return the sequential message rounds of ``collective`` over ``world_size`` ranks."""
    n = world_size
    if n < 2:
        return 0
    return n - 1 if Collective(collective) is Collective.ALLGATHER else 2 * (n - 1)


def fp32_allreduce_bytes(raw_bytes: float, world_size: int) -> float:
    """Return what plain fp32 DDP sends per rank for ``raw_bytes`` of gradient."""
    return sent_bytes(Collective.ALLREDUCE, raw_bytes, world_size)


def choose_collective(
    name: str,
    supported: Sequence[Collective],
    requested: str,
    world_size: int,
    allreduce_limit: int | None = None,
) -> Collective:
    """Return the collective a scheme uses at ``world_size``.

    Args:
        name: the scheme, for messages.
        supported: the collectives it declares, in order of preference.
        requested: ``"auto"`` or a :class:`Collective` value.
        world_size: ranks taking part.
        allreduce_limit: the most ranks whose payloads sum without overflow (Global-QSGD's
            lanes), or ``None`` for no limit.

    ``auto`` takes the supported collective that sends the fewest bytes per rank, the
    earlier one on a tie: at 2 ranks an all-gather sends as much as a reduce-scatter and
    quantizes once; from 3 ranks on the reduce-scatter sends less. An all-reduce beyond
    ``allreduce_limit`` falls back, with one log line, to the next supported collective.

    Raises:
        ValueError: ``requested`` is not one the scheme supports (the message lists them).
    """
    choice = check_collective(name, supported, requested) or min(
        supported, key=lambda c: (sent_bytes(c, 1.0, world_size), supported.index(c))
    )
    if choice is Collective.ALLREDUCE and allreduce_limit is not None:
        if world_size > allreduce_limit:
            fallback = next((c for c in supported if c is not Collective.ALLREDUCE), None)
            if fallback is None:
                raise ValueError(
                    f"{name} sums payloads of at most {allreduce_limit} ranks and has no "
                    f"other collective; got world size {world_size}"
                )
            log.warning(
                "%s: %d ranks overflow its all-reduce lanes (at most %d); using %s",
                name, world_size, allreduce_limit, fallback,
            )  # fmt: skip
            return fallback
    return choice


def check_collective(
    name: str, supported: Sequence[Collective], requested: str
) -> Collective | None:
    """Return the collective ``requested`` names (``None`` for ``auto``).

    Raises:
        ValueError: it is unknown, or not one scheme ``name`` supports; the message lists
            the allowed values.
    """
    if requested == AUTO:
        return None
    allowed = ", ".join([AUTO, *supported])
    try:
        wanted = Collective(requested)
    except ValueError:
        raise ValueError(
            f"unknown collective {requested!r} for {name}; choose one of: {allowed}"
        ) from None
    if wanted not in supported:
        raise ValueError(f"{name} cannot reduce with {wanted}; choose one of: {allowed}")
    return wanted


@dataclass(frozen=True)
class Traffic:
    """What one launched collective costs this rank.

    Attributes:
        sent: bytes this rank transmits.
        inter_node: the part of ``sent`` that goes to ranks on other nodes.
        rounds: sequential message rounds (each pays the link's latency once).
    """

    sent: int
    inter_node: int
    rounds: int


def ring_traffic(
    kind: Collective, nbytes: int, group_ranks: Sequence[int], me: int, node_of: Sequence[int]
) -> Traffic:
    """Return this rank's traffic in a ring all-reduce or all-gather over ``group_ranks``.

    Args:
        kind: ``ALLREDUCE`` (``nbytes``: the tensor) or ``ALLGATHER`` (``nbytes``: one
            rank's contribution).
        group_ranks: the group's members as global ranks, in group-rank order.
        me: this rank's index in ``group_ranks``.
        node_of: the node of every global rank.
    """
    n = len(group_ranks)
    if n < 2:
        return Traffic(0, 0, 0)
    sent, rounds = round(sent_bytes(kind, nbytes, n)), message_rounds(kind, n)
    successor = group_ranks[(me + 1) % n]
    remote = node_of[successor] != node_of[group_ranks[me]]
    return Traffic(sent, sent if remote else 0, rounds)


def all_to_all_traffic(
    splits: Sequence[int], group_ranks: Sequence[int], me: int, node_of: Sequence[int]
) -> Traffic:
    """Return this rank's traffic in an all-to-all sending ``splits[j]`` bytes to member ``j``."""
    mine = node_of[group_ranks[me]]
    sent = sum(size for j, size in enumerate(splits) if j != me)
    inter = sum(
        size for j, size in enumerate(splits) if j != me and node_of[group_ranks[j]] != mine
    )
    return Traffic(sent, inter, max(len(splits) - 1, 0))
