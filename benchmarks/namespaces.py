"""iproute2 primitives for emulated networks: run a command, list and delete namespaces,
and where a rank lives."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Host",
    "NetworkEmulationError",
    "delete_namespace",
    "list_namespaces",
    "missing_prerequisite",
    "pid_alive",
    "run",
]

log = logging.getLogger(__name__)

IP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Host:
    """Where one rank lives: its namespace, its interface and its address."""

    rank: int
    namespace: str
    interface: str
    address: str


class NetworkEmulationError(RuntimeError):
    """The emulated network cannot be set up (no root, no iproute2, a command failed)."""


def missing_prerequisite() -> str | None:
    """Return why network emulation cannot run here, or ``None`` when it can."""
    if os.geteuid() != 0:
        return "network emulation needs root (ip netns); run as root or use --link none"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return (
            f"network emulation needs {' and '.join(missing)} (apt-get install iproute2); "
            "install it or use --link none"
        )
    return None


def run(argv: Sequence[str]) -> str:
    """Run one iproute2 command; raise :class:`NetworkEmulationError` if it fails."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise NetworkEmulationError(f"{' '.join(argv)}: {error}") from error
    if done.returncode != 0:
        raise NetworkEmulationError(
            f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}"
        )
    return done.stdout


def list_namespaces() -> list[str]:
    """Return the names of the named network namespaces (``ip netns list``)."""
    out = run(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def delete_namespace(name: str) -> bool:
    """Delete one namespace (its interfaces go with it); return whether it existed."""
    try:
        run(["ip", "netns", "delete", name])
    except NetworkEmulationError as error:
        if name in list_namespaces():
            log.warning("could not delete network namespace %s: %s", name, error)
        return False
    return True


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
