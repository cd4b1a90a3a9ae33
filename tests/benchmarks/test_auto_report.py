"""The goal checks of issue 24, on records shaped as the sweep writes them."""

from __future__ import annotations

import json

import pytest

from benchmarks import auto_report


def _record(scheme: str, link: str = "100mbit", world: int = 2, **fields) -> dict:
    return {
        "status": "ok", "scheme": scheme, "bits": 4, "coding": "packed", "link": link,
        "world_size": world, "collective": "allgather", "seed": 0, "step_time_s": 1.0,
        "decisions": [], **fields,
    }  # fmt: skip


def test_errors_compare_the_means_of_estimate_and_exact():
    (row,) = auto_report.error_rows(
        [_record("qsgd", rel_errors=[0.1, 0.3, 9.0], exact_rel_errors=[0.1, 0.2, 0.0])]
    )
    assert row["steps"] == 2 and row["ratio"] == pytest.approx(0.2 / 0.15)
    assert not row["met"]


def test_links_take_the_best_fixed_configuration_and_fp32():
    records = [
        _record("fp32", step_time_s=4.0),
        _record("qsgd", step_time_s=1.0),
        _record("qsgd", coding="entropy", step_time_s=0.5),
        _record("auto", bits=4, step_time_s=0.52, decisions=[[1, 0, "qsgd-4-entropy"]]),
        _record("fp32", link="none", step_time_s=1.0),
    ]
    (row,) = auto_report.link_rows(records)  # no auto on loopback: no row
    assert row["best_fixed"] == "qsgd-4 entropy" and row["auto_vs_best"] == pytest.approx(1.04)
    assert row["auto_vs_fp32"] == pytest.approx(0.13) and row["met"]
    assert row["auto_choices"] == ["qsgd-4-entropy"]


def test_a_change_is_met_when_auto_redecides_in_time_and_keeps_up():
    change = {"step": 10, "to": "100mbit", "applied_at_step": 11}
    records = [
        _record("qsgd", link_change=change, step_time_after_change_s=2.0),
        _record("auto", link_change=change, step_time_after_change_s=2.1,
                decisions=[[1, 0, "fp32"], [14, 0, "qsgd-4"]]),
    ]  # fmt: skip
    rows = {r["run"]: r for r in auto_report.change_rows(records)}
    assert rows["auto"]["redecided_at_step"] == 14 and rows["auto"]["met"]
    assert rows["auto"]["vs_best_fixed_after"] == pytest.approx(1.05)


def test_each_seed_is_compared_within_itself():
    change = {"step": 10, "to": "100mbit", "applied_at_step": 10}
    records = [
        _record("qsgd", link_change=change, step_time_after_change_s=1.0),
        _record("qsgd", link_change=change, step_time_after_change_s=3.0, seed=1),
        _record("auto", link_change=change, step_time_after_change_s=2.0,
                decisions=[[12, 0, "qsgd-4"]]),
        _record("auto", link_change=change, step_time_after_change_s=3.0, seed=1,
                decisions=[[12, 0, "qsgd-4"]]),
    ]  # fmt: skip
    autos = [r for r in auto_report.change_rows(records) if r["run"] == "auto"]
    assert [(r["seed"], r["vs_best_fixed_after"], r["met"]) for r in autos] == [
        (0, 2.0, False), (1, 1.0, True),
    ]  # fmt: skip
    links = auto_report.link_rows(
        [_record("qsgd", step_time_s=1.0), _record("auto", step_time_s=1.0),
         _record("qsgd", step_time_s=2.0, seed=1), _record("auto", step_time_s=1.0, seed=1)]
    )  # fmt: skip
    assert [(r["seed"], r["auto_vs_best"]) for r in links] == [(0, 1.0), (1, 0.5)]


def test_the_race_goal_is_auto_no_later_than_the_best_fixed_that_reached():
    records = [
        _record("fp32", time_to_target_s=300.0),
        _record("nuqsgd", time_to_target_s=80.0),
        _record("qsgd", time_to_target_s=None),  # never reached it
        _record("auto", time_to_target_s=78.0),
        _record("fp32", seed=1, time_to_target_s=300.0),
        _record("nuqsgd", seed=1, time_to_target_s=70.0),
        _record("auto", seed=1, time_to_target_s=77.0),
        _record("auto", seed=2, time_to_target_s=None),
    ]
    rows = auto_report.race_goal_rows(records)
    assert [(r["seed"], r["best_fixed"], r["met"]) for r in rows] == [
        (0, "nuqsgd-4", True), (1, "nuqsgd-4", False), (2, None, False),
    ]  # fmt: skip
    assert rows[1]["auto_vs_best"] == pytest.approx(1.1)


def test_the_report_is_written_comparing_within_each_sweep(tmp_path):
    first, second = tmp_path / "short.json", tmp_path / "long.json"
    first.write_text(json.dumps([_record("fp32", step_time_s=2.0), _record("auto")]))
    second.write_text(json.dumps([_record("fp32", step_time_s=0.5), _record("auto")]))
    out = tmp_path / "report.md"
    report = auto_report.main(["--links", str(first), str(second), "--out", str(out)])
    assert "auto beside fixed" in report and out.read_text() == report
    rows = auto_report.link_rows(auto_report._read([first, second]))
    assert [(r["sweep"], r["auto_vs_fp32"]) for r in rows] == [("long", 2.0), ("short", 0.5)]
