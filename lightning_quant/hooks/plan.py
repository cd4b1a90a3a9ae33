"""Which elements of a DDP bucket go compressed, by parameter."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lightning_quant.hooks.feedback import Layout

__all__ = ["BucketPlan"]


@dataclass(frozen=True)
class BucketPlan:
    """Which elements of a DDP bucket go compressed, by parameter.

    Attributes:
        ids: ``id`` of each parameter, in bucket order (to notice a new layout).
        runs: ``(start, end, compressed)`` runs of consecutive elements.
        compressed: the layout of the compressed parameters, packed one after the other.
        plain: the layout of the rest.
    """

    ids: tuple[int, ...]
    runs: tuple[tuple[int, int, bool], ...]
    compressed: Layout
    plain: Layout

    @classmethod
    def of(
        cls,
        index: int,
        params: list[torch.Tensor],
        names: dict[int, str],
        compresses: Callable[[torch.Tensor], bool],
    ) -> BucketPlan:
        runs: list[tuple[int, int, bool]] = []
        groups: dict[bool, list[tuple[str, int]]] = {True: [], False: []}
        offset = 0
        for param in params:
            kind = compresses(param)
            groups[kind].append((names.get(id(param), f"param@{id(param)}"), param.numel()))
            end = offset + param.numel()
            if runs and runs[-1][2] == kind:
                runs[-1] = (runs[-1][0], end, kind)
            else:
                runs.append((offset, end, kind))
            offset = end

        def layout(kind: bool) -> Layout:
            keys, sizes = zip(*groups[kind], strict=True) if groups[kind] else ((), ())
            return Layout(index, tuple(keys), tuple(sizes))

        return cls(tuple(id(p) for p in params), tuple(runs), layout(True), layout(False))

    @property
    def mixed(self) -> bool:
        return len({kind for _, _, kind in self.runs}) > 1

    @property
    def compresses_any(self) -> bool:
        return any(kind for _, _, kind in self.runs)
