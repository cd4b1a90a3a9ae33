"""Starting services for the command line: checks that say what to do, and their logs."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["HOST", "ServiceError", "check_port_free", "require", "start", "stop"]

HOST = "127.0.0.1"


class ServiceError(RuntimeError):
    """A service could not start; the message says why and what to do."""


def require(*modules: str) -> None:
    """Raise ``ServiceError`` naming the install command when a module is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ServiceError(
            f"missing dependency: {', '.join(missing)}. Install everything with\n"
            "  pip install -c constraints.txt -e '.[all]'"
        )


def check_port_free(port: int, what: str, option: str, host: str = HOST) -> None:
    """Raise ``ServiceError`` naming ``option`` when ``port`` is taken."""
    with socket.socket() as sock:
        # as uvicorn binds: connections of a stopped server in TIME_WAIT do not block it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise ServiceError(
                f"port {port} for the {what} is in use; pick another with {option} PORT"
            ) from None


def start(argv: Sequence[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``argv`` with its output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, env=env)


def stop(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """Terminate ``processes``, killing those that do not end within 10 s."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
