"""Fixtures shared by every test directory."""

from tests.utils.api_server import api_server, db_server  # noqa: F401 - pytest fixtures
