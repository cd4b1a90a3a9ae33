"""Entropy coding on the wire: bits per coordinate, coder speed, the variance-bytes frontier.

Three measurements, on one quiet core (Numba and torch held to one thread):

1. **Bits per coordinate** for every stochastic scheme at widths 2 to 8, on one real
   gradient of ``lm`` and of ``cnn`` (each flattened, as DDP's bucket holds it) and on a
   Gaussian vector: the packed payload, the entropy-coded one (scales and headers
   included, as on the wire), and the order-0 entropy of the packed codes (per coder task,
   as the coder's tables see them; a zero level, whatever its sign, one symbol) plus the
   same scales and headers. The goal: 4-bit qsgd at most 1.3 bits on ``lm``, and every
   coded payload of 64K coordinates or more within 3% of its entropy bound.
2. **Coder speed** for 4-bit qsgd on 16M Gaussian coordinates: encode and decode in M
   coordinates/s and as a multiple of one ``copy_`` of the same tensor, for the packed
   codes, our fused rANS coder, and two well-kept libraries applied to the packed codes:
   ``constriction`` (ANS in Rust: a categorical model from the codes' counts, then
   ``AnsCoder``) and ``zstandard`` (level 1 on the packed bytes). The libraries' figures
   include the quantization pass they need first (the packed encode; decode: their
   decode plus the packed decode), since ours is fused with it. The goal: 150M/s each.
3. **The frontier**: relative variance ``E||Q(g)-g||^2/||g||^2`` against wire bits per
   coordinate on the ``lm`` gradient, every scheme x width x coding (coded and packed
   payloads decode to the same values, so they share a variance and differ in bytes).
   Saved as a PNG (Altair, rendered by vl-convert); the goal check says, for each packed
   point between 1 and 8 bits, whether some coded configuration is better at no more bytes.

Run::

    python -m benchmarks.coding            # everything, ~5 minutes, writes results/coding.*
    python -m benchmarks.coding --quick    # Gaussian and 4M coordinates only
    python -m benchmarks.coding --sweeps results/large-coding-*.json  # step time vs link
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.sweep.plan import BASELINE
from benchmarks.tasks import TASKS
from lightning_quant.packing import unpack
from lightning_quant.quantizers import Quantizer, available_quantizers, get_quantizer
from lightning_quant.quantizers.kernels import _cpu_rans, coded

__all__ = ["bits_rows", "frontier_rows", "gradient", "main", "speed_rows"]

RESULTS = Path(__file__).parent / "results"
WIDTHS = range(2, 9)
GOAL_LM_BITS, GOAL_ENTROPY_SLACK, GOAL_SPEED = 1.3, 1.03, 150.0


def schemes() -> list[str]:
    """Every registered scheme that sends codes (not the float casts)."""
    return [name for name in available_quantizers() if get_quantizer(name).lossy]


def _build(scheme: str, bits: int, coding: str = "packed") -> Quantizer | None:
    try:
        return get_quantizer(scheme, bits=bits, coding=coding)
    except ValueError:  # a width the scheme does not take
        return None


def _encode(q: Quantizer, x: torch.Tensor, seed: int):
    scale = x.abs().amax().reshape(1) if q.shared_scale else None
    return q.encode(x, torch.Generator().manual_seed(seed), scale=scale)


def gradient(task: str, seed: int = 0) -> torch.Tensor:
    """One flattened gradient of ``task``'s model on its first training batch."""
    torch.manual_seed(seed)
    model = TASKS[task].model()
    batch = next(iter(TASKS[task].loaders(seed=seed)[0]))
    loss = model.training_step(batch, 0)
    assert isinstance(loss, torch.Tensor)
    loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def _entropy_bits(symbols: np.ndarray) -> float:
    """Order-0 entropy of ``symbols`` in bits, per coder task (each has its own table)."""
    total = 0.0
    for start in range(0, symbols.size, _cpu_rans.CODED_TASK):
        part = symbols[start : start + _cpu_rans.CODED_TASK]
        counts = np.bincount(part)
        p = counts[counts > 0] / part.size
        total += float(-(p * np.log2(p)).sum()) * part.size
    return total


def bits_rows(sources: dict[str, torch.Tensor]) -> list[dict]:
    """Bits per coordinate per source x scheme x width: packed, coded, and two entropy
    bounds (scales and headers added to both): of the packed codes as they are, and of
    the symbols the coder sees, where every code that decodes to zero is one symbol (a
    zero level's sign is noise)."""
    rows = []
    for source, x in sources.items():
        n = x.numel()
        for scheme in schemes():
            for bits in WIDTHS:
                packed_q, coded_q = _build(scheme, bits), _build(scheme, bits, "entropy")
                if packed_q is None or coded_q is None:
                    continue
                packed, sent = _encode(packed_q, x, 1), _encode(coded_q, x, 1)
                codes = unpack(packed.data, bits, n).numpy().astype(np.int64)
                zero = (packed_q.decode(packed).reshape(-1) == 0).numpy()
                overhead = _overhead_bytes(coded_q, sent, bits)
                codes_bound = _entropy_bits(codes) / 8 + overhead
                bound = _entropy_bits(np.where(zero, 256, codes)) / 8 + overhead
                rows.append({
                    "source": source, "scheme": scheme, "bits": bits, "numel": n,
                    "packed": 8 * packed.nbytes / n, "coded": 8 * sent.nbytes / n,
                    "codes_entropy": 8 * codes_bound / n, "symbols_entropy": 8 * bound / n,
                    "vs_entropy": sent.nbytes / bound,
                })  # fmt: skip
    return rows


def _overhead_bytes(q: Quantizer, payload, bits: int) -> int:
    """Bytes of a coded payload that are not its streams: scales and headers."""
    data = payload.data.numpy()
    scales = payload.nbytes - data.size
    if not payload.sealed or data[0] == coded.PACKED:  # the packed codes as they are
        return scales + (coded.PREFIX if payload.sealed else 0)
    size = getattr(q.config, "bucket_size", None) or coded.shared_size(payload.numel)
    return scales + coded.header_bytes(coded.task_layout(payload.numel, size)[1], bits)


def _median_s(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed_rows(numel: int, repeats: int) -> list[dict]:
    """Encode and decode speed of 4-bit qsgd's codes, four ways, on one core."""
    import constriction
    import zstandard

    x = torch.randn(numel, generator=torch.Generator().manual_seed(0))
    out = torch.empty_like(x)
    copy_s = _median_s(lambda: out.copy_(x), repeats)
    packed_q, coded_q = _build("qsgd", 4), _build("qsgd", 4, "entropy")
    assert packed_q is not None and coded_q is not None
    packed, sent = _encode(packed_q, x, 1), _encode(coded_q, x, 1)
    pack_s = (_median_s(lambda: _encode(packed_q, x, 1), repeats),
              _median_s(lambda: packed_q.decode(packed, out=out), repeats))  # fmt: skip
    rans_s = (_median_s(lambda: _encode(coded_q, x, 1), repeats),
              _median_s(lambda: coded_q.decode(sent, out=out), repeats))  # fmt: skip

    codes = unpack(packed.data, 4, numel).numpy().astype(np.int32)
    codes[(packed_q.decode(packed) == 0).numpy()] = 0  # zero one symbol, as ours codes it
    counts = np.bincount(codes, minlength=16).astype(np.float64)
    model = constriction.stream.model.Categorical(counts / counts.sum(), perfect=False)

    def ans_encode() -> np.ndarray:
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(codes, model)
        return coder.get_compressed()

    ans = ans_encode()
    ans_s = (_median_s(ans_encode, repeats),
             _median_s(lambda: constriction.stream.stack.AnsCoder(ans).decode(model, numel),
                       repeats))  # fmt: skip
    raw = packed.data.numpy().tobytes()
    compressor, decompressor = zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor()
    zst = compressor.compress(raw)
    zstd_s = (_median_s(lambda: compressor.compress(raw), repeats),
              _median_s(lambda: decompressor.decompress(zst), repeats))  # fmt: skip
    scales = packed.scales.numel() * 4
    table = 16 * 4  # constriction's model: one float32 probability per symbol
    return [
        _speed("packed (4-bit codes)", numel, copy_s, pack_s, packed.nbytes),
        _speed("rANS, fused (ours)", numel, copy_s, rans_s, sent.nbytes),
        _speed("constriction ANS + packed pass", numel, copy_s,
               (pack_s[0] + ans_s[0], pack_s[1] + ans_s[1]), 4 * ans.size + scales + table),
        _speed("zstandard level 1 + packed pass", numel, copy_s,
               (pack_s[0] + zstd_s[0], pack_s[1] + zstd_s[1]), len(zst) + scales),
    ]  # fmt: skip


def _speed(name: str, numel: int, copy_s: float, seconds: tuple[float, float], nbytes: int):
    encode_s, decode_s = seconds
    return {
        "coder": name, "encode_mps": numel / encode_s / 1e6, "decode_mps": numel / decode_s / 1e6,
        "encode_x_copy": encode_s / copy_s, "decode_x_copy": decode_s / copy_s,
        "bits": 8 * nbytes / numel,
    }  # fmt: skip


def frontier_rows(x: torch.Tensor, draws: int) -> list[dict]:
    """Relative variance and wire bits per coordinate, every scheme x width x coding."""
    energy = float(x.double().pow(2).sum())
    rows = []
    for scheme in schemes():
        for bits in WIDTHS:
            packed_q, coded_q = _build(scheme, bits), _build(scheme, bits, "entropy")
            if packed_q is None or coded_q is None:
                continue
            qs = {"packed": packed_q, "entropy": coded_q}
            errors, sizes = [], dict.fromkeys(qs, 0.0)
            for seed in range(draws):
                for c, q in qs.items():
                    payload = _encode(q, x, seed)
                    sizes[c] += 8 * payload.nbytes / x.numel() / draws
                decoded = q.decode(payload).double()  # the same values either way
                errors.append(float((decoded - x.double()).pow(2).sum()) / energy)
            variance = statistics.mean(errors)
            for c in qs:
                rows.append({"scheme": scheme, "bits": bits, "coding": c,
                             "wire_bits": sizes[c], "variance": variance})  # fmt: skip
    return rows


def frontier_check(rows: Sequence[dict]) -> list[dict]:
    """For each packed point between 1 and 8 wire bits: the best coded configuration at no
    more bytes, and whether its variance is lower than the best packed one there."""
    checks = []
    budgets = sorted({r["wire_bits"] for r in rows if r["coding"] == "packed"})
    for budget in (b for b in budgets if 1 <= b <= 8):
        best_packed = min(r["variance"] for r in rows
                          if r["coding"] == "packed" and r["wire_bits"] <= budget)  # fmt: skip
        fitting = [r for r in rows if r["coding"] == "entropy" and r["wire_bits"] <= budget]
        best = min(fitting, key=lambda r: r["variance"]) if fitting else None
        checks.append({
            "budget": budget, "best_packed": best_packed,
            "best_coded": best and f"{best['scheme']} {best['bits']}b",
            "coded_variance": best and best["variance"],
            "met": best is not None and best["variance"] < best_packed,
        })  # fmt: skip
    return checks


def frontier_chart(rows: Sequence[dict], path: Path) -> None:
    """The frontier as a PNG: one line per scheme and coding."""
    import altair as alt
    import pandas as pd
    import vl_convert

    frame = pd.DataFrame(rows)
    chart = (
        alt.Chart(
            frame,
            title=alt.Title(
                "Variance against wire bytes, lm gradient (buckets of 512)",
                subtitle="solid: entropy-coded, dashed: packed; dqsgd at a fixed width is qsgd",
            ),
        )
        .mark_line(point=True)
        .encode(
            x=alt.X("wire_bits:Q", scale=alt.Scale(type="log"), title="wire bits per coordinate"),
            y=alt.Y("variance:Q", scale=alt.Scale(type="log"),
                    title="relative variance E|Q(g)-g|²/|g|²"),
            color=alt.Color("scheme:N"),
            strokeDash=alt.StrokeDash("coding:N", legend=None),
            shape=alt.Shape("coding:N"),
            tooltip=["scheme", "bits", "coding", "wire_bits", "variance"],
        )
        .properties(width=640, height=420)
    )  # fmt: skip
    path.write_bytes(vl_convert.vegalite_to_png(chart.to_json(), scale=2))


def link_chart(records: Sequence[dict], path: Path) -> list[dict]:
    """Step time against link rate, packed and entropy-coded, from sweep records (as a
    multiple of fp32 DDP's step in the same record set), at the world size measured over
    the most link rates; return the points."""
    import altair as alt
    import pandas as pd
    import vl_convert

    from benchmarks.links import link_preset

    done = [r for r in records if r.get("status") == "ok" and r.get("link") != "none"]
    links = {
        w: {r["link"] for r in done if r["world_size"] == w}
        for w in {r["world_size"] for r in done}
    }
    world = max(links, key=lambda w: len(links[w]), default=0)
    done = [r for r in done if r["world_size"] == world]
    fp32 = {(r["link"], r["world_size"]): r["step_time_s"] for r in done if r["scheme"] == BASELINE}
    points = [
        {"link_mbit": link_preset(r["link"]).rate_bits_per_s / 1e6, "world_size": r["world_size"],
         "config": _config(r), "step_s": r["step_time_s"],
         "x_fp32": r["step_time_s"] / fp32[(r["link"], r["world_size"])]}
        for r in done if (r["link"], r["world_size"]) in fp32
    ]  # fmt: skip
    chart = (
        alt.Chart(pd.DataFrame(points), title=f"Step time against link rate, {world} ranks")
        .mark_line(point=True)
        .encode(
            x=alt.X("link_mbit:Q", scale=alt.Scale(type="log"), title="link (Mbit/s)"),
            y=alt.Y("step_s:Q", scale=alt.Scale(type="log"), title="step time (s)"),
            color=alt.Color("config:N", title="configuration"),
            tooltip=["config", "link_mbit", "step_s", "x_fp32"],
        )
        .properties(width=560, height=380)
    )
    path.write_bytes(vl_convert.vegalite_to_png(chart.to_json(), scale=2))
    return points


def _config(record: dict) -> str:
    if record["bits"] >= 16:
        return record["scheme"]
    return f"{record['scheme']} {record['bits']}b {record.get('coding', 'packed')}"


def _table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    def cell(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Gaussian and 4M coordinates only")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for coding.*")
    parser.add_argument(
        "--sweeps", type=Path, nargs="+",
        help="instead: chart step time against link rate from these sweep JSON records",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.sweeps:
        records = [r for path in args.sweeps for r in json.loads(path.read_text())]
        points = link_chart(records, args.out / "coding-links.png")
        print(_table(points, ["world_size", "link_mbit", "config", "step_s", "x_fp32"]))
        return {"links": points}
    import numba

    numba.set_num_threads(1)
    torch.set_num_threads(1)
    numel = 1 << 22 if args.quick else 1 << 24
    sources = {"gaussian": torch.randn(1 << 22, generator=torch.Generator().manual_seed(0))}
    if not args.quick:
        sources = {"lm": gradient("lm"), "cnn": gradient("cnn"), **sources}
    report: dict[str, Any] = {
        "bits": bits_rows(sources),
        "speed": speed_rows(numel, 3 if args.quick else 7),
        "frontier": frontier_rows(
            sources["lm" if "lm" in sources else "gaussian"], draws=2 if args.quick else 3
        ),  # fmt: skip
    }
    report["frontier_check"] = frontier_check(report["frontier"])
    lm_qsgd = [r for r in report["bits"] if r["scheme"] == "qsgd" and r["bits"] == 4]
    big = [r for r in report["bits"] if r["numel"] >= 1 << 16]
    speed = report["speed"][1]
    qsgd4 = ", ".join(f"{r['coded']:.3f} bits ({r['source']})" for r in lm_qsgd)
    met = sum(c["met"] for c in report["frontier_check"])
    goals = [
        f"4-bit qsgd: {qsgd4} on the wire; goal at most {GOAL_LM_BITS} on lm",
        f"coded / (entropy + headers): at most {max(r['vs_entropy'] for r in big):.4f} over "
        f"{len(big)} payloads; goal at most {GOAL_ENTROPY_SLACK}",
        f"coder speed, one core: encode {speed['encode_mps']:.0f}M/s, decode "
        f"{speed['decode_mps']:.0f}M/s; goal {GOAL_SPEED:.0f}M/s each",
        f"frontier: coded better at no more bytes at {met} of "
        f"{len(report['frontier_check'])} packed points between 1 and 8 bits",
    ]  # fmt: skip
    report["goals"] = goals
    text = "\n\n".join([
        "## Bits per coordinate (scales and headers included)",
        _table(report["bits"], ["source", "scheme", "bits", "packed", "coded",
                                "codes_entropy", "symbols_entropy", "vs_entropy"]),
        f"## Coder speed, 4-bit qsgd, {numel >> 20}M coordinates, one core",
        _table(report["speed"], ["coder", "encode_mps", "decode_mps", "encode_x_copy",
                                 "decode_x_copy", "bits"]),
        "## Frontier (lm gradient)",
        _table(report["frontier"], ["scheme", "bits", "coding", "wire_bits", "variance"]),
        _table(report["frontier_check"], ["budget", "best_packed", "best_coded",
                                          "coded_variance", "met"]),
        "## Goals", "\n".join(f"- {g}" for g in goals),
    ])  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "coding-quick" if args.quick else "coding"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (args.out / f"{stem}.md").write_text(text + "\n")
    frontier_chart(report["frontier"], args.out / f"{stem}-frontier.png")
    print(text)
    return report


if __name__ == "__main__":
    main()
