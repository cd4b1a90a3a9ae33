"""Fixtures shared by every test directory."""

from tests.utils.api_server import api_server  # noqa: F401 - a pytest fixture
