"""A real run-store server for tests: uvicorn in a subprocess on loopback.

Use the fixture (import it into your test module or conftest so pytest sees it)::

    from tests.utils.api_server import api_server  # noqa: F401 - a pytest fixture

    def test_reporter_posts(api_server):
        httpx.get(f"{api_server.base_url}/health")

or the context manager, for your own settings or fixture scope::

    with running_api_server(tmp_path, token="secret") as server:
        ...  # server.base_url, server.api_url, server.query(sql), server.token

The database is a SQLite file in the given directory, or any database URL given
(``tests.utils.databases``); it survives ``server.restart()``. ``db_server`` is the
fixture parametrized over both kinds.
"""

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from api.server import ServerError, start_server, wait_until_healthy
from tests.utils.databases import KINDS, database_url, run_sql

__all__ = [
    "ApiServer",
    "api_server",
    "db_server",
    "free_port",
    "running_api_server",
    "start_api_server",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
API_PREFIX = "/api/v1"  # the API's own, as a client writes it


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ApiServer:
    """A running ``uvicorn api.main:app``; ``stop()`` it (the helpers below do)."""

    base_url: str  # http://127.0.0.1:<port>, for /health and /docs
    log_path: Path
    env: dict[str, str] = field(repr=False)
    token: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def api_url(self) -> str:
        """The base of the REST routes: ``<base_url>/api/v1``."""
        return self.base_url + API_PREFIX

    @property
    def database_url(self) -> str:
        return self.env["LQ_DATABASE_URL"]

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        """Run ``sql`` (``?`` placeholders) on the server's database, past the API."""
        return run_sql(self.database_url, sql, *params)

    @property
    def auth_headers(self) -> dict[str, str]:
        """The header writes need when the server has a token, else nothing."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self, **kwargs: object) -> httpx.Client:
        """An ``httpx.Client`` on ``api_url`` that sends the token; close it (``with``)."""
        return httpx.Client(
            base_url=self.api_url, headers=self.auth_headers, trust_env=False, **kwargs
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self, timeout: float = 30.0) -> None:
        """Stop and start again on the same port and database."""
        self.stop()
        _launch(self, timeout=timeout)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL): no shutdown, no flush."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


def _launch(server: ApiServer, *, timeout: float) -> None:
    port = int(server.base_url.rsplit(":", 1)[1])
    server.process = start_server(
        port, env=server.env, log=server.log_path, log_level="warning", cwd=REPO_ROOT
    )
    try:
        wait_until_healthy(server.base_url, server.process, server.log_path, timeout)
    except ServerError as error:
        server.stop()
        raise RuntimeError(f"the API server did not start:\n{error}") from None


def start_api_server(
    directory: Path,
    *,
    token: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    database: str | None = None,
) -> ApiServer:
    """Start ``uvicorn api.main:app`` on a free loopback port; return once ``/health``
    answers. The caller must ``stop()`` it.

    Args:
        directory: where the server log, and the default SQLite file (``runs.db``), go.
        token: sets ``LQ_API_TOKEN``, so writes need ``server.auth_headers``.
        env: more environment variables for the server (``LQ_MAX_BODY_BYTES``, ...).
        timeout: seconds to wait for ``/health``.
        database: the database's SQLAlchemy URL (default: ``runs.db`` in ``directory``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    server_env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("LQ_")},
        "LQ_DATABASE_URL": database or f"sqlite:///{directory / 'runs.db'}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        **({"LQ_API_TOKEN": token} if token else {}),
        **(env or {}),
    }
    for attempt in range(3):  # another process may take the free port before uvicorn does
        server = ApiServer(
            base_url=f"http://127.0.0.1:{free_port()}",
            log_path=directory / "api-server.log",
            env=server_env,
            token=token,
        )
        try:
            _launch(server, timeout=timeout)
            return server
        except RuntimeError:
            if attempt == 2 or "address already in use" not in server.log().lower():
                raise
    raise AssertionError("unreachable")


@contextmanager
def running_api_server(directory: Path, **kwargs: object) -> Iterator[ApiServer]:
    """``start_api_server(directory, **kwargs)``, stopped when the block ends."""
    server = start_api_server(directory, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[ApiServer]:
    """A fresh server with an empty SQLite database in ``tmp_path``, no token."""
    with running_api_server(tmp_path / "api-server") as server:
        yield server


@pytest.fixture(params=KINDS)
def db_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ApiServer]:
    """A fresh server, no token, on an empty database of each kind (SQLite, PostgreSQL)."""
    url = database_url(request.param, tmp_path / "database")
    with running_api_server(tmp_path / "api-server", database=url) as server:
        yield server
