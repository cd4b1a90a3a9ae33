"""Error-feedback memory: what encoding lost, carried into the next step's encoding.

One :class:`ResidualMemory` holds a vector per DDP bucket, as long as the bucket, keyed by
the parameters laid out in it. A path may own only a region of the bucket (its shard on
the reduce-scatter path); the memory then holds that region's error and zeros elsewhere.
When DDP rebuilds its buckets, or a checkpoint is loaded, the vectors are rebuilt from
per-parameter pieces, so the error of every parameter follows it into its new bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["ResidualMemory"]


@dataclass
class _Bucket:
    keys: tuple[str, ...]
    sizes: tuple[int, ...]
    values: torch.Tensor


class ResidualMemory:
    """Per-bucket error-feedback residuals, portable across bucket layouts by parameter name.

    Args:
        param_names: ``id(parameter) -> name``, filled by ``QuantizedCommState.bind``.
    """

    def __init__(self, param_names: dict[int, str]) -> None:
        self._param_names = param_names
        self._buckets: dict[int, _Bucket] = {}
        self._restored: dict[str, torch.Tensor] = {}  # loaded pieces not yet re-attached

    def add(self, bucket: dist.GradBucket, values: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Return ``values`` (the bucket's elements from ``start`` on) plus their residual."""
        memory = self._memory(bucket, values.device)
        return values + memory[start : start + values.numel()].to(values.dtype)

    def store(self, bucket: dist.GradBucket, error: torch.Tensor, start: int = 0) -> None:
        """Remember ``error`` for the bucket's elements from ``start`` on; zero elsewhere."""
        memory = self._memory(bucket, error.device)
        memory.zero_()
        memory[start : start + error.numel()] = error.detach().reshape(-1)
        for key in self._buckets[bucket.index()].keys:
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

    def _layout(self, bucket: dist.GradBucket) -> tuple[tuple[str, ...], tuple[int, ...]]:
        params = bucket.parameters()
        keys = tuple(self._param_names.get(id(p), f"param@{id(p)}") for p in params)
        return keys, tuple(p.numel() for p in params)

    def _memory(self, bucket: dist.GradBucket, device: torch.device) -> torch.Tensor:
        """Return the bucket's residual vector; a new layout is rebuilt by parameter name."""
        keys, sizes = self._layout(bucket)
        memory = self._buckets.get(bucket.index())
        if memory is not None and memory.keys == keys:
            return memory.values
        self._restored = self.pieces()  # nothing of the old layout is lost
        rebuilt = [
            self._restored.get(k, torch.zeros(n)).to(device, torch.float32).reshape(-1)
            for k, n in zip(keys, sizes, strict=True)
        ]
        flat = torch.cat(rebuilt) if rebuilt else torch.zeros(0, device=device)
        self._buckets[bucket.index()] = _Bucket(keys, sizes, flat)
        return flat
