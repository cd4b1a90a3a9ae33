"""The coding benchmark's figures, on small inputs: what it reports is what it measured."""

from __future__ import annotations

import pytest
import torch

from benchmarks import coding
from lightning_quant.quantizers import kernels

pytestmark = pytest.mark.skipif(not kernels.available(), reason="the coder needs Numba")


def test_bits_rows_bound_every_coded_payload_by_its_entropy() -> None:
    x = torch.randn(1 << 16, generator=torch.Generator().manual_seed(0))
    rows = coding.bits_rows({"gaussian": x})
    assert {r["scheme"] for r in rows} == set(coding.schemes())
    for row in rows:
        assert row["coded"] <= row["packed"] * 1.005
        assert row["symbols_entropy"] <= row["codes_entropy"] + 1e-9
        assert row["vs_entropy"] <= coding.GOAL_ENTROPY_SLACK, row
    qsgd4 = next(r for r in rows if r["scheme"] == "qsgd" and r["bits"] == 4)
    assert qsgd4["coded"] < coding.GOAL_LM_BITS < qsgd4["packed"]


def test_speed_rows_measure_all_four_coders() -> None:
    rows = coding.speed_rows(1 << 18, repeats=1)
    assert [r["coder"].split()[0] for r in rows] == ["packed", "rANS,", "constriction", "zstandard"]
    assert all(r["encode_mps"] > 0 and r["decode_mps"] > 0 for r in rows)
    ours, ans = rows[1], rows[2]
    assert ours["bits"] < rows[0]["bits"] and abs(ours["bits"] - ans["bits"]) < 0.1


def test_frontier_check_compares_at_each_packed_budget(tmp_path) -> None:
    rows = [
        {"scheme": "a", "bits": 2, "coding": "packed", "wire_bits": 2.0, "variance": 1.0},
        {"scheme": "a", "bits": 2, "coding": "entropy", "wire_bits": 0.5, "variance": 1.0},
        {"scheme": "a", "bits": 4, "coding": "packed", "wire_bits": 4.0, "variance": 0.1},
        {"scheme": "a", "bits": 4, "coding": "entropy", "wire_bits": 1.5, "variance": 0.1},
        {"scheme": "a", "bits": 8, "coding": "entropy", "wire_bits": 4.5, "variance": 0.01},
    ]
    checks = coding.frontier_check(rows)
    assert [(c["budget"], c["best_coded"], c["met"]) for c in checks] == [
        (2.0, "a 4b", True),  # more levels, fewer bytes than packed 2 bits
        (4.0, "a 4b", False),  # the same variance is not lower
    ]
    coding.frontier_chart(rows, tmp_path / "frontier.png")
    assert (tmp_path / "frontier.png").read_bytes()[:4] == b"\x89PNG"


def test_link_chart_takes_sweep_records(tmp_path) -> None:
    def record(scheme: str, bits: int, coding_: str, link: str, step: float) -> dict:
        return {"status": "ok", "scheme": scheme, "bits": bits, "coding": coding_,
                "link": link, "world_size": 4, "step_time_s": step}  # fmt: skip

    records = [
        record("fp32", 32, "packed", "100mbit", 6.0),
        record("qsgd", 4, "packed", "100mbit", 1.0),
        record("qsgd", 4, "entropy", "100mbit", 0.5),
        record("qsgd", 4, "entropy", "none", 0.5),  # loopback has no rate to plot
    ]
    points = coding.link_chart(records, tmp_path / "links.png")
    assert [(p["config"], p["link_mbit"], p["x_fp32"]) for p in points] == [
        ("fp32", 100.0, 1.0),
        ("qsgd 4b packed", 100.0, pytest.approx(1 / 6)),
        ("qsgd 4b entropy", 100.0, pytest.approx(0.5 / 6)),
    ]
    assert (tmp_path / "links.png").read_bytes()[:4] == b"\x89PNG"
