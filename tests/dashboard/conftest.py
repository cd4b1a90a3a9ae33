"""A run store seeded once per module, shared by the dashboard tests (they only read)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils.api_server import ApiServer, running_api_server
from tests.utils.factories import REPORTER_METRIC_NAMES, metric_points, run_payload, seed_runs

# fp32 first, so its run is #1; then quantized schemes at several widths.
SEEDED = (("fp32", None), ("qsgd", 4), ("nuqsgd", 4), ("dqsgd", 4), ("global_qsgd", 8), ("qsgd", 2))
STEPS = 120


@pytest.fixture(scope="module")
def seeded_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A real API server holding one finished run per entry of ``SEEDED`` (ids 1..6, in
    that order, every metric the reporter posts) and a seventh run still training."""
    with running_api_server(tmp_path_factory.mktemp("seeded-api")) as server:
        with server.client() as client:
            for scheme, bits in SEEDED:
                extra = {"bits": bits} if bits is not None else {}
                seed_runs(
                    client,
                    schemes=(scheme,),
                    steps=STEPS,
                    prefix="",
                    names=REPORTER_METRIC_NAMES,
                    **extra,
                )
            running = client.post(
                "/runs", json=run_payload("nuqsgd", status="running", tags=["live"])
            ).json()
            points = metric_points(
                "nuqsgd", steps=40, total_steps=STEPS, names=REPORTER_METRIC_NAMES
            )
            client.post(f"/runs/{running['id']}/metrics", json={"points": points})
        yield server


@pytest.fixture
def empty_api(tmp_path: Path) -> Iterator[ApiServer]:
    with running_api_server(tmp_path / "empty-api") as server:
        yield server
