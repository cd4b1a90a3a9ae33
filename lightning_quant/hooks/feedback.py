"""Error-feedback memory: what encoding lost, carried into the next step's encoding.

One :class:`ResidualMemory` holds a vector per :class:`Layout` (the parameters of a DDP
bucket that go compressed, laid out flat), as long as the layout. A path may own only a
region of it (its shard on the reduce-scatter path); the memory then holds that region's
error and zeros elsewhere. When DDP rebuilds its buckets, or a checkpoint is loaded, the
vectors are rebuilt from per-parameter pieces, so the error of every parameter follows
it into its new bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Layout", "ResidualMemory"]


@dataclass(frozen=True)
class Layout:
    """Parameters laid out one after the other in a flat tensor a path reduces.

    Attributes:
        index: the DDP bucket they belong to.
        keys: their names (``param@<id>`` for a parameter of an unbound model).
        sizes: their element counts.
    """

    index: int
    keys: tuple[str, ...]
    sizes: tuple[int, ...]


@dataclass
class _Bucket:
    keys: tuple[str, ...]
    sizes: tuple[int, ...]
    values: torch.Tensor


class ResidualMemory:
    """Per-bucket error-feedback residuals, portable across bucket layouts by parameter name."""

    def __init__(self) -> None:
        self._buckets: dict[int, _Bucket] = {}
        self._restored: dict[str, torch.Tensor] = {}  # loaded pieces not yet re-attached

    def add(self, layout: Layout, values: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Return ``values`` (the layout's elements from ``start`` on) plus their residual."""
        memory = self._memory(layout, values.device)
        return values.float() + memory[start : start + values.numel()]

    def store(self, layout: Layout, error: torch.Tensor, start: int = 0) -> None:
        """Remember ``error`` for the layout's elements from ``start`` on; zero elsewhere."""
        memory = self._memory(layout, error.device)
        memory.zero_()
        memory[start : start + error.numel()] = error.detach().reshape(-1)
        for key in layout.keys:
            self._restored.pop(key, None)

    def pieces(self) -> dict[str, torch.Tensor]:
        """Return every remembered residual split into per-parameter pieces, by name."""
        pieces = dict(self._restored)
        for memory in self._buckets.values():
            if sum(memory.sizes) == memory.values.numel():
                pieces.update(
                    zip(memory.keys, memory.values.split(list(memory.sizes)), strict=True)
                )
        return pieces

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.pieces().items()}

    def load_state_dict(self, pieces: dict[str, torch.Tensor]) -> None:
        """Restore per-parameter pieces; they attach to their buckets lazily."""
        self._buckets.clear()
        self._restored = dict(pieces)

    def _memory(self, layout: Layout, device: torch.device) -> torch.Tensor:
        """Return the layout's residual vector; a new layout is rebuilt by parameter name."""
        keys, sizes = layout.keys, layout.sizes
        memory = self._buckets.get(layout.index)
        if memory is not None and memory.keys == keys:
            return memory.values
        self._restored = self.pieces()  # nothing of the old layout is lost
        rebuilt = [
            self._restored.get(k, torch.zeros(n)).to(device, torch.float32).reshape(-1)
            for k, n in zip(keys, sizes, strict=True)
        ]
        flat = torch.cat(rebuilt) if rebuilt else torch.zeros(0, device=device)
        self._buckets[layout.index] = _Bucket(keys, sizes, flat)
        return flat
