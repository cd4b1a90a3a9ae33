"""What the CPU and the GPU kernels share: the level sets, and the lookup of a table.

Level sets (``mode``): QSGD's uniform ones, NUQSGD's base-1/2 ones, Global-QSGD's offset
lanes, and any ascending table of magnitudes (NUQSGD at other bases; without a zero level
the smallest one is crossed through zero, as in the NUQSGD authors' code).
"""

from __future__ import annotations

import numpy as np

__all__ = ["EXPONENTIAL", "GUIDE_SHIFT", "SIGNED", "TABLE", "UNIFORM", "lookup", "mode_of"]

UNIFORM, EXPONENTIAL, SIGNED, TABLE = 0, 1, 2, 3
GUIDE_SHIFT = 16  # a ratio's float32 bits >> 16 (exponent and 7 mantissa bits) index a guide


def lookup(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(table, guide)`` for the TABLE mode: ``guide[u]`` is the last level at or
    below the smallest ratio in ``[0, 1]`` whose ``float32`` bits start with ``u``.

    Non-negative floats order as their bits do, so the guide puts a ratio within one
    comparison of its level (where a bisection would take one per bit of the width), as
    long as neighbouring nonzero levels are more than ``2**-7`` apart, relatively.
    """
    table = np.ascontiguousarray(table, np.float32)
    nonzero = table[table > 0]
    if np.any(nonzero[1:] <= nonzero[:-1] * (1 + 2.0**-7)):
        raise ValueError("levels must be more than 1/128 apart, relatively (a base <= 0.99)")
    floors = (np.arange((0x3F800000 >> GUIDE_SHIFT) + 1, dtype=np.uint32) << GUIDE_SHIFT).view(
        np.float32
    )
    guide = (np.searchsorted(table, floors, side="right") - 1).clip(0, None).astype(np.uint8)
    return table, guide


def mode_of(exponential: bool, table: object | None) -> int:
    """Return the mode of a bucketed scheme's levels: a table's, else base-1/2 or uniform."""
    if table is not None:
        return TABLE
    return EXPONENTIAL if exponential else UNIFORM
