"""``python -m benchmarks.sweep``: real multi-process Lightning runs, records, the API."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from benchmarks import namespaces, sweep
from benchmarks.netem import NETNS_PREFIX, emulated_network, network_emulation_available
from benchmarks.sweep import launch
from benchmarks.tasks import TASKS
from lightning_quant.hooks import STEP_METRICS

ROOT = Path(__file__).resolve().parents[2]
DIGITS_PARAMS = sum(a * b + b for a, b in itertools.pairwise(TASKS["digits"].sizes))


def run_sweep(
    *args: str, timeout: float = 150, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.sweep", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def by_scheme(records: list[dict]) -> dict[str, dict]:
    return {r["scheme"]: r for r in records}


# ----- a real sweep on loopback ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_tiny_sweep_records_every_requested_scheme(tmp_path):
    out = tmp_path / "records.json"
    done = run_sweep(
        "--task", "digits", "--schemes", "fp32,qsgd,torch_bf16", "--bits", "4",
        "--world-size", "2", "--link", "none", "--steps", "15", "--warmup", "3",
        "--val-every", "5", "--json", str(out), "--markdown", str(tmp_path / "table.md"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [r["scheme"] for r in records] == ["fp32", "qsgd", "torch_bf16"]
    for record in records:
        assert set(sweep.RECORD_FIELDS) <= set(record)
        assert record["world_size"] == 2 and record["link"] == "none"

    runs = by_scheme(records)
    fp32, qsgd, bf16 = runs["fp32"], runs["qsgd"], runs["torch_bf16"]
    assert fp32["bits"] == 32 and qsgd["bits"] == 4
    assert qsgd["steps_at_bits"] == {"4": 12}  # measured steps at each width
    for record in (fp32, qsgd):
        assert record["status"] == "ok", record["error"]
        assert record["steps"] == 15 and record["measured_steps"] == 12
        assert record["step_time_s"] > 0 and record["predicted_step_s"] > 0
        assert record["compute_s"] > 0 and record["codec_s"] >= 0
        assert len(record["step_time_s_per_rank"]) == 2
        assert record["step_time_s"] == max(record["step_time_s_per_rank"])
        assert record["raw_bytes_per_step"] == 4 * DIGITS_PARAMS  # one fp32 gradient
        assert 0 < record["final_loss"] < math.log(10) + 0.2
        assert 0 <= record["test_accuracy"] <= 1
    # the real bytes: with 2 ranks fp32 sends its gradient once; 4-bit QSGD an eighth of
    # it plus scales; on loopback there is no interface counter to read
    assert fp32["sent_bytes_per_step"] == fp32["raw_bytes_per_step"]
    assert fp32["measured_tx_bytes_per_step"] is None
    assert fp32["collective"] == "allreduce" and qsgd["collective"] == "allgather"
    assert 6 < qsgd["compression_ratio"] < 8 and qsgd["mean_bits"] == 4
    assert fp32["speedup_vs_fp32"] == 1.0
    # validation every 5 steps: fp32's final accuracy is the target, which it reaches
    assert fp32["val_checks"] == 3 and fp32["target"] == fp32["final_val_acc"]
    assert fp32["time_to_target_s"] is not None and fp32["steps_to_target"] <= 15
    assert qsgd["target"] == fp32["final_val_acc"] and qsgd["val_s_per_check"] > 0
    assert fp32["test_accuracy"] > 0.3  # 15 steps of digits learn something

    assert bf16["status"] == "unavailable"
    assert "bf16_compress_hook" in bf16["error"] and "NCCL" in bf16["error"]
    assert bf16["step_time_s"] is None
    assert "Sweep" in done.stdout and "unavailable" in done.stdout
    assert "| fp32 | 32 | allreduce | 2x1 | flat | none |" in (tmp_path / "table.md").read_text()


@pytest.mark.timeout(120)
def test_failed_runs_are_recorded_and_the_sweep_goes_on(tmp_path):
    """Runs that time out become failed records; an unreachable API only warns."""
    out = tmp_path / "records.json"
    done = run_sweep(
        "--task", "digits", "--schemes", "fp32,qsgd,torch_bf16", "--steps", "5",
        "--warmup", "1", "--timeout", "1", "--json", str(out),
        "--api", f"http://127.0.0.1:{_closed_port()}", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [r["status"] for r in records] == ["failed", "failed", "unavailable"]
    assert all("timed out after 1 s" in r["error"] for r in records[:2])
    assert "bf16_compress_hook" in records[2]["error"]
    assert "did not take every record" in done.stderr and "replay" in done.stderr
    assert all(r["run_key"] for r in records)  # spooled under their keys


def _closed_port() -> int:
    return sweep.free_port()  # nothing listens there once the probe socket is closed


def test_a_crashed_rank_fails_the_run_and_its_peers_are_killed(tmp_path, monkeypatch):
    script = "import os, sys, time\nif os.environ['RANK'] == '1': sys.exit(3)\ntime.sleep(60)"
    monkeypatch.setattr(launch, "rank_argv", lambda *a: [sys.executable, "-c", script])
    spec = _spec(world_size=2)
    start = time.monotonic()
    with pytest.raises(sweep.RunFailed, match="rank 1 exited with 3"):
        sweep.launch_ranks(spec, tmp_path, None, timeout_s=30, grace_s=0.5)
    assert time.monotonic() - start < 10  # rank 0 was killed, not waited for


# ----- planning and figures, without training ---------------------------------------------


def _spec(**changes) -> sweep.RunSpec:
    fields = {
        "task": "digits", "scheme": "qsgd", "bits": 4, "world_size": 2, "link": "none",
        "seed": 0, "steps": 10, "warmup": 2, "batch_size": 32, "bucket_size": 512,
    }  # fmt: skip
    return sweep.RunSpec(**{**fields, **changes})


def test_plan_runs_floats_once_fp32_first_and_refusals_kept():
    args = sweep.parse_args(
        ["--schemes", "global_qsgd,torch_fp16,fp32,torch_bf16", "--bits", "3,4",
         "--world-size", "2,8", "--seeds", "0,1"]
    )  # fmt: skip
    specs = sweep.plan_runs(args)
    first = [s for s in specs if s.world_size == 2 and s.seed == 0]
    assert [(s.scheme, s.bits) for s in first] == [
        ("fp32", 32), ("global_qsgd", 3), ("global_qsgd", 4), ("torch_fp16", 16),
        ("torch_bf16", 16),
    ]  # fmt: skip
    reasons = {(s.scheme, s.bits, s.world_size): s.unavailable for s in specs}
    collectives = {(s.scheme, s.bits, s.world_size): s.collective for s in specs}
    assert "one of (2, 4, 8)" in reasons[("global_qsgd", 3, 2)]
    assert reasons[("global_qsgd", 4, 2)] is None
    assert collectives[("global_qsgd", 4, 2)] == "allreduce"
    # 4-bit lanes hold 7 ranks: at 8 it runs, on the reduce-scatter path
    assert reasons[("global_qsgd", 4, 8)] is None
    assert collectives[("global_qsgd", 4, 8)] == "reduce_scatter"
    assert "gloo" in reasons[("torch_bf16", 16, 2)]
    assert len(specs) == 2 * 2 * 5


def test_plan_runs_each_scheme_once_per_collective_it_supports():
    args = sweep.parse_args(
        ["--schemes", "fp32,qsgd,global_qsgd", "--bits", "4",
         "--collective", "auto,allgather,reduce_scatter", "--world-size", "2,4"]
    )  # fmt: skip
    planned = [(s.world_size, s.scheme, s.collective) for s in sweep.plan_runs(args)]
    assert planned == [
        (2, "fp32", "allreduce"),  # none of the asked ones suits fp32: its own, once
        (2, "qsgd", "allgather"),  # auto at 2 ranks is the all-gather: once
        (2, "qsgd", "reduce_scatter"),
        (2, "global_qsgd", "allreduce"),
        (2, "global_qsgd", "reduce_scatter"),
        (4, "fp32", "allreduce"),
        (4, "qsgd", "reduce_scatter"),
        (4, "qsgd", "allgather"),
        (4, "global_qsgd", "allreduce"),
        (4, "global_qsgd", "reduce_scatter"),
    ]
    with pytest.raises(SystemExit):
        sweep.parse_args(["--collective", "ring"])


def test_plan_runs_each_coded_scheme_once_per_coding_and_floats_once():
    args = sweep.parse_args(
        ["--schemes", "fp32,torch_fp16,qsgd,global_qsgd", "--bits", "4",
         "--coding", "packed,entropy", "--world-size", "2"]
    )  # fmt: skip
    planned = [(s.scheme, s.coding, s.collective) for s in sweep.plan_runs(args)]
    assert planned == [
        ("fp32", "packed", "allreduce"),
        ("torch_fp16", "packed", "allreduce"),
        ("qsgd", "packed", "allgather"),
        ("qsgd", "entropy", "allgather"),
        ("global_qsgd", "packed", "allreduce"),
        ("global_qsgd", "entropy", "reduce_scatter"),  # its summing all-reduce takes no codes
    ]
    coded = next(s for s in sweep.plan_runs(args) if s.coding == "entropy")
    assert coded.quantizer_settings()["coding"] == "entropy" and "entropy" in coded.name
    with pytest.raises(SystemExit):
        sweep.parse_args(["--coding", "huffman"])


def test_unknown_scheme_is_refused_with_the_names():
    with pytest.raises(SystemExit) as exit_info:
        sweep.parse_args(["--schemes", "fp32,qsdg"])
    assert exit_info.value.code == 2


def test_shaped_link_without_root_exits_2_with_the_reason(monkeypatch, capsys):
    monkeypatch.setattr(namespaces.os, "geteuid", lambda: 1000)
    assert sweep.main(["--link", "100mbit", "--schemes", "fp32"]) == 2
    assert "needs root" in capsys.readouterr().err


def _result(step_s: list[list[float]], losses: list[float]) -> dict:
    ranks = []
    for rank, times in enumerate(step_s):
        stats = [
            {"step": i, "buckets": 1, "raw_bytes": 400, "payload_bytes": 50, "sent_bytes": 50,
             "inter_node_bytes": 50, "collectives": 1, "rounds": 1, "encode_s": 0.001,
             "communicate_s": 0.002, "decode_s": 0.003, "bits": 4, "compression_ratio": 8.0,
             "step_s": s}
            for i, s in enumerate(times)
        ]  # fmt: skip
        ranks.append(
            {
                "rank": rank, "stats": stats, "losses": losses,
                "times": [sum(times[: i + 1]) for i in range(len(times))],
                "compute_s": 0.01 * (rank + 1), "threads": 1,
            }
        )  # fmt: skip
    return {"ranks": ranks, "test_accuracy": 0.5, "test_loss": 1.0, "param_count": 100}


def test_summarize_takes_the_slower_rank_after_the_warmup():
    result = _result(
        [[0.0, 9.0, 0.10, 0.10, 0.12], [0.0, 9.0, 0.20, 0.30, 0.20]], [3, 2, 1.5, 1.2, 1.0]
    )
    record = sweep.summarize(_spec(steps=5, warmup=2), result)
    assert record["measured_steps"] == 3
    assert record["step_time_s_per_rank"] == [0.10, 0.20]
    assert record["step_time_s"] == 0.20
    assert record["compute_s"] == 0.02  # the slower rank's
    assert record["codec_s"] == pytest.approx(0.004)
    assert record["sent_bytes_per_step"] == 50 and record["compression_ratio"] == 8
    assert record["final_loss"] == pytest.approx(sum([3, 2, 1.5, 1.2, 1.0]) / 5)
    assert record["predicted_step_s"] == pytest.approx(0.02 + 0.004 + record["predicted_comm_s"])


def test_time_and_bytes_to_target_come_from_the_first_validation_reaching_it():
    checks = [
        {"step": 1, "time_s": 1.0, "val_loss": 3.0, "val_acc": 0.2},
        {"step": 3, "time_s": 2.5, "val_loss": 2.0, "val_acc": 0.6},
        {"step": 5, "time_s": 3.1, "val_loss": 2.2, "val_acc": 0.5},
    ]
    assert sweep.first_reaching(checks, "val_loss", 2.1, higher_is_better=False) == checks[1]
    assert sweep.first_reaching(checks, "val_acc", 0.55, higher_is_better=True) == checks[1]
    assert sweep.first_reaching(checks, "val_loss", 1.0, higher_is_better=False) is None
    # in a record: each check with the bytes rank 0 sent before it (50 a step here)
    result = _result([[0.1] * 5, [0.1] * 5], [3, 2, 1.5, 1.2, 1.0])
    result["ranks"][0].update(validations=checks, val_s=0.3)
    spec = _spec(steps=5, warmup=2)
    record = sweep.summarize(spec, result)
    assert [c["sent_bytes"] for c in record["validations"]] == [50, 150, 250]
    assert record["total_sent_bytes"] == 250 and record["final_val_loss"] == 2.2
    sweep.compare_with_baseline(record, None, result, target=0.55)  # digits: val_acc
    assert (record["time_to_target_s"], record["steps_to_target"]) == (2.5, 3)
    assert record["bytes_to_target"] == 150


# ----- an emulated 100 Mbit/s link -----------------------------------------------------------


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(
    not network_emulation_available(), reason="network emulation needs root and iproute2"
)
def test_sweep_over_an_emulated_100mbit_link(tmp_path, api_server):
    before = {n for n in _namespaces() if n.startswith(NETNS_PREFIX)}
    out = tmp_path / "records.json"
    done = run_sweep(
        "--task", "digits", "--schemes", "fp32,qsgd", "--link", "100mbit",
        "--steps", "12", "--json", str(out), "--api", api_server.base_url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runs = by_scheme(json.loads(out.read_text()))
    for record in runs.values():
        assert record["status"] == "ok", record["error"]
        assert record["link"] == "100mbit" and record["predicted_comm_s"] > 0
    # the wire dominates: fp32's gradient takes longer to cross than 4-bit payloads
    assert runs["fp32"]["predicted_comm_s"] > 4 * runs["qsgd"]["predicted_comm_s"]
    assert {n for n in _namespaces() if n.startswith(NETNS_PREFIX)} <= before
    # ranks in namespaces cannot reach the host's loopback: the sweep replays their spool
    with httpx.Client(base_url=api_server.api_url, trust_env=False) as client:
        for run in client.get("/runs", params={"tag": "sweep"}).json()["data"]:
            assert run["status"] == "finished" and run["total_sent_bytes"] > 0
            metrics = client.get(f"/runs/{run['id']}/metrics").json()["data"]
            assert len([m for m in metrics if m["name"] == "comm/sent_bytes"]) == 12


# ----- the run store -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sweep_stores_runs_metrics_and_summaries_in_the_api(tmp_path, api_server):
    out = tmp_path / "records.json"
    done = run_sweep(
        "--task", "digits", "--schemes", "fp32,nuqsgd,torch_bf16", "--steps", "8",
        "--warmup", "2", "--json", str(out), "--api", api_server.base_url,
        "--settings", "levels=reference,base=0.4",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warning" not in done.stderr
    records = by_scheme(json.loads(out.read_text()))
    with httpx.Client(base_url=api_server.api_url, trust_env=False) as client:
        listed = client.get("/runs", params={"tag": "sweep"}).json()
        assert listed["count"] == 3
        stored = {run["scheme"]: run for run in listed["data"]}
        for scheme in ("fp32", "nuqsgd"):
            record, run = records[scheme], stored[scheme]
            assert run["run_key"] == record["run_key"]
            assert run["status"] == "finished"
            assert run["world_size"] == 2 and run["num_nodes"] == 2 and run["backend"] == "gloo"
            assert run["param_count"] == DIGITS_PARAMS and run["dataset"] == "sklearn-digits"
            assert run["model_name"] == "mlp-64-128-128-10" and run["topology"] == "2x1"
            assert run["bits"] == record["bits"] and run["collective"] == record["collective"]
            assert run["final_accuracy"] == pytest.approx(record["test_accuracy"])
            assert run["predicted_step_s"] == pytest.approx(record["predicted_step_s"])
            assert run["summary"]["step_time_s"] == pytest.approx(record["step_time_s"])
            assert run["strategy_config"]["scheme"] == scheme
            assert run["hyperparameters"]["lr"] == 0.05 and run["versions"]["torch"]
            # rank 0's logger sent every step as it trained, under the loggers' names
            metrics = client.get(f"/runs/{run['id']}/metrics").json()["data"]
            names = {m["name"] for m in metrics}
            comm = {f"comm/{name}" for name in STEP_METRICS}
            assert {"train_loss", *comm} <= names
            sent = sorted(m["step"] for m in metrics if m["name"] == "comm/sent_bytes")
            assert len(sent) == 8
        nuqsgd = stored["nuqsgd"]["quantizer_config"]  # as rank 0 built it from --settings
        assert nuqsgd["bits"] == 4 and nuqsgd["levels"] == "reference" and nuqsgd["base"] == 0.4
        assert stored["nuqsgd"]["total_sent_bytes"] < stored["fp32"]["total_sent_bytes"] / 6
        unavailable = stored["torch_bf16"]
        assert unavailable["status"] == "failed"
        assert unavailable["summary"]["status"] == "unavailable"
        assert "NCCL" in unavailable["summary"]["error"]


def test_settings_go_to_the_schemes_that_have_them():
    args = sweep.parse_args(
        ["--schemes", "fp32,qsgd,dqsgd", "--bits", "4", "--world-size", "4",
         "--settings", "target_error=200.5,max_bits=8,min_bits=3"]
    )  # fmt: skip
    assert args.settings == {"target_error": 200.5, "max_bits": 8, "min_bits": 3}
    specs = {s.scheme: s for s in sweep.plan_runs(args)}
    assert specs["fp32"].settings == () and specs["qsgd"].quantizer_settings() == {
        "bits": 4, "bucket_size": 512
    }  # fmt: skip
    dqsgd = specs["dqsgd"]
    assert "max_bits=8 min_bits=3 target_error=200.5" in dqsgd.name
    assert dqsgd.quantizer_settings() == {
        "bits": 4, "bucket_size": 512, "lr": 0.05, "max_bits": 8, "min_bits": 3,
        "target_error": 200.5,
    }  # fmt: skip
    for bad in (["--settings", "levels"], ["--schemes", "qsgd", "--settings", "levels=paper"]):
        with pytest.raises(SystemExit):
            sweep.parse_args(bad)


def test_settings_are_checked_as_the_ranks_build_the_scheme():
    """DQ-SGD's ``mu * lr < 1`` holds with the task's learning rate, not the default's."""
    mu = ["--schemes", "dqsgd", "--task", "lm", "--world-size", "4", "--settings"]
    (usable,) = sweep.plan_runs(sweep.parse_args([*mu, "mu=20"]))
    assert usable.unavailable is None and usable.quantizer_settings()["lr"] == 1e-3
    (refused,) = sweep.plan_runs(sweep.parse_args([*mu, "mu=1000"]))
    assert "mu=1000, lr=0.001" in refused.unavailable


def test_args_are_comma_lists():
    args = sweep.parse_args(["--bits", "2,4,4", "--world-size", "2,3", "--link", "none,1gbit"])
    assert isinstance(args, argparse.Namespace)
    assert args.bits == [2, 4] and args.world_size == [2, 3] and args.link == ["none", "1gbit"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_dqsgd_lm_sweep_feeds_the_dashboards_bits_chart(tmp_path, api_server, monkeypatch):
    from streamlit.testing.v1 import AppTest

    done = run_sweep(
        "--task", "lm-tiny", "--schemes", "qsgd,dqsgd", "--world-size", "3", "--steps", "8",
        "--warmup", "2", "--val-every", "4", "--api", api_server.base_url,
        "--settings", "target_error=0.5,min_bits=2,max_bits=8",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with httpx.Client(base_url=api_server.api_url, trust_env=False) as client:
        runs = {r["scheme"]: r for r in client.get("/runs").json()["data"]}
        metrics = client.get(f"/runs/{runs['dqsgd']['id']}/metrics").json()["data"]
    bits = [m["value"] for m in metrics if m["name"] == "comm/bits"]
    assert len(bits) == 8 and all(2 <= b <= 8 for b in bits)
    assert {"train_loss", "val_loss"} <= {m["name"] for m in metrics}

    monkeypatch.setenv("LQ_API_URL", api_server.base_url)
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=60)
    at.query_params["runs"] = f"{runs['qsgd']['id']},{runs['dqsgd']['id']}"
    at.run()
    assert not at.exception and not at.error
    captions = "\n".join(str(c.value) for c in at.caption)
    assert len(set(bits)) > 1 and "kept one width" not in captions  # its widths are charted


def test_plan_runs_auto_once_and_a_link_change_in_every_run():
    args = sweep.parse_args(
        ["--schemes", "fp32,auto,qsgd", "--bits", "4", "--coding", "packed,entropy",
         "--link", "1gbit", "--link-change", "30:100mbit", "--steps", "60"]
    )  # fmt: skip
    specs = sweep.plan_runs(args)
    assert [(s.scheme, s.coding) for s in specs] == [
        ("fp32", "packed"), ("auto", "packed"), ("qsgd", "packed"), ("qsgd", "entropy"),
    ]  # fmt: skip
    auto = specs[1]
    assert auto.unavailable is None and auto.collective == "auto"
    assert all(s.link_change == (30, "100mbit") for s in specs)
    assert "--progress" in launch.rank_argv(auto, Path("out.json"), 60)
    for bad in (["--link-change", "30:fast"], ["--link-change", "90:100mbit"],
                ["--link", "none", "--link-change", "3:10mbit"]):  # fmt: skip
        with pytest.raises(SystemExit):
            sweep.parse_args(["--steps", "60", "--link", "1gbit", *bad])


def test_a_link_change_is_summarized_before_and_after():
    steps = [{"step_s": 1.0, "link_bytes_per_s": 1e8}] * 10
    steps += [{"step_s": 3.0, "link_bytes_per_s": 1e7}] * 30
    change = {"step": 10, "from": "100mbit", "to": "10mbit", "applied_at_step": 10}
    summary = sweep.records._link_change({"link_change": change}, steps)
    assert summary["step_time_before_change_s"] == 1.0
    assert summary["step_time_after_change_s"] == 3.0
    assert summary["link_bytes_per_s_by_step"] == [1e8] * 10 + [1e7] * 30
    assert sweep.records._link_change({}, steps) == {}


@pytest.mark.timeout(60)
@pytest.mark.skipif(
    not network_emulation_available(), reason="network emulation needs root and iproute2"
)
def test_a_changed_link_is_put_back_for_the_next_run(tmp_path):
    def rates(net) -> set[str]:
        shown = [
            subprocess.run(
                ["tc", "-n", h.namespace, "qdisc", "show", "dev", h.interface],
                capture_output=True, text=True, check=True,
            ).stdout.split()
            for h in net.hosts
        ]  # fmt: skip
        return {words[words.index("rate") + 1] for words in shown}

    spec = _spec(link="1gbit", link_change=(3, "100mbit"))
    progress = tmp_path / "progress"
    with emulated_network(2, "1gbit") as net:
        changer = launch._LinkChanger(spec, net, progress)
        changer.poll()  # no progress yet
        progress.write_text("2")
        changer.poll()
        assert changer.applied_at is None and rates(net) == {"1Gbit"}
        progress.write_text("3")
        changer.poll()
        assert changer.applied_at == 3 and rates(net) == {"100Mbit"}
        changer.restore()  # the next run of the sweep starts on its own link again
        assert rates(net) == {"1Gbit"} and net.link.name == "1gbit"


def test_a_race_runs_until_the_target_or_three_times_the_steps(tmp_path):
    out = tmp_path / "race.json"
    done = run_sweep(
        "--task", "digits", "--schemes", "fp32,qsgd", "--bits", "2,8", "--world-size", "2",
        "--steps", "10", "--warmup", "1", "--val-every", "5", "--race", "--json", str(out),
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    fp32, *others = json.loads(out.read_text())
    assert fp32["steps"] == 10
    for record in others:
        assert record["status"] == "ok" and record["target"] == fp32["final_val_acc"]
        reached = record.get("steps_to_target")
        # stopped at the validation that reached fp32's accuracy, else ran 3x the steps
        assert record["steps"] == (reached if reached is not None else 30)
    with pytest.raises(SystemExit):
        sweep.parse_args(["--race"])  # no validations, no target to reach
