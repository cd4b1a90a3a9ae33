"""benchmarks/live.py end to end: a real API, a real sweep, a run seen while it trains."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_live_sees_a_sweep_run_while_it_trains() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.live", "--schemes", "qsgd", "--steps", "60"],
        capture_output=True, text=True, timeout=360, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1 runs seen while training" in done.stdout  # the figure itself is the benchmark's
