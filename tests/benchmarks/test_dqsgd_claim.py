"""How the DQ-SGD claim reads its sweeps: bytes to fixed-width qsgd's final loss, per variant."""

from __future__ import annotations

import json

import pytest

from benchmarks.dqsgd_claim import DEFAULT_SETTINGS, compare, main, table


def _run(scheme, seed, losses, mb_per_check, mean_bits, settings=None):
    validations = [
        {"step": 10 * (i + 1), "val_loss": loss, "sent_bytes": mb_per_check * 1e6 * (i + 1)}
        for i, loss in enumerate(losses)
    ]
    record = {
        "scheme": scheme,
        "seed": seed,
        "status": "ok",
        "validations": validations,
        "final_val_loss": losses[-1],
        "total_sent_bytes": validations[-1]["sent_bytes"],
        "mean_bits": mean_bits,
    }
    return record | ({"dqsgd_settings": settings} if settings else {})


RECORDS = [
    _run("qsgd", 0, [3.0, 2.5, 2.0, 1.8], 100, 4.0),
    _run("qsgd", 1, [3.0, 2.6, 2.1, 1.9], 100, 4.0),
    # the rule as configured: reaches seed 0's 1.8 at its last check, seed 1's 1.9 never
    _run("dqsgd", 0, [3.0, 2.4, 2.0, 1.8], 110, 4.4, "target_error=3000"),
    _run("dqsgd", 1, [3.0, 2.6, 2.2, 2.0], 110, 4.4, "target_error=3000"),
    # fewer bits early: reaches both losses at its third check with 3/4 of the bytes
    _run("dqsgd", 0, [2.9, 2.3, 1.7, 1.6], 75, 3.0, "mu=10"),
    _run("dqsgd", 1, [2.9, 2.3, 1.9, 1.8], 75, 3.0, "mu=10"),
]


def test_each_variant_is_read_against_qsgd_of_its_seed():
    rows = {(r["settings"], r["seed"]): r for r in compare(RECORDS)}
    assert len(rows) == 4
    first = rows[("target_error=3000", 0)]
    assert (first["dqsgd_step"], first["dqsgd_bytes"]) == (40, 440e6)
    assert first["ratio"] == pytest.approx(440 / 400)
    assert rows[("target_error=3000", 1)]["ratio"] is None
    assert rows[("mu=10", 0)]["ratio"] == pytest.approx(225 / 400)
    assert rows[("mu=10", 1)]["dqsgd_step"] == 30


def test_the_verdict_is_given_per_variant():
    text = table(compare(RECORDS))
    assert "target_error=3000: did not reach qsgd's final loss in 1 of 2 seeds" in text
    assert "mu=10: mean ratio 0.56x over 2 seeds: goal <= 0.8x met" in text
    assert "not reached (440.0 in all)" in text


def test_a_failed_run_and_a_missing_qsgd_seed_are_left_out():
    failed = _run("dqsgd", 0, [2.0], 1, 2.0, "mu=20") | {"status": "failed"}
    alone = _run("dqsgd", 7, [1.0], 1, 2.0, "mu=20")
    assert all(r["settings"] != "mu=20" for r in compare([*RECORDS, failed, alone]))


def test_records_without_a_variant_are_the_default_rule(tmp_path):
    """Records written before the variants existed ran the default settings."""
    records = [{k: v for k, v in r.items() if k != "dqsgd_settings"} for r in RECORDS[:3]]
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records))
    rows = main(["--from-json", str(path), "--markdown", str(tmp_path / "claim.md")])
    assert [r["settings"] for r in rows] == [DEFAULT_SETTINGS]
    assert (
        f"{DEFAULT_SETTINGS}: mean ratio 1.10x over 1 seeds: goal <= 0.8x missed"
        in (tmp_path / "claim.md").read_text()
    )
