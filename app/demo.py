"""The demo: the run store and the dashboard up, every scheme trained, a link to compare.

Where network namespaces can be made (root, ``ip`` and ``tc``), the two ranks train on
either side of an emulated 10 Mbit/s link, where the gradient's bytes decide the step
time; elsewhere on loopback, where compression cannot pay, and the demo says so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer

from api.server import ServerError, start_server, wait_until_healthy
from app.services import HOST, ServiceError, check_port_free, require, start, stop
from dashboard.server import dashboard_command

__all__ = ["DEMO_LINK", "DEMO_SCHEMES", "comparison_link", "run_demo"]

DEMO_SCHEMES = "fp32,torch_fp16,torch_powersgd,qsgd,nuqsgd,global_qsgd"
DEMO_LINK = "10mbit"  # slow enough that the digits model's gradient makes the link matter


def run_demo(
    api_port: int,
    dashboard_port: int,
    steps: int,
    schemes: str,
    bits: str,
    data_dir: Path,
    serve_forever: bool,
    host: str = HOST,
) -> None:
    """Start the API and the dashboard, run the demo's sweep, print the comparison's link.

    Raises:
        ServiceError: a port is taken, a dependency missing, or a service did not start.
    """
    require("uvicorn", "fastapi", "sqlmodel", "streamlit", "altair", "sklearn")
    check_port_free(api_port, "API", "--api-port")
    check_port_free(dashboard_port, "dashboard", "--dashboard-port")
    logs = data_dir / "logs"
    env = {**os.environ, "LQ_DATA_DIR": str(data_dir.resolve())}
    processes: list[subprocess.Popen[bytes]] = []
    api_url, dashboard_url = f"http://{HOST}:{api_port}", f"http://{HOST}:{dashboard_port}"
    try:
        typer.echo(f"starting the API on {api_url} (database in {data_dir}/)")
        processes.append(start_server(api_port, host=host, env=env, log=logs / "api.log"))
        wait_until_healthy(api_url, processes[-1], logs / "api.log")
        typer.echo(f"starting the dashboard on {dashboard_url}")
        command = dashboard_command(dashboard_port, api_url, host)
        processes.append(start(command, logs / "dashboard.log", env))
        wait_until_healthy(
            dashboard_url, processes[-1], logs / "dashboard.log", 90, "/_stcore/health"
        )
        typer.secho(f"\n  dashboard: {dashboard_url}\n  REST API:  {api_url}/docs\n", bold=True)
        records = data_dir / "demo-runs.json"
        code = subprocess.run(
            [sys.executable, "-m", "benchmarks.sweep", "--task", "digits", "--schemes", schemes,
             "--bits", bits, "--world-size", "2", "--link", _demo_link(), "--steps", str(steps),
             "--val-every", str(max(steps // 6, 1)), "--api", api_url, "--json", str(records)],
            check=False,
        ).returncode  # fmt: skip
        if code:
            typer.secho("some demo runs failed; see the table above", fg=typer.colors.YELLOW)
        link = comparison_link(dashboard_url, records)
        typer.secho(f"\n  dashboard: {link}\n  REST API:  {api_url}/docs", bold=True)
        if serve_forever:
            typer.echo("serving until Ctrl-C")
            signal.signal(signal.SIGTERM, _exit_on_signal)
            while all(p.poll() is None for p in processes):
                time.sleep(1)
            raise ServiceError(f"a service stopped; see {logs}/")
    except ServerError as error:
        raise ServiceError(str(error)) from None
    except KeyboardInterrupt:
        typer.echo("\nstopping")
    finally:
        stop(processes)


def comparison_link(dashboard_url: str, records_path: Path) -> str:
    """Return the dashboard's link opened on the runs the sweep stored (its records carry
    their ids); the dashboard picks the baseline."""
    try:
        ids = [r["run_id"] for r in json.loads(records_path.read_text()) if r.get("run_id")]
    except (OSError, ValueError, TypeError):
        ids = []
    return f"{dashboard_url}/?runs={','.join(map(str, ids))}" if ids else dashboard_url


def _demo_link() -> str:
    """The demo's link: a slow emulated one where namespaces can be made, else none."""
    from benchmarks.netem import network_emulation_available

    if network_emulation_available():
        typer.echo(f"training the 2 ranks in network namespaces joined by a {DEMO_LINK} link")
        return DEMO_LINK
    typer.echo(
        "no emulated link (needs root, ip and tc): training on loopback, where compression "
        "cannot pay; run as root to see it over a 10 Mbit/s link"
    )
    return "none"


def _exit_on_signal(*_: object) -> None:
    raise KeyboardInterrupt  # the demo's finally block stops the services
