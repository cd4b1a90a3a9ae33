"""What one worker puts on the wire for one tensor, and how it reads back."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import ModuleType

import torch

__all__ = ["CODINGS", "SCALE_DTYPE", "Payload", "check_coding"]

SCALE_DTYPE = torch.float32
CODINGS = ("packed", "entropy")  # how a payload's codes go on the wire


@dataclass(frozen=True)
class Payload:
    """What one worker puts on the wire for one tensor.

    ``data`` and ``scales`` are exactly the bytes the DDP hook hands to the collective
    (``to_wire`` concatenates them); ``nbytes`` counts them and nothing else. Everything
    else (shape, dtype, bits, levels) is agreed by all ranks in advance and never sent.

    Attributes:
        data: packed codes, 1-D ``uint8``.
        scales: one ``float32`` scale per bucket (Global-QSGD: the one shared scale).
        shape: shape of the encoded tensor.
        numel: number of elements of the encoded tensor.
        dtype: dtype the decoder restores.
        bits: wire bits per coordinate, sign included.
        levels: positive quantization levels ``s`` the codes refer to (0 for floats).
        summands: how many workers' codes ``data`` holds summed (Global-QSGD allreduce).
        coding: ``"packed"`` (codes at ``bits`` each: ``nbytes`` follows from ``numel``)
            or ``"entropy"`` (rANS-coded: ``nbytes`` varies with the values,
            :mod:`lightning_quant.quantizers.kernels.coded`).
    """

    data: torch.Tensor
    scales: torch.Tensor
    shape: torch.Size
    numel: int
    dtype: torch.dtype
    bits: int
    levels: int = 0
    summands: int = 1
    coding: str = "packed"

    @property
    def nbytes(self) -> int:
        """Bytes this payload puts on the wire: packed codes plus scales."""
        return self.data.numel() + self.scales.numel() * self.scales.element_size()

    def to_wire(self) -> torch.Tensor:
        """Return the one ``uint8`` buffer that crosses the wire: scales, then codes (coded
        ones sealed with a checksum of both, as they are now)."""
        wire = torch.cat([self.scales.reshape(-1).view(torch.uint8), self.data])
        if self.sealed:
            split = self.scales.numel() * self.scales.element_size()
            _coded().seal(wire[split:].numpy(), wire[:split].numpy())
        return wire

    @property
    def sealed(self) -> bool:
        """Whether its data carries a header with a checksum (entropy-coded, and enough
        codes for a header to pay)."""
        if self.coding != "entropy":
            return False
        return _coded().coded_applies(self.numel, self.bits)

    def seal(self) -> Payload:
        """Write the checksum of its scales and data into its data (coded payloads only)."""
        if self.sealed:
            _coded().seal(self.data.numpy(), self.scales.reshape(-1).contiguous().numpy())
        return self

    def check_seal(self, bucket_size: int | None) -> None:
        """Raise ``ValueError`` unless a coded payload's checksum matches its scales and
        data; ``bucket_size`` is its scales' (``None``: one shared scale)."""
        if self.sealed:
            coded = _coded()
            size = bucket_size or coded.shared_size(self.numel)
            scales = self.scales.reshape(-1).contiguous().numpy()
            coded.check_seal(self.data.numpy(), scales, self.numel, size, self.bits)

    def read_wire(self, wire: torch.Tensor) -> Payload:
        """Return a payload of this layout whose bytes are read from ``wire``.

        A packed layout takes exactly its ``nbytes``; an entropy-coded one takes its scales
        and whatever follows (padding included: the decoder reads only what its header
        says, and checks it).
        """
        split = self.scales.numel() * self.scales.element_size()
        fixed = self.coding != "entropy"
        if (fixed and wire.numel() != self.nbytes) or wire.numel() < split:
            raise ValueError(
                f"wire buffer has {wire.numel()} bytes, this layout needs "
                f"{self.nbytes if fixed else f'at least {split}'}"
            )
        scales = wire[:split].clone().view(self.scales.dtype)
        return dataclasses.replace(self, data=wire[split:], scales=scales)


def check_coding(coding: str) -> None:
    """Raise ``ValueError`` unless ``coding`` is one of :data:`CODINGS`."""
    if coding not in CODINGS:
        raise ValueError(f"coding must be one of {', '.join(CODINGS)}, got {coding!r}")


def _coded() -> ModuleType:
    # Imported on use: the kernels import this module.
    from lightning_quant.quantizers.kernels import coded

    return coded
