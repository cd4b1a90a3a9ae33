"""The one way the run store's server is started: uvicorn in a process of its own.

``lightning-quant serve``, the demo, the ingest benchmark and the tests all start it here,
and wait for it here.

Example::

    process = start_server(8000, env={"LQ_DATABASE_URL": "sqlite:///runs.db"}, log=path)
    wait_until_healthy("http://127.0.0.1:8000", process, path)
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

__all__ = ["ServerError", "server_command", "start_server", "wait_until_healthy"]

HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """The server exited, or never answered, while starting; the message holds its log."""


def server_command(port: int, host: str = HOST, log_level: str = "info") -> list[str]:
    """Return the command that serves ``api.main:app`` on ``host:port``."""
    return [
        sys.executable, "-m", "uvicorn", "api.main:app", "--host", host, "--port", str(port),
        "--log-level", log_level,
    ]  # fmt: skip


def start_server(
    port: int,
    *,
    host: str = HOST,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    log_level: str = "info",
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start the server; its output goes to ``log`` (appended), else to this process's."""
    command = server_command(port, host, log_level)
    if log is None:
        return subprocess.Popen(command, env=dict(env) if env else None, cwd=cwd)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            command, env=dict(env) if env else None, cwd=cwd, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def wait_until_healthy(
    base_url: str,
    process: subprocess.Popen[bytes],
    log: Path | None = None,
    timeout: float = 60.0,
    path: str = "/health",
) -> None:
    """Return once ``base_url + path`` answers 200.

    Raises:
        ServerError: the process exited first, or nothing answered within ``timeout``
            seconds; the message ends with the log's last lines.
    """
    deadline = time.monotonic() + timeout
    url = base_url + path
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"{url} exited while starting:\n{_tail(log)}")
        try:
            if httpx.get(url, timeout=1.0, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise ServerError(f"{url} did not answer within {timeout:.0f} s:\n{_tail(log)}")


def _tail(log: Path | None, lines: int = 20) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
