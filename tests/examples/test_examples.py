"""The scripts in examples/ run as a user runs them: their own launcher, 2 CPU processes.

Each test starts a real launcher in a subprocess (Lightning's own for the Trainer
examples, torchrun, Accelerate's), trains a few steps over gloo on loopback, and reads the
one line rank 0 prints at the end: the loss and the bytes that rank sent in the last step,
which must be fewer than the gradient's fp32 bytes. A test whose extra package is missing
skips, naming it.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.utils.ranks import free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RUN_TIMEOUT_S = 180  # a launcher and its 2 ranks; about 20 s each on 2 shared cores
STEPS = "3"

# the last line of every example, printed by rank 0 only
FINAL = re.compile(
    r"^final: .*\bloss=(?P<loss>\S+) .*\bsent_bytes=(?P<sent>\d+) raw_bytes=(?P<raw>\d+)"
)

TORCHVISION_MISSING = (
    "timm needs a torchvision built for this torch (PyPI's Linux wheels are CUDA builds): "
    "pip install -c constraints.txt --index-url https://download.pytorch.org/whl/cpu "
    '"torchvision==0.28.0+cpu", then pip install -c constraints.txt timm'
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(RUN_TIMEOUT_S + 60)]


def run_example(command: list[str], workdir: Path) -> dict[str, float]:
    """Run ``python <command>`` in ``workdir``; return the figures of its final line."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),  # Lightning's launcher; the others take a flag
    }
    # a session of its own, so that a timeout ends the launcher and every rank it started
    proc = subprocess.Popen(
        [sys.executable, *command],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{command[-3:]} timed out after {RUN_TIMEOUT_S} s:\n{stderr[-6000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # ranks left behind by a failed launcher
    output = f"--- stdout ---\n{stdout[-3000:]}\n--- stderr ---\n{stderr[-6000:]}"
    assert proc.returncode == 0, output
    finals = [m for line in stdout.splitlines() if (m := FINAL.match(line))]
    assert len(finals) == 1, output  # one line, from rank 0
    figures = {name: float(value) for name, value in finals[0].groupdict().items()}
    assert math.isfinite(figures["loss"]), output
    assert 0 < figures["sent"] < figures["raw"], output  # quantized: fewer bytes than fp32
    return figures


@pytest.mark.parametrize(("model", "strategy"), [("gpt2", "ddp_qsgd"), ("llama", "ddp_nuqsgd")])
def test_hf_causal_lm(model: str, strategy: str, tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason="the examples extra (transformers) is missing")
    script = EXAMPLES / "hf_causal_lm.py"
    args = ["--model", model, "--strategy", strategy, "--devices", "2", "--steps", STEPS]
    run_example([str(script), *args], tmp_path)


def test_timm_image(tmp_path: Path) -> None:
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError):  # RuntimeError: a CUDA build beside CPU torch
        pytest.skip(TORCHVISION_MISSING)
    pytest.importorskip("timm", reason="timm is missing: pip install -c constraints.txt timm")
    script = EXAMPLES / "timm_image.py"
    run_example([str(script), "--devices", "2", "--steps", STEPS], tmp_path)


def test_plain_ddp_torchrun(tmp_path: Path) -> None:
    script = EXAMPLES / "plain_ddp_torchrun.py"
    launcher = ["-m", "torch.distributed.run", "--nproc-per-node", "2"]
    port = ["--master-port", str(free_port())]
    run_example([*launcher, *port, str(script), "--steps", STEPS], tmp_path)


@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_accelerate_ddp(launcher: str, tmp_path: Path) -> None:
    pytest.importorskip("accelerate", reason="the examples extra (accelerate) is missing")
    port = str(free_port())
    launchers = {
        # `accelerate launch --multi_gpu` is Accelerate's torchrun launcher; the script
        # keeps the processes on CPU. (`--cpu` would start one process without MPI.)
        "accelerate": ["-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu",
                       "--num_processes", "2", "--main_process_port", port],
        "torchrun": ["-m", "torch.distributed.run", "--nproc-per-node", "2",
                     "--master-port", port],
    }  # fmt: skip
    script = EXAMPLES / "accelerate_ddp.py"
    run_example([*launchers[launcher], str(script), "--steps", STEPS], tmp_path)
