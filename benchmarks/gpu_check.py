"""The prepared run for a GPU machine: fused CUDA codecs against a copy and the eager path,
then the CUDA tests. About 3 to 5 minutes on an H100/H200.

Figures (CUDA events; median of the timed calls after warm-up, on 64M ``float32``):

* ``copy``: ``out.copy_(x)`` into a preallocated tensor;
* ``fused``: ``encode`` then ``decode(payload, out=out)``, the Triton kernels;
* ``eager``: ``encode_eager`` then ``decode_eager``, the chain of torch kernels.

Goals (issue 16): qsgd, qsgd_inf and nuqsgd at 4 bits with ``fused / copy <= 2.2`` (half the
copy bandwidth or better) and ``eager / fused >= 5``; the NCCL tests pass. The tests run
with ``--noconftest``, since the GPU image lacks the API's packages the root conftest needs.

Run::

    python -m benchmarks.gpu_check --out DIR     # writes DIR/gpu_check.json and .md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lightning_quant.quantizers import get_quantizer, kernels

NUMEL = 1 << 26
GOAL_SCHEMES = ("qsgd", "qsgd_inf", "nuqsgd")
SCHEMES = (*GOAL_SCHEMES, "dqsgd", "global_qsgd", "global_qsgd_exp")
GOAL_COPY_RATIO = 2.2
GOAL_EAGER_RATIO = 5.0
TESTS = ("tests/lightning_quant/test_cuda.py", "tests/lightning_quant/test_gpu_kernels.py")


def device_seconds(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median seconds of ``fn`` on the current stream, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def time_scheme(scheme: str, bits: int, x: torch.Tensor, repeats: int) -> dict:
    """Time one scheme's fused and eager round trip of ``x`` beside ``out.copy_(x)``."""
    q = get_quantizer(scheme, bits=bits)
    gen = torch.Generator(device=x.device).manual_seed(0)
    out = torch.empty_like(x)
    began = time.perf_counter()
    q.decode(q.encode(x, gen), out=out)  # the first call compiles the kernels
    torch.cuda.synchronize()
    first_call_s = time.perf_counter() - began
    payload = q.encode(x, gen)
    eager_payload = q.encode_eager(x, gen)
    row = {
        "scheme": scheme,
        "bits": bits,
        "numel": x.numel(),
        "payload_bytes": payload.nbytes,
        "first_call_s": first_call_s,
        "copy_s": device_seconds(lambda: out.copy_(x), repeats),
        "encode_s": device_seconds(lambda: q.encode(x, gen), repeats),
        "decode_s": device_seconds(lambda: q.decode(payload, out=out), repeats),
        "eager_encode_s": device_seconds(lambda: q.encode_eager(x, gen), max(3, repeats // 4)),
        "eager_decode_s": device_seconds(
            lambda: q.decode_eager(eager_payload), max(3, repeats // 4)
        ),
    }
    fused = row["encode_s"] + row["decode_s"]
    row["fused_over_copy"] = fused / row["copy_s"]
    row["eager_over_fused"] = (row["eager_encode_s"] + row["eager_decode_s"]) / fused
    row["copy_gbps"] = 2 * x.numel() * 4 / row["copy_s"] / 1e9  # read + write
    return row


def run_tests(out: Path, timeout_s: int) -> dict:
    """Run the CUDA tests; return pytest's summary line, return code and log file."""
    log = out / "gpu_tests.log"
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "--noconftest", "-p",
               "no:cacheprovider", "-n", "4", *TESTS]  # fmt: skip
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False,
            env={**os.environ, "PYTHONPATH": str(Path.cwd())},
        )  # fmt: skip
        text, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as error:
        text, code = f"timed out after {timeout_s} s\n{error.stdout or ''}", 124
    log.write_text(text)
    summary = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    return {"returncode": code, "summary": summary[-1] if summary else text[-500:]}


def markdown(report: dict) -> str:
    lines = [
        f"GPU: {report['gpu']}; torch {report['torch']}, triton {report['triton']}",
        "",
        "| scheme | bits | copy GB/s | fused enc+dec ms | / copy | eager ms | eager / fused |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["codecs"]:
        if "error" in r:
            lines.append(f"| {r['scheme']} | {r['bits']} | error: {r['error']} |||||")
            continue
        fused = (r["encode_s"] + r["decode_s"]) * 1e3
        eager = (r["eager_encode_s"] + r["eager_decode_s"]) * 1e3
        lines.append(
            f"| {r['scheme']} | {r['bits']} | {r['copy_gbps']:.0f} | {fused:.3f} | "
            f"{r['fused_over_copy']:.2f} | {eager:.2f} | {r['eager_over_fused']:.1f} |"
        )
    lines += ["", "Goals:"] + [f"- {name}: {verdict}" for name, verdict in report["goals"].items()]
    lines += ["", f"Tests: {report['tests']['summary']} (exit {report['tests']['returncode']})"]
    return "\n".join(lines) + "\n"


def goals(codecs: list[dict], tests: dict) -> dict[str, str]:
    at4 = [r for r in codecs if r["scheme"] in GOAL_SCHEMES and r["bits"] == 4]
    failed = [r["scheme"] for r in at4 if "error" in r]
    if failed or not at4:
        return {"codecs": f"missed: {', '.join(failed)} failed" if failed else "not measured"}
    copy = max(r["fused_over_copy"] for r in at4)
    eager = min(r["eager_over_fused"] for r in at4)
    return {
        f"fused/copy <= {GOAL_COPY_RATIO} (worst of {', '.join(GOAL_SCHEMES)} at 4 bits)": (
            f"{copy:.2f}: {'met' if copy <= GOAL_COPY_RATIO else 'missed'}"
        ),
        f"eager/fused >= {GOAL_EAGER_RATIO}": (
            f"{eager:.1f}: {'met' if eager >= GOAL_EAGER_RATIO else 'missed'}"
        ),
        "CUDA tests pass": "met" if tests["returncode"] == 0 else "missed",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--numel", type=int, default=NUMEL)
    parser.add_argument("--test-timeout", type=int, default=240)
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA device")
    args.out.mkdir(parents=True, exist_ok=True)
    import triton

    x = torch.randn(args.numel, device="cuda")
    codecs = []
    for scheme in SCHEMES:
        for bits in (4, 8):
            try:
                codecs.append(time_scheme(scheme, bits, x, args.repeats))
            except Exception as error:  # report it and go on: one run must say everything
                codecs.append({"scheme": scheme, "bits": bits, "error": repr(error)[:300]})
            print(json.dumps(codecs[-1]), flush=True)
    del x
    torch.cuda.empty_cache()
    tests = {"returncode": None, "summary": "skipped"}
    if not args.skip_tests:
        tests = run_tests(args.out, args.test_timeout)
    report = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "fused_kernels": kernels.backend("cuda") is not None,
        "codecs": codecs,
        "tests": tests,
    }
    report["goals"] = goals(codecs, tests)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
