"""The road to the run store: the logger and its client against a real uvicorn, on SQLite
(and, where the test says ``db_server``, on PostgreSQL too)."""

import ast
import dataclasses
import threading
import time
from pathlib import Path

import httpx
import pytest

import lightning_quant
from lightning_quant.runstore import MetricPoint, RunRecord, StoreClient, replay_spool
from tests.utils.api_server import free_port, running_api_server, start_api_server
from tests.utils.ranks import run_ranks

FIT = "tests.lightning_quant.lightning_workers:fit_digits"

pytestmark = pytest.mark.timeout(300)


def test_training_run_is_recorded_with_its_configuration(api_server, tmp_path) -> None:
    # report_to= on the strategy: it adds the RunStoreLogger itself
    results = run_ranks(
        FIT, 2, tmp_path, scheme="nuqsgd", epochs=1, report_to=api_server.base_url,
        store_logger=False,
    )  # fmt: skip
    stats = results[0]["stats"]
    with api_server.client() as http:
        runs = http.get("/runs").json()
        assert runs["count"] == 1  # rank zero only
        run = runs["data"][0]
        assert run["status"] == "finished" and run["scheme"] == "nuqsgd" and run["bits"] == 4
        assert run["world_size"] == 2 and run["num_nodes"] == 2 and run["backend"] == "gloo"
        assert run["collective"] == "allgather" and run["topology"] == "2x1"
        assert run["param_count"] > 10_000 and run["quantizer_config"]["name"] == "nuqsgd"
        assert run["model_name"] == "Classifier" and run["versions"]["torch"]
        assert run["hyperparameters"]["lr"] == 0.05  # the module's, from Lightning
        assert run["final_accuracy"] == pytest.approx(results[0]["test_acc"])
        assert run["total_sent_bytes"] == sum(s["sent_bytes"] for s in stats)
        assert run["mean_step_s"] == pytest.approx(sum(s["step_s"] for s in stats) / len(stats))
        assert run["run_key"] and run["steps"] == len(stats) and run["wall_s"] > 0
        names = {"names": "comm/sent_bytes"}
        metrics = http.get(f"/runs/{run['id']}/metrics", params=names).json()
    assert [m["value"] for m in metrics["data"]] == [s["sent_bytes"] for s in stats]


def test_server_killed_mid_run_and_restarted_loses_and_duplicates_nothing(
    db_server, tmp_path
) -> None:
    server = db_server
    outcome: dict = {}

    def train() -> None:
        outcome["results"] = run_ranks(
            FIT,
            1,
            tmp_path,
            scheme="qsgd",
            epochs=3,
            report_to=server.base_url,
            step_sleep=0.05,
            spool_dir=str(tmp_path / "spool"),
        )

    trainer = threading.Thread(target=train)
    trainer.start()
    try:
        deadline = time.monotonic() + 120
        while not server.query("select 1 from metric limit 1"):
            assert time.monotonic() < deadline and trainer.is_alive(), "no metric ever arrived"
            time.sleep(0.1)
        server.kill()  # SIGKILL in the middle of training: no shutdown at all
        time.sleep(2.0)
        server.restart()
        trainer.join(timeout=240)
        assert not trainer.is_alive()
        result = outcome["results"][0]
        assert result["spooled"] > 0  # the outage really happened while training
        steps = len(result["stats"])
        [(run_id, status)] = server.query("select id, status from run")
        assert status == "finished"
        for name in ("train_loss", "comm/sent_bytes", "comm/encode_s"):
            stored = server.query(
                "select step from metric where run_id=? and name=? order by step",
                run_id,
                name,
            )
            assert [s for (s,) in stored] == list(range(steps)), name  # once each
    finally:
        server.stop()


def test_eight_clients_at_once_store_exact_counts(db_server, tmp_path) -> None:
    steps, names = 2000, ("loss", "sent_bytes", "encode_s", "communicate_s", "decode_s")

    def report(i: int) -> None:
        # a loaded machine may answer late: a timed-out batch is spooled and sent again
        client = StoreClient(db_server.base_url, spool_dir=tmp_path / f"spool{i}", timeout=30)
        key = client.create(RunRecord(name=f"r{i}", scheme="qsgd"))
        for step in range(steps):
            client.log(key, [MetricPoint(step, dict.fromkeys(names, step * 0.5 + i))])
        client.update(key, status="finished")
        assert client.close(timeout=120)

    threads = [threading.Thread(target=report, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = db_server.query("select run_id, count(*) from metric group by run_id")
    assert len(counts) == 8 and all(count == steps * len(names) for _, count in counts)
    assert db_server.query("select count(*) from run where status='finished'") == [(8,)]


def test_api_down_never_blocks_and_replay_delivers_later(tmp_path) -> None:
    port = free_port()  # nothing listens here yet
    spool = tmp_path / "spool"
    client = StoreClient(f"http://127.0.0.1:{port}", spool_dir=spool, timeout=0.5)
    key = client.create(RunRecord(name="offline", scheme="nuqsgd"))
    start = time.perf_counter()
    for step in range(500):
        client.log(key, [MetricPoint(step, {"loss": 1.0 / (step + 1)})])
    assert time.perf_counter() - start < 0.5  # training never waits for the network
    client.update(key, status="finished", final_loss=0.002)
    assert not client.close(timeout=10)  # undeliverable: kept on disk
    assert list(spool.glob("*.jsonl"))
    server = start_api_server(tmp_path / "server")
    try:
        assert replay_spool(server.base_url, spool) == (1, 0)
        assert replay_spool(server.base_url, spool) == (0, 0)  # nothing twice
        with server.client() as http:
            [run] = http.get("/runs").json()["data"]
            assert run["status"] == "finished" and run["final_loss"] == 0.002
            assert run["run_key"] == key
            loss = http.get(f"/runs/{run['id']}/metrics", params={"names": "loss"}).json()
        assert loss["count"] == 500
    finally:
        server.stop()


def test_a_replay_cut_short_keeps_only_what_was_not_delivered(api_server, tmp_path) -> None:
    from lightning_quant.runstore.client import _Delivery, _Offline

    spool = tmp_path / "spool"
    client = StoreClient(f"http://127.0.0.1:{free_port()}", spool_dir=spool, timeout=0.5)
    key = client.create(RunRecord(name="slow", scheme="qsgd"))
    for step in range(40):  # 40 events, sent in batches of 10 values
        client.log(key, [MetricPoint(step, {"loss": float(step)})])
    assert not client.close(timeout=10)
    [path] = spool.glob("*.jsonl")
    sent = 0

    def cut_after_three(request: httpx.Request) -> None:
        nonlocal sent
        sent += 1
        if sent > 3:  # the create and two batches get through, then the link fails
            raise httpx.ConnectError("link down", request=request)

    delivery = _Delivery(api_server.api_url)
    with httpx.Client(trust_env=False, event_hooks={"request": [cut_after_three]}) as http:
        with pytest.raises(_Offline, match="link down"):
            delivery.replay(http, path, batch_values=10)
    assert len(path.read_text().splitlines()) == 20  # two batches of 10 delivered, dropped
    assert replay_spool(api_server.base_url, spool) == (1, 0)  # a new client, by run key
    with api_server.client() as http:
        [run] = http.get("/runs").json()["data"]
        loss = http.get(f"/runs/{run['id']}/metrics", params={"names": "loss"}).json()
    assert [m["step"] for m in loss["data"]] == list(range(40))


def test_a_run_key_is_created_once_however_often_it_is_sent(api_server, tmp_path) -> None:
    record = RunRecord(name="twice", scheme="qsgd", run_key="sweep-7-run-3")
    for _ in range(2):  # two clients, as a sweep's rank and the sweep itself
        client = StoreClient(api_server.base_url, spool_dir=tmp_path)
        assert client.create(record) == "sweep-7-run-3"
        client.update("sweep-7-run-3", final_loss=0.5)
        assert client.close(timeout=10)
    with api_server.client() as http:
        found = http.get("/runs", params={"run_key": "sweep-7-run-3"}).json()
    assert found["count"] == 1 and found["data"][0]["final_loss"] == 0.5


@pytest.mark.parametrize("variable", ["LQ_API_TOKEN", "LQ_API_READ_TOKEN"])
def test_the_client_sends_the_token_from_the_environment(tmp_path, monkeypatch, variable) -> None:
    env = {"LQ_API_READ_TOKEN": "r3ad"}  # a private store: no write token, reads need one
    with running_api_server(tmp_path / "server", env=env) as server:
        monkeypatch.delenv("LQ_API_TOKEN", raising=False)
        monkeypatch.delenv("LQ_API_READ_TOKEN", raising=False)
        monkeypatch.setenv(variable, "r3ad")
        client = StoreClient(server.base_url, spool_dir=tmp_path)
        key = client.create(RunRecord(name="private", scheme="qsgd"))
        client.log(key, [MetricPoint(0, {"loss": 1.0})])
        assert client.close(timeout=10)
        assert httpx.get(server.api_url + "/runs", trust_env=False).status_code == 401
        headers = {"Authorization": "Bearer r3ad"}
        runs = httpx.get(server.api_url + "/runs", headers=headers, trust_env=False).json()
        assert [run["run_key"] for run in runs["data"]] == [key]


def test_refused_records_do_not_stall_the_rest(api_server, tmp_path) -> None:
    client = StoreClient(api_server.base_url, spool_dir=tmp_path)
    key = client.create(RunRecord(name="x", scheme="qsgd", bits=999))
    client.log(key, [MetricPoint(0, {"loss": 1.0})])
    assert client.close(timeout=10)  # a 422 is logged, not retried forever
    assert httpx.get(api_server.api_url + "/runs", trust_env=False).json()["count"] == 0


def test_the_records_are_exactly_the_apis_schemas() -> None:
    from api.models import MetricCreate, RunCreate
    from lightning_quant.runstore.records import RUN_FIELDS

    assert set(RUN_FIELDS) == set(RunCreate.model_fields)
    point = {f.name for f in dataclasses.fields(MetricPoint)}
    assert point == set(MetricCreate.model_fields)
    body = RunRecord(name="n", scheme="qsgd", tags=("a",), final_loss=float("nan")).to_json()
    RunCreate.model_validate(body)  # what we send, the API takes
    assert "final_loss" not in body and body["tags"] == ["a"]


def test_the_library_never_imports_the_api_the_dashboard_or_the_benchmarks() -> None:
    library = Path(lightning_quant.__file__).parent
    for path in library.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top not in ("api", "dashboard", "benchmarks", "app"), (path, name)
        # nor starts them by name, as a command line would
        text = path.read_text()
        for started in ("api.main", "dashboard.app", "benchmarks.sweep", "uvicorn"):
            assert started not in text, (path, started)


def test_an_auto_run_stores_its_choices_and_its_error(api_server, tmp_path) -> None:
    settings = {"probe_steps": 1, "redecide_every": 4, "widths": [2, 4, 8]}
    results = run_ranks(
        FIT, 2, tmp_path, scheme="auto", epochs=1, many_buckets=True,
        report_to=api_server.base_url, store_logger=False, quantizer_config=settings,
    )  # fmt: skip
    stats = results[0]["stats"]
    with api_server.client() as http:
        run = http.get("/runs").json()["data"][0]
        candidates = run["strategy_config"]["auto_candidates"]
        assert run["scheme"] == "auto" and candidates[0] == "fp32" and len(candidates) > 10
        assert run["mean_rel_error"] == pytest.approx(
            sum(s["rel_error"] for s in stats) / len(stats)
        )
        assert run["total_fallbacks"] == sum(s["fallbacks"] for s in stats)
        metrics = http.get(f"/runs/{run['id']}/metrics").json()["data"]
    choices = [m for m in metrics if m["name"].startswith("comm/choice/")]
    assert choices and all(0 <= m["value"] < len(candidates) for m in choices)
    steps = {m["step"] for m in choices}
    assert steps == {m["step"] for m in metrics if m["name"] == "comm/rel_error"}
