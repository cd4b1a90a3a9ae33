"""How the dashboard is served: ``streamlit run dashboard/app.py`` with its settings."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["dashboard_command"]

APP = Path(__file__).with_name("app.py")


def dashboard_command(port: int, api_url: str, host: str = "127.0.0.1") -> list[str]:
    """Return the command that serves the dashboard on ``host:port``, reading ``api_url``."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.port", str(port), "--server.address", host,
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "viewer",
        "--", "--api-url", api_url,
    ]  # fmt: skip
