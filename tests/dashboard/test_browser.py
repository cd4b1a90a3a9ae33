"""End to end: the real API, ``streamlit run``, and headless Chromium driven by Playwright.

Screenshots go to ``artifacts/dashboard/`` (git-ignored); their paths are printed.
"""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.dashboard.conftest import SEEDED
from tests.utils.api_server import REPO_ROOT, ApiServer, free_port
from tests.utils.factories import REPORTER_METRIC_NAMES, metric_points, run_payload

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO_ROOT / "artifacts" / "dashboard"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
CHART_SVG = '[data-testid="stVegaLiteChart"] svg'
TIMEOUT_MS = 30_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium"),
]
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def dashboard_url(seeded_api: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``streamlit run dashboard/app.py -- --api-url <seeded API>`` on a free port."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("LQ_")}
    command = [
        sys.executable, "-m", "streamlit", "run", "dashboard/app.py",
        "--server.port", str(port), "--server.address", "127.0.0.1",
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none", "--client.toolbarMode", "viewer",
        "--", "--api-url", seeded_api.base_url,
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"streamlit exited while starting:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{url}/_stcore/health", timeout=1, trust_env=False).is_success:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start in 60 s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator["sync_api.Browser"]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=TIMEOUT_MS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: "sync_api.Browser") -> Iterator["sync_api.Page"]:
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    page.close()


def _marks(page: "sync_api.Page") -> dict[str, int]:
    """How many drawn marks of each kind the page's Vega charts hold."""
    return {
        kind: page.locator(f"{CHART_SVG} g.mark-{kind} path").count()
        for kind in ("line", "rect", "symbol", "area")
    }


def _charts_drawn(page: "sync_api.Page", at_least: int) -> int:
    """Wait until ``at_least`` charts have drawn their SVG; return how many there are."""
    page.wait_for_function(
        "n => document.querySelectorAll('[data-testid=\"stVegaLiteChart\"] svg').length >= n",
        arg=at_least,
    )
    page.wait_for_timeout(500)  # let the last charts finish their marks
    return page.locator(CHART_SVG).count()


def _screenshot(page: "sync_api.Page", name: str) -> Path:
    """The whole page: Streamlit scrolls inside its main block, so grow the viewport."""
    height = page.evaluate(
        "() => document.querySelector('[data-testid=\"stMainBlockContainer\"]').scrollHeight"
    )
    page.set_viewport_size({"width": 1500, "height": min(int(height) + 80, 6000)})
    page.wait_for_timeout(1000)  # charts re-fit to the new size
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def test_picking_two_runs_in_the_page_draws_the_comparison(dashboard_url, page):
    page.goto(dashboard_url)
    picker = page.get_by_test_id("stMultiSelect").filter(has_text="Runs to compare")
    for text in ("#1 fp32", "#2 qsgd"):  # type into the multiselect, pick the option
        picker.locator("input").click()
        picker.locator("input").fill(text)
        option = page.get_by_role("option").filter(has_text=text)
        option.click()
        page.keyboard.press("Escape")
    assert _charts_drawn(page, 11) == 11  # every comparison chart but DQ-SGD's bits
    marks = _marks(page)
    assert marks["line"] > 0 and marks["rect"] > 0 and marks["symbol"] > 0, marks
    page.wait_for_url(lambda url: "runs=" in url)
    assert parse_qs(urlsplit(page.url).query)["runs"] == ["1,2"]
    assert page.get_by_test_id("stMetric").count() == 6
    _screenshot(page, "compare-two.png")


def test_a_shared_link_opens_the_same_comparison(dashboard_url, page):
    ids = ",".join(str(i) for i in range(1, len(SEEDED) + 1))
    page.goto(f"{dashboard_url}/?runs={ids}")
    assert _charts_drawn(page, 12) == 12
    picker = page.get_by_test_id("stMultiSelect").filter(has_text="Runs to compare")
    assert picker.get_by_text("#4 dqsgd 4-bit").count() == 1
    text = page.get_by_test_id("stMain").inner_text()
    assert "Traceback" not in text and "Error" not in text
    _screenshot(page, "compare-all.png")


def test_the_tables_link_opens_a_runs_page(dashboard_url, seeded_api, page):
    with seeded_api.client() as client:
        (newest,) = client.get("/runs", params={"limit": 1}).json()["data"]  # the first row
    page.goto(dashboard_url)
    table = page.get_by_test_id("stDataFrame").first
    table.wait_for()
    page.wait_for_timeout(500)
    box = table.bounding_box()
    assert box is not None
    # the grid is a canvas: the first row's "open" link, in the second column
    cell = (box["x"] + 90, box["y"] + 35 + 17)
    page.mouse.move(*cell)
    with page.context.expect_page() as opened:
        page.mouse.click(*cell)
    run_page = opened.value
    run_page.wait_for_load_state()
    assert parse_qs(urlsplit(run_page.url).query) == {"run": [str(newest["id"])]}
    run_page.close()


def test_a_running_runs_page_follows_its_new_steps(dashboard_url, seeded_api, page):
    with seeded_api.client() as client:
        run = client.post("/runs", json=run_payload("qsgd", status="running")).json()
        points = metric_points("qsgd", steps=60, names=REPORTER_METRIC_NAMES)
        client.post(f"/runs/{run['id']}/metrics", json={"points": points[:30]})
        page.goto(f"{dashboard_url}/?run={run['id']}")
        steps = page.get_by_test_id("stMetric").filter(has_text="Steps")
        sync_api.expect(steps).to_contain_text("30")
        client.post(f"/runs/{run['id']}/metrics", json={"points": points[30:]})
        sync_api.expect(steps).to_contain_text("60", timeout=20_000)  # no reload
        client.patch(f"/runs/{run['id']}", json={"status": "finished"})
        sync_api.expect(page.get_by_text("Still training")).to_have_count(0, timeout=20_000)
        sync_api.expect(page.get_by_test_id("stMain")).to_contain_text("finished")


def test_the_run_page_draws_its_charts(dashboard_url, page):
    page.goto(f"{dashboard_url}/?run=4")
    assert _charts_drawn(page, 8) == 8  # 7, and one of the metrics no chart draws
    assert page.get_by_role("heading", name="resnet18-cifar10-dqsgd-4b-s0").count() == 1
    assert page.get_by_test_id("stDownloadButton").filter(has_text="metrics (CSV)").count() == 1
    assert _marks(page)["area"] > 0  # time per step by phase
    _screenshot(page, "run-page.png")
