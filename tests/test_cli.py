"""The lightning-quant command: clear messages, and the demo end to end."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.utils.api_server import free_port

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: float = 60, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd,
    )  # fmt: skip


def test_help_lists_the_commands() -> None:
    out = cli("--help").stdout
    for command in ("serve", "dashboard", "bench", "replay", "demo"):
        assert command in out


@pytest.mark.parametrize(
    ("args", "option"),
    [(["serve", "--port"], "--port"), (["demo", "--api-port"], "--api-port")],
)
def test_a_port_in_use_gets_a_clear_message(args: list[str], option: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli(*args, str(port))
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and option in result.stderr
    assert "Traceback" not in result.stderr


def test_replay_with_nothing_spooled(tmp_path: Path) -> None:
    result = cli("replay", "--spool-dir", str(tmp_path), "--api-url", "http://127.0.0.1:9")
    assert result.returncode == 0 and "replayed 0" in result.stdout


@pytest.mark.timeout(600)
def test_demo_serves_api_and_dashboard_and_stores_real_runs(tmp_path: Path) -> None:
    api_port, dashboard_port = free_port(), free_port()
    result = cli(
        "demo", "--api-port", str(api_port), "--dashboard-port", str(dashboard_port),
        "--steps", "12", "--schemes", "fp32,qsgd", "--bits", "4",
        "--data-dir", str(tmp_path / "data"), "--no-serve",
        timeout=540,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"http://127.0.0.1:{dashboard_port}" in result.stdout
    records = json.loads((tmp_path / "data" / "demo-runs.json").read_text())
    assert {r["scheme"] for r in records} == {"fp32", "qsgd"}
    assert all(r["status"] == "ok" for r in records)
    assert (tmp_path / "data" / "lightning_quant.db").exists()
    # the link printed last opens the dashboard on these runs (it takes fp32 as baseline)
    link = [line for line in result.stdout.splitlines() if "dashboard:" in line][-1]
    link = link.split("dashboard:")[1].strip()
    assert link == f"http://127.0.0.1:{dashboard_port}/?runs=" + ",".join(
        str(r["run_id"]) for r in records
    )
    with pytest.raises(httpx.TransportError):  # --no-serve: everything stopped
        httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=2, trust_env=False)
