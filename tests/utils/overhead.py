"""The bytes every step of the quantized hook adds to its paths' own (hooks/hook.py, state.py).

* the NaN guard: one ``allreduce(MAX)`` of a 4-byte flag per bucket with a compressed part
  (on a flat path, 8 bytes for a scheme with a shared scale: the flag and the scale);
* the error share: one all-reduce of ``3 * buckets + 3`` floats at the step's end, when
  any bucket was encoded (a step all in fp32 shares nothing, as plain DDP).
"""

from __future__ import annotations

from lightning_quant.collectives import Collective, Traffic, ring_traffic


def ring(nbytes: int, n: int) -> int:
    """What a ring all-reduce of ``nbytes`` makes one of ``n`` ranks send."""
    return round(2 * (n - 1) / n * nbytes)


def share_bytes(buckets: int) -> int:
    return 4 * (3 * buckets + 3)


def step_overhead(
    guarded: int, buckets: int, n: int, shared_scale: bool = False
) -> list[tuple[int, int]]:
    """Return ``(payload, sent)`` of each extra collective of a step on a flat path."""
    share = [(share_bytes(buckets), ring(share_bytes(buckets), n))] if guarded else []
    guard = 8 if shared_scale else 4
    return [(guard, ring(guard, n))] * guarded + share


def step_overhead_traffic(
    guarded: int, buckets: int, ranks: range, node_of: list[int]
) -> list[Traffic]:
    """The same over the whole world of a hierarchical run, as rank 0 sends it."""
    sizes = [4] * guarded + ([share_bytes(buckets)] if guarded else [])
    return [ring_traffic(Collective.ALLREDUCE, s, ranks, 0, node_of) for s in sizes]
