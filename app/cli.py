"""The ``lightning-quant`` command: serve the API, the dashboard, run sweeps, the demo.

Each command calls its package's own entry point: :mod:`api.server` for the run store,
:mod:`dashboard.server` for the dashboard, ``python -m benchmarks.sweep`` for sweeps,
:mod:`app.demo` for the demo.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from app.demo import DEMO_SCHEMES, run_demo
from app.services import HOST, ServiceError, check_port_free, require

__all__ = ["app"]

app = typer.Typer(
    help="Quantized gradient exchange for Lightning DDP: API, dashboard, sweeps, demo.",
    no_args_is_help=True,
    add_completion=False,
)


def _fail(error: Exception) -> None:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@app.command()
def serve(
    port: int = typer.Option(8000, help="port of the REST API"),
    host: str = typer.Option(HOST, help="address to listen on"),
) -> None:
    """Serve the run store REST API (settings: LQ_DATABASE_URL, LQ_DATA_DIR, LQ_API_TOKEN)."""
    try:
        require("uvicorn", "fastapi", "sqlmodel")
        check_port_free(port, "API", "--port", host)
    except ServiceError as error:
        _fail(error)
    from api.server import server_command

    command = server_command(port, host)
    os.execv(command[0], command)


@app.command()
def dashboard(
    port: int = typer.Option(8501, help="port of the dashboard"),
    host: str = typer.Option(HOST, help="address to listen on"),
    api_url: str = typer.Option("http://127.0.0.1:8000", help="the REST API to read"),
    read_token: str = typer.Option(
        None, envvar="LQ_API_READ_TOKEN", help="token for a private store's reads"
    ),
) -> None:
    """Serve the Streamlit dashboard, reading runs from the REST API."""
    try:
        require("streamlit", "altair")
        check_port_free(port, "dashboard", "--port", host)
    except ServiceError as error:
        _fail(error)
    from dashboard.server import dashboard_command

    if read_token:  # to the dashboard through its environment, never its command line
        os.environ["LQ_API_READ_TOKEN"] = read_token
    command = dashboard_command(port, api_url, host)
    os.execv(command[0], command)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Run the benchmark sweep (all options of ``python -m benchmarks.sweep --help``)."""
    command = [sys.executable, "-m", "benchmarks.sweep", *ctx.args]
    raise typer.Exit(subprocess.run(command, check=False).returncode)


@app.command()
def replay(
    api_url: str = typer.Option("http://127.0.0.1:8000", help="the REST API"),
    spool_dir: Annotated[Path, typer.Option(help="where the reporter spooled")] = Path(
        "data/spool"
    ),
    token: str = typer.Option(None, envvar="LQ_API_TOKEN", help="bearer token for writes"),
) -> None:
    """Send run records that training could not deliver (spooled) to the API."""
    from lightning_quant.runstore import replay_spool

    delivered, left = replay_spool(api_url, spool_dir, token)
    typer.echo(f"replayed {delivered} spooled run(s); {left} left")
    if left:
        _fail(ServiceError(f"the API at {api_url} did not take {left} run(s); try again later"))


@app.command()
def demo(
    api_port: int = typer.Option(8000, help="port of the REST API"),
    dashboard_port: int = typer.Option(8501, help="port of the dashboard"),
    steps: int = typer.Option(120, help="optimizer steps per training run"),
    schemes: str = typer.Option(DEMO_SCHEMES, help="comma list of schemes to compare"),
    bits: str = typer.Option("4,8", help="comma list of bit widths"),
    data_dir: Annotated[Path, typer.Option(help="where the SQLite file lives")] = Path("data"),
    serve_forever: bool = typer.Option(True, "--serve/--no-serve", help="keep serving after"),
    host: str = typer.Option(HOST, help="address the API and dashboard listen on"),
) -> None:
    """Start the API and dashboard, train every scheme on 2 CPU processes, keep serving."""
    try:
        run_demo(api_port, dashboard_port, steps, schemes, bits, data_dir, serve_forever, host)
    except ServiceError as error:
        _fail(error)


if __name__ == "__main__":
    app()
