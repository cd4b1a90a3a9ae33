"""The reporter against a real uvicorn server and a real SQLite file."""

import sqlite3
import threading
import time

import httpx
import pytest

from lightning_quant.reporting import ReportClient, replay_spool
from tests.utils.api_server import free_port, start_api_server
from tests.utils.ranks import run_ranks

FIT = "tests.lightning_quant.lightning_workers:fit_digits"

pytestmark = pytest.mark.timeout(300)


def rows(db, sql, *args):
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def test_training_run_is_recorded_with_its_configuration(api_server, tmp_path) -> None:
    results = run_ranks(FIT, 2, tmp_path, scheme="nuqsgd", epochs=1, report_to=api_server.base_url)
    with api_server.client() as http:
        runs = http.get("/runs").json()
        assert runs["count"] == 1  # rank zero only
        run = runs["data"][0]
        assert run["status"] == "finished" and run["scheme"] == "nuqsgd" and run["bits"] == 4
        assert run["world_size"] == 2 and run["num_nodes"] == 2 and run["backend"] == "gloo"
        assert run["param_count"] > 10_000 and run["quantizer_config"]["name"] == "nuqsgd"
        assert run["final_accuracy"] == pytest.approx(results[0]["test_acc"])
        assert run["total_sent_bytes"] == sum(s["sent_bytes"] for s in results[0]["stats"])
        assert run["collective"] == "allgather"  # auto at 2 ranks
        metrics = http.get(f"/runs/{run['id']}/metrics", params={"names": "sent_bytes"}).json()
    assert [m["value"] for m in metrics["data"]] == [s["sent_bytes"] for s in results[0]["stats"]]


def test_server_killed_and_restarted_mid_run_loses_nothing(tmp_path) -> None:
    server = start_api_server(tmp_path / "server")
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
        while not rows(server.database_path, "select 1 from metric limit 1"):
            assert time.monotonic() < deadline and trainer.is_alive(), "no metric ever arrived"
            time.sleep(0.1)
        server.stop()  # killed in the middle of training
        time.sleep(2.0)
        server.restart()
        trainer.join(timeout=240)
        assert not trainer.is_alive()
        result = outcome["results"][0]
        assert result["spooled"] > 0  # the outage really happened while training
        steps = len(result["stats"])
        [(run_id, status)] = rows(server.database_path, "select id, status from run")
        assert status == "finished"
        for name in ("loss", "sent_bytes", "encode_s"):
            stored = rows(
                server.database_path,
                "select step from metric where run_id=? and name=? order by step",
                run_id,
                name,
            )
            assert [s for (s,) in stored] == list(range(1, steps + 1)), name  # once each
    finally:
        server.stop()


def test_eight_reporters_at_once_store_exact_counts(api_server, tmp_path) -> None:
    steps, names = 2000, ("loss", "sent_bytes", "encode_s", "communicate_s", "decode_s")

    def report(i: int) -> None:
        client = ReportClient(
            api_server.base_url,
            {"name": f"r{i}", "scheme": "qsgd"},
            spool_dir=tmp_path / f"spool{i}",
        )
        for step in range(steps):
            client.log_metrics(step, dict.fromkeys(names, step * 0.5 + i))
        client.finish({"status": "finished"})
        assert client.close(timeout=120)

    threads = [threading.Thread(target=report, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = rows(api_server.database_path, "select run_id, count(*) from metric group by run_id")
    assert len(counts) == 8 and all(count == steps * len(names) for _, count in counts)
    assert rows(api_server.database_path, "select count(*) from run where status='finished'") == [
        (8,)
    ]


def test_api_down_never_blocks_and_replay_delivers_later(tmp_path) -> None:
    port = free_port()  # nothing listens here yet
    spool = tmp_path / "spool"
    client = ReportClient(
        f"http://127.0.0.1:{port}",
        {"name": "offline", "scheme": "nuqsgd"},
        spool_dir=spool,
        timeout=0.5,
    )
    start = time.perf_counter()
    for step in range(500):
        client.log_metrics(step, {"loss": 1.0 / (step + 1)})
    assert time.perf_counter() - start < 0.5  # training never waits for the network
    client.finish({"status": "finished", "final_loss": 0.002})
    assert not client.close(timeout=10)  # undeliverable: kept on disk
    assert list(spool.glob("*.jsonl"))
    server = start_api_server(tmp_path / "server")
    try:
        assert replay_spool(server.base_url, spool) == (1, 0)
        assert replay_spool(server.base_url, spool) == (0, 0)  # nothing twice
        with server.client() as http:
            [run] = http.get("/runs").json()["data"]
            assert run["status"] == "finished" and run["final_loss"] == 0.002
            loss = http.get(f"/runs/{run['id']}/metrics", params={"names": "loss"}).json()
        assert loss["count"] == 500
    finally:
        server.stop()


def test_refused_records_do_not_stall_the_rest(api_server, tmp_path) -> None:
    client = ReportClient(
        api_server.base_url, {"name": "x", "scheme": "qsgd", "bits": 999}, spool_dir=tmp_path
    )
    client.log_metrics(0, {"loss": 1.0})
    assert client.close(timeout=10)  # a 422 is logged, not retried forever
    assert httpx.get(api_server.api_url + "/runs", trust_env=False).json()["count"] == 0
