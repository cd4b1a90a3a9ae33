"""Codec throughput beside this machine's memory bandwidth, and measured variance vs bounds.

For every stochastic scheme at 2, 4 and 8 bits and tensors of 1M to 64M ``float32``
elements, times ``encode`` and ``decode`` and prints throughput in GB/s of ``float32``
input, next to the bandwidth of ``out.copy_(x)`` into a preallocated tensor of the same
size. Each round times the copy, the encode and the decodes back to back (so all of them
see the same load on the machine); every figure is the median over the rounds, after two
warm-up calls. ``decode`` writes into a preallocated tensor, as the copy does (and as the
DDP hook can, into its bucket: ``decode(payload, out=...)``); the "new tensor" columns
time ``decode(payload)``, which also pays for the fresh pages of its result. The "error
measurement" column times what the DDP hook adds to every compressed bucket to report
``comm/rel_error`` (``hooks/errors.py``): decoding its own payload and the three sums of
squares, as a share of encode plus decode.

The goal: ``(encode + decode) / copy`` at most 6 for qsgd, qsgd_inf and nuqsgd at 4 bits
on 16M elements.

A second table prints each scheme's measured relative variance
``E||Q(v) - v||^2 / ||v||^2`` (Gaussian ``v``, buckets of 512) beside its bound:
QSGD's ``min(d/s^2, sqrt(d)/s)`` (DQ-SGD at a given width is QSGD), NUQSGD's at its
default base (``nuqsgd.variance_bound``; ``benchmarks/nuqsgd_levels.py`` compares the
layouts and bases); the others have no closed bound here.

Run::

    python -m benchmarks.codec            # full sweep, about a minute
    python -m benchmarks.codec --quick    # 1M and 4M elements, fewer repeats
    python -m benchmarks.codec --eager    # also time the eager (reference) path
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lightning_quant.hooks.errors import ErrorSums
from lightning_quant.quantizers import get_quantizer, kernels, nuqsgd
from lightning_quant.quantizers.bucketed import BucketedQuantizer, uniform_levels
from lightning_quant.quantizers.global_qsgd import LANE_BITS

__all__ = ["GOAL_RATIO", "Row", "main", "time_codec", "variance_rows"]

SCHEMES = ("qsgd", "qsgd_inf", "nuqsgd", "dqsgd", "global_qsgd", "global_qsgd_exp")
GOAL_SCHEMES = ("qsgd", "qsgd_inf", "nuqsgd")
GOAL_RATIO = 6.0
GOAL_NUMEL, GOAL_BITS = 1 << 24, 4
BITS = (2, 4, 8)
SIZES = (1 << 20, 1 << 22, 1 << 24, 1 << 26)
QUICK_SIZES = (1 << 20, 1 << 22)


@dataclass(frozen=True)
class Row:
    """One timed codec: median seconds per call, and the copy of the same tensor size.

    ``decode_s`` writes into a preallocated tensor (as the copy does, and as the DDP hook
    decodes into its bucket); ``decode_alloc_s`` returns a new tensor.
    """

    scheme: str
    bits: int
    numel: int
    encode_s: float
    decode_s: float
    decode_alloc_s: float
    copy_s: float
    path: str = "fused"
    measure_s: float = 0.0  # the hook's error measurement: own decode and sums

    @property
    def measure_share(self) -> float:
        """The error measurement's time over encode plus decode."""
        return self.measure_s / (self.encode_s + self.decode_s)

    @property
    def ratio(self) -> float:
        """Encode plus decode (into a preallocated tensor) time over the copy time."""
        return (self.encode_s + self.decode_s) / self.copy_s

    @property
    def ratio_alloc(self) -> float:
        """Encode plus decode (into a new tensor) time over the copy time."""
        return (self.encode_s + self.decode_alloc_s) / self.copy_s


def seconds(fn: Callable[[], object]) -> float:
    """Return the wall time of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_codec(scheme: str, bits: int, x: torch.Tensor, repeats: int, eager: bool = False) -> Row:
    """Time one scheme's encode and decode of ``x`` against ``out.copy_(x)``.

    Each round times the copy, the encode and the decodes back to back, so that all see the
    same load on the machine; every figure is the median over the rounds, after warm-up.
    """
    q = get_quantizer(scheme, bits=bits)
    gen = torch.Generator().manual_seed(0)
    encode = q.encode_eager if eager else q.encode  # type: ignore[attr-defined]
    decode = q.decode_eager if eager else q.decode  # type: ignore[attr-defined]
    out = torch.empty_like(x)
    payload = encode(x, gen)
    calls = {
        "copy": lambda: out.copy_(x),
        "encode": lambda: encode(x, gen),
        "decode": lambda: decode(payload, out=out),
        "decode_alloc": lambda: decode(payload),
        "measure": lambda: ErrorSums().add(decode(payload).reshape(-1), x, x, 0.25),
    }
    for fn in calls.values():
        for _ in range(0 if eager else 2):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            for _ in range(3 if name == "copy" else 1):  # the copy is cheap: more samples
                samples[name].append(seconds(fn))
    median = {name: statistics.median(times) for name, times in samples.items()}
    path = "eager" if eager or not kernels.available() else "fused"
    return Row(
        scheme,
        bits,
        x.numel(),
        median["encode"],
        median["decode"],
        median["decode_alloc"],
        median["copy"],
        path,
        median["measure"],
    )


def gbps(numel: int, seconds: float) -> float:
    """Return GB/s of float32 input moved in ``seconds``."""
    return numel * 4 / seconds / 1e9


def throughput_table(rows: Sequence[Row]) -> str:
    """Format the rows as Markdown: copy bandwidth per size, then one line per codec."""
    copies: dict[int, list[float]] = {}
    for r in rows:
        copies.setdefault(r.numel, []).append(r.copy_s)
    lines = ["| numel | copy GB/s (median over the sweep) |", "|---:|---:|"]
    for n, times in copies.items():
        lines.append(f"| {_numel(n)} | {gbps(n, statistics.median(times)):.1f} |")
    lines += [
        "",
        "| scheme | bits | numel | path | encode GB/s | decode GB/s | (enc+dec)/copy "
        "| decode to new tensor GB/s | (enc+dec new)/copy | error measurement / (enc+dec) |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.scheme} | {r.bits} | {_numel(r.numel)} | {r.path} | "
            f"{gbps(r.numel, r.encode_s):.2f} | {gbps(r.numel, r.decode_s):.2f} | "
            f"**{r.ratio:.1f}x** | {gbps(r.numel, r.decode_alloc_s):.2f} | "
            f"{r.ratio_alloc:.1f}x | {r.measure_share:.2f} |"
        )
    return "\n".join(lines)


def goal_lines(rows: Sequence[Row]) -> list[str]:
    """Say, per goal scheme, whether 16M elements at 4 bits encode+decode within 6x copy."""
    out = []
    for scheme in GOAL_SCHEMES:
        found = [
            r
            for r in rows
            if (r.scheme, r.bits, r.numel, r.path) == (scheme, GOAL_BITS, GOAL_NUMEL, "fused")
        ]
        if not found:
            out.append(f"goal {scheme}: not measured (needs 16M elements at 4 bits)")
            continue
        ratio = found[0].ratio
        verdict = "met" if ratio <= GOAL_RATIO else "NOT met"
        out.append(
            f"goal {scheme}: encode+decode of 16M at 4 bits = {ratio:.1f}x copy "
            f"(target <= {GOAL_RATIO:g}x): {verdict}"
        )
    return out


# --- variance -----------------------------------------------------------------------------


def variance_bound(scheme: str, bits: int, d: int) -> float | None:
    """Return the relative variance bound for buckets of ``d``, or None if there is none."""
    if scheme in ("qsgd", "dqsgd"):
        s = uniform_levels(bits)
        return min(d / s**2, math.sqrt(d) / s)
    if scheme == "nuqsgd":
        return nuqsgd.variance_bound(bits, nuqsgd.DEFAULT_BASES["paper"][bits], "paper", d)
    return None


def measured_variance(
    scheme: str, bits: int, d: int = 512, buckets: int = 8, draws: int = 200
) -> float:
    """Return ``mean ||Q(v) - v||^2 / ||v||^2`` over ``draws`` encodings of a Gaussian v."""
    gen = torch.Generator().manual_seed(bits)
    v = torch.randn(d * buckets, generator=gen)
    q = get_quantizer(scheme, bits=bits)
    if isinstance(q, BucketedQuantizer):
        q = get_quantizer(scheme, bits=bits, bucket_size=d)
    samples = q.decode(q.encode(v.repeat(draws), gen)).view(draws, -1)
    return ((samples - v).pow(2).sum(1).mean() / v.pow(2).sum()).item()


VarianceRow = tuple[str, int, float, float | None]


def variance_rows(bits: Sequence[int] = BITS, d: int = 512) -> list[VarianceRow]:
    """Return ``(scheme, bits, measured, bound)`` for every scheme and width."""
    return [
        (scheme, b, measured_variance(scheme, b, d), variance_bound(scheme, b, d))
        for scheme in SCHEMES
        for b in bits
    ]


def variance_table(rows: Sequence[VarianceRow], d: int = 512) -> str:
    """Format measured relative variance beside its bound as a Markdown table."""
    lines = [
        f"| scheme | bits | measured E‖Q(v)-v‖²/‖v‖² | bound (d={d}) | within |",
        "|---|---:|---:|---:|---|",
    ]
    for scheme, bits, measured, bound in rows:
        if bound is None:
            lines.append(f"| {scheme} | {bits} | {measured:.4g} | no closed bound | - |")
        else:
            within = "yes" if measured <= bound else "NO"
            lines.append(f"| {scheme} | {bits} | {measured:.4g} | {bound:.4g} | {within} |")
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> list[Row]:
    """Run the sweep and print both tables; return the throughput rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1M and 4M elements, 3 repeats")
    parser.add_argument("--sizes", type=int, nargs="+", help="element counts to time")
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES)
    parser.add_argument("--bits", type=int, nargs="+", default=list(BITS))
    parser.add_argument("--repeats", type=int, help="timed rounds per codec (median)")
    parser.add_argument("--eager", action="store_true", help="also time the eager path")
    parser.add_argument("--no-variance", action="store_true", help="skip the variance table")
    args = parser.parse_args(argv)
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)

    start = time.perf_counter()
    warm = get_quantizer("qsgd")
    warm.decode(warm.encode(torch.randn(1 << 16)))  # loads (or compiles) the kernels
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, fused kernels "
        f"{'on' if kernels.available() else 'unavailable'} "
        f"(first call {time.perf_counter() - start:.2f} s)"
    )
    rows: list[Row] = []
    for numel in sizes:
        x = torch.randn(numel, generator=torch.Generator().manual_seed(numel))
        for scheme in args.schemes:
            for bits in args.bits:
                if scheme == "global_qsgd" and bits not in LANE_BITS:
                    continue
                rows.append(time_codec(scheme, bits, x, args.repeats or _repeats(numel, args)))
                if args.eager:
                    rows.append(time_codec(scheme, bits, x, 1, eager=True))
        del x
    print(throughput_table(rows))
    print()
    for line in goal_lines(rows):
        print(line)
    if not args.no_variance:
        print()
        print(variance_table(variance_rows(args.bits)))
    return rows


def _repeats(numel: int, args: argparse.Namespace) -> int:
    """More rounds for small tensors: they are quick, and noisier."""
    if args.quick:
        return 3
    return 15 if numel <= 1 << 22 else 7


def _numel(n: int) -> str:
    return f"{n >> 20}M" if n % (1 << 20) == 0 else str(n)


if __name__ == "__main__":
    main()
