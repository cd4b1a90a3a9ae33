"""A throwaway PostgreSQL server, for the tests and the load benchmark: Debian's binaries,
a temporary cluster, loopback.

``initdb`` refuses to run as root, so as root every server command runs as the
``postgres`` user (``runuser -u postgres --``), in a temporary directory it owns, on a free
port of 127.0.0.1 with trust authentication. The server is stopped (``pg_ctl -m
immediate``) and its directory removed when the context ends, on failure too.

Without the binaries (``apt-get install postgresql``, which ``./run.sh test`` does as
root), or without root and the ``postgres`` user, :func:`unavailable` says why and the
tests that need a server skip with that reason (``benchmarks.api_ingest --database
postgresql`` stops with it).
"""

from __future__ import annotations

import atexit
import functools
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PostgresServer", "postgres_server", "shared_server", "unavailable"]


def _bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent  # the newest major version installed
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@functools.cache
def unavailable() -> str | None:
    """Return why no throwaway server can run here, or ``None`` when one can."""
    if _bindir() is None:
        return "PostgreSQL is not installed (apt-get install postgresql; ./run.sh test does)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a postgres user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    """A running server: ``url(database)`` names a database on it."""

    port: int
    directory: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def fresh_database(self) -> str:
        """Create a new, empty database; return its SQLAlchemy URL."""
        return self.create_database(f"lq_test_{os.getpid()}_{next(_numbers)}")

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _run(argv: list[str], **kwargs: object) -> None:
    done = subprocess.run(
        _as_postgres(argv), capture_output=True, text=True, timeout=120, check=False, **kwargs
    )
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr or done.stdout}")


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a throwaway server; stop it and remove its files afterwards."""
    reason = unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    bindir = _bindir()
    assert bindir is not None
    directory = Path(tempfile.mkdtemp(prefix="lq-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    data = directory / "data"
    port = _free_port()
    started = False
    try:
        _run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
              "--no-sync", "-E", "UTF8"])  # fmt: skip
        options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l",
              str(directory / "server.log"), "-w", "-t", "60", "start"])  # fmt: skip
        started = True
        yield PostgresServer(port, directory)
    finally:
        if started:
            _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(directory, ignore_errors=True)


_numbers = itertools.count()
_shared: list[PostgresServer] = []


def shared_server() -> PostgresServer:
    """Return this process's server, started on first use and stopped when it exits.

    One server per test process (each xdist worker has its own); every test takes a
    fresh database on it (:meth:`PostgresServer.fresh_database`).
    """
    if not _shared:
        context = postgres_server()
        _shared.append(context.__enter__())
        atexit.register(context.__exit__, None, None, None)
    return _shared[0]
