"""The ``lightning-quant`` command: serve the API, the dashboard, run sweeps, the demo.

The API, dashboard and sweep run as their own processes (``uvicorn api.main:app``,
``streamlit run dashboard/app.py``, ``python -m benchmarks.sweep``); the library itself
never imports them.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["app"]

app = typer.Typer(
    help="Quantized gradient exchange for Lightning DDP: API, dashboard, sweeps, demo.",
    no_args_is_help=True,
    add_completion=False,
)

DEMO_SCHEMES = "fp32,torch_fp16,torch_powersgd,qsgd,nuqsgd,global_qsgd"
DEMO_LINK = "10mbit"  # slow enough that the digits model's gradient makes the link matter
HOST = "127.0.0.1"


class ServiceError(RuntimeError):
    """A service could not start; the message says why and what to do."""


def _require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ServiceError(
            f"missing dependency: {', '.join(missing)}. Install everything with\n"
            "  pip install -c constraints.txt -e '.[all]'"
        )


def _check_port_free(port: int, what: str, option: str) -> None:
    with socket.socket() as sock:
        # as uvicorn binds: connections of a stopped server in TIME_WAIT do not block it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            raise ServiceError(
                f"port {port} for the {what} is in use; pick another with {option} PORT"
            ) from None


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceError(f"{url} exited while starting:\n{_tail(log)}")
        try:
            if httpx.get(url, timeout=1.0, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise ServiceError(f"{url} did not answer within {timeout:.0f} s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 20) -> str:
    return (
        "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
    )


def _start(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)


def _dashboard_script() -> str:
    spec = importlib.util.find_spec("dashboard.app")
    if spec is None or spec.origin is None:
        raise ServiceError("the dashboard package is not installed (pip install -e '.[all]')")
    return spec.origin


def _api_argv(port: int, host: str = HOST) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "api.main:app", "--host", host, "--port", str(port)]


def _dashboard_argv(port: int, api_url: str, host: str = HOST) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", _dashboard_script(),
        "--server.port", str(port), "--server.address", host,
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "viewer",
        "--", "--api-url", api_url,
    ]  # fmt: skip


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
        _require("uvicorn", "fastapi", "sqlmodel")
        _check_port_free(port, "API", "--port")
    except ServiceError as error:
        _fail(error)
    import uvicorn

    uvicorn.run("api.main:app", host=host, port=port)


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
        _require("streamlit", "altair")
        _check_port_free(port, "dashboard", "--port")
        if read_token:  # to the dashboard through its environment, never its command line
            os.environ["LQ_API_READ_TOKEN"] = read_token
        os.execv(sys.executable, _dashboard_argv(port, api_url, host))
    except ServiceError as error:
        _fail(error)


def _comparison_link(dashboard_url: str, api_url: str, records_path: Path) -> str:
    """The dashboard's URL opened on the sweep's runs, fp32 DDP as the baseline (the bare
    URL when the runs cannot be found)."""
    import json

    import httpx

    from lightning_quant.runstore.client import api_base, auth_headers

    headers = auth_headers(None)  # the environment's token, if any
    ids, baseline = [], None
    try:
        for record in json.loads(records_path.read_text()):
            answer = httpx.get(
                f"{api_base(api_url)}/runs", params={"run_key": record["run_key"]},
                headers=headers, timeout=5.0, trust_env=False,
            )  # fmt: skip
            for run in answer.raise_for_status().json()["data"]:
                ids.append(run["id"])
                if record["scheme"] == "fp32" and baseline is None:
                    baseline = run["id"]
    except (OSError, ValueError, KeyError, httpx.HTTPError):
        return dashboard_url
    if not ids:
        return dashboard_url
    query = f"runs={','.join(map(str, ids))}" + (f"&baseline={baseline}" if baseline else "")
    return f"{dashboard_url}/?{query}"


def _sweep(args: list[str]) -> int:
    """Run ``python -m benchmarks.sweep ARGS`` in its own process; return its exit code."""
    return subprocess.run([sys.executable, "-m", "benchmarks.sweep", *args], check=False).returncode


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Run the benchmark sweep (all options of ``python -m benchmarks.sweep --help``)."""
    raise typer.Exit(_sweep(list(ctx.args)))


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
    logs = data_dir / "logs"
    env = {**os.environ, "LQ_DATA_DIR": str(data_dir.resolve())}
    processes: list[subprocess.Popen[bytes]] = []

    def stop(*_: object) -> None:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()

    try:
        _require("uvicorn", "fastapi", "sqlmodel", "streamlit", "altair", "sklearn")
        _check_port_free(api_port, "API", "--api-port")
        _check_port_free(dashboard_port, "dashboard", "--dashboard-port")
        api_url = f"http://{HOST}:{api_port}"
        dashboard_url = f"http://{HOST}:{dashboard_port}"
        typer.echo(f"starting the API on {api_url} (database in {data_dir}/)")
        processes.append(_start(_api_argv(api_port, host), logs / "api.log", env))
        _wait_http(f"{api_url}/health", processes[-1], logs / "api.log", timeout=60)
        typer.echo(f"starting the dashboard on {dashboard_url}")
        dashboard_argv = _dashboard_argv(dashboard_port, api_url, host)
        processes.append(_start(dashboard_argv, logs / "dashboard.log", env))
        _wait_http(
            f"{dashboard_url}/_stcore/health", processes[-1], logs / "dashboard.log", timeout=90
        )
        typer.secho(f"\n  dashboard: {dashboard_url}\n  REST API:  {api_url}/docs\n", bold=True)
        link = _demo_link()
        code = _sweep(
            ["--task", "digits", "--schemes", schemes, "--bits", bits, "--world-size", "2",
             "--link", link, "--steps", str(steps), "--val-every", str(max(steps // 6, 1)),
             "--api", api_url, "--json", str(data_dir / "demo-runs.json")]
        )  # fmt: skip
        if code:
            typer.secho("some demo runs failed; see the table above", fg=typer.colors.YELLOW)
        comparison = _comparison_link(dashboard_url, api_url, data_dir / "demo-runs.json")
        typer.secho(f"\n  dashboard: {comparison}\n  REST API:  {api_url}/docs", bold=True)
        if serve_forever:
            typer.echo("serving until Ctrl-C")
            signal.signal(signal.SIGTERM, _exit_on_signal)
            while all(p.poll() is None for p in processes):
                time.sleep(1)
            _fail(ServiceError(f"a service stopped; see {logs}/"))
    except ServiceError as error:
        _fail(error)
    except KeyboardInterrupt:
        typer.echo("\nstopping")
    finally:
        stop()


def _demo_link() -> str:
    """Return the demo's link: a slow emulated one where namespaces can be made, else none."""
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


if __name__ == "__main__":
    app()
