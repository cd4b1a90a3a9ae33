"""QuantizedDDPStrategy in real multi-process Lightning runs over gloo."""

import csv
from pathlib import Path

import lightning as L
import pytest
import torch

import lightning_quant
from lightning_quant import QuantizedDDPStrategy
from tests.utils.ranks import run_ranks
from tests.utils.schemes import QUANTIZERS, STOCHASTIC

FIT = "tests.lightning_quant.lightning_workers:fit_digits"
SEED_SCHEMES = [name for name in QUANTIZERS if name in STOCHASTIC]  # every registered one

pytestmark = pytest.mark.timeout(300)


def assert_identical(results) -> None:
    for other in results[1:]:
        for a, b in zip(results[0]["params"], other["params"], strict=True):
            assert torch.equal(a, b)


@pytest.fixture(scope="module")
def fp32_baseline(tmp_path_factory):
    return run_ranks(FIT, 2, tmp_path_factory.mktemp("fp32"), scheme="fp32", epochs=8)[0]


@pytest.mark.parametrize("scheme", SEED_SCHEMES)
def test_digits_accuracy_within_two_points_of_fp32(scheme, fp32_baseline, tmp_path) -> None:
    results = run_ranks(FIT, 2, tmp_path, scheme=scheme, epochs=8, bits=4)
    assert_identical(results)
    ours = results[0]
    assert ours["stats"][-1]["sent_bytes"] > 0  # the hook really ran
    assert fp32_baseline["test_acc"] > 0.9
    assert ours["test_acc"] >= fp32_baseline["test_acc"] - 0.02, (
        f"{scheme}: {ours['test_acc']:.3f} vs fp32 {fp32_baseline['test_acc']:.3f}"
    )
    # 2 ranks: fp32 DDP sends the raw bytes once, as the all-gather sends the payload
    assert ours["stats"][-1]["compression_ratio"] > (3.0 if scheme != "dqsgd" else 32 / 8 * 0.9)


def test_strategy_name_trains_with_many_buckets_on_three_ranks(tmp_path) -> None:
    results = run_ranks(
        FIT, 3, tmp_path, scheme="nuqsgd", strategy_name="ddp_nuqsgd", epochs=1, many_buckets=False
    )
    assert_identical(results)
    assert results[0]["strategy"] == "QuantizedDDPStrategy"
    assert results[0]["config"]["scheme"] == "nuqsgd" and results[0]["config"]["world_size"] == 3


@pytest.mark.parametrize("world_size", [2, 3])
def test_many_small_buckets(world_size, tmp_path) -> None:
    results = run_ranks(FIT, world_size, tmp_path, scheme="qsgd", epochs=1, many_buckets=True)
    assert_identical(results)
    assert max(s["buckets"] for s in results[0]["stats"]) >= 4
    expected = "allgather" if world_size == 2 else "reduce_scatter"  # auto
    assert results[0]["config"]["collective"] == expected


def test_statistics_reach_the_logger(tmp_path) -> None:
    results = run_ranks(FIT, 2, tmp_path, scheme="qsgd", epochs=1)
    log_dir = Path(results[0]["log_dir"])
    rows = list(csv.DictReader(open(log_dir / "metrics.csv")))
    for name in ("sent_bytes", "payload_bytes", "inter_node_bytes"):
        logged = [float(r[f"comm/{name}"]) for r in rows if r.get(f"comm/{name}")]
        assert logged == [s[name] for s in results[0]["stats"]]


@pytest.mark.parametrize("precision", ["bf16-mixed"])
def test_mixed_precision(precision, tmp_path) -> None:
    results = run_ranks(FIT, 2, tmp_path, scheme="qsgd", epochs=1, precision=precision)
    assert_identical(results)
    assert results[0]["test_acc"] > 0.5


def test_gradient_accumulation_quantizes_once_per_optimizer_step(tmp_path) -> None:
    results = run_ranks(FIT, 2, tmp_path, scheme="qsgd", epochs=1, accumulate=3)
    assert_identical(results)
    stats = results[0]["stats"]  # one quantized exchange per optimizer step, not per batch
    assert [s["step"] for s in stats] == list(range(results[0]["global_step"]))


def test_checkpoint_resume_continues_the_same_schedule(tmp_path) -> None:
    # The plan's length is fixed, as both halves must plan the same 4-epoch run.
    common = {
        "scheme": "dqsgd",
        "coding": "entropy",  # coded payloads change nothing a checkpoint holds
        "error_feedback": True,
        "many_buckets": True,
        "quantizer_config": {"total_steps": 92},
    }
    straight = run_ranks(FIT, 2, tmp_path / "straight", epochs=4, **common)
    ckpt = tmp_path / "ckpt"
    first = run_ranks(FIT, 2, tmp_path / "first", epochs=2, save_to=str(ckpt), **common)
    saved = torch.load(ckpt / "last.ckpt", weights_only=False)["lightning_quant"]
    assert len(saved["ranks"]) == 2 and saved["ranks"][0]["residuals"]
    streams = [rank["generators"]["cpu"] for rank in saved["ranks"]]
    assert not torch.equal(streams[0], streams[1])  # each rank its own random stream
    assert saved["ranks"][0]["policy"] == first[0]["policy"]
    assert sum(first[0]["policy"]["widths"].values()) == first[0]["policy"]["step"] == 46
    resumed = run_ranks(
        FIT, 2, tmp_path / "second", epochs=4, resume_from=str(ckpt / "last.ckpt"), **common
    )
    # The schedule goes on where it stopped: the first resumed step takes the width the
    # uninterrupted run took there, from the restored norm, and the plan ends at step 92.
    widths = [s["bits"] for s in straight[0]["stats"]]
    assert resumed[0]["stats"][0]["bits"] == widths[46]
    assert resumed[0]["policy"]["step"] == straight[0]["policy"]["step"] == 92
    assert sum(resumed[0]["policy"]["widths"].values()) == 92
    assert len(set(widths)) > 1  # the schedule really moved
    # DDP lays a fresh model out in one bucket before rebuilding its buckets, so the
    # first resumed step is quantized on another grid: close, not bit-identical.
    for a, b in zip(resumed[0]["params"], straight[0]["params"], strict=True):
        assert torch.allclose(a, b, atol=0.05)
    assert resumed[0]["test_acc"] == pytest.approx(straight[0]["test_acc"], abs=0.02)


def test_registered_names() -> None:
    for name in ("ddp_qsgd", "ddp_qsgd_inf", "ddp_nuqsgd", "ddp_dqsgd", "ddp_global_qsgd"):
        assert name in L.pytorch.strategies.StrategyRegistry
    assert lightning_quant.STRATEGY_NAMES["ddp_torch_powersgd"] == "torch_powersgd"
    trainer = L.Trainer(strategy="ddp_global_qsgd", accelerator="cpu", devices=1, logger=False)
    assert trainer.strategy.scheme_name == "global_qsgd"


def test_bad_settings_fail_at_construction() -> None:
    with pytest.raises(KeyError, match="available"):
        QuantizedDDPStrategy("qsgdd")
    with pytest.raises(ValueError, match="bits must be"):
        QuantizedDDPStrategy("qsgd", bits=12)
    with pytest.raises(ValueError, match="one of"):
        QuantizedDDPStrategy("global_qsgd", bits=5)
    with pytest.raises(ValueError, match="auto, allgather, reduce_scatter"):
        QuantizedDDPStrategy("qsgd", collective="allreduce")
    with pytest.raises(ValueError, match="auto, allreduce"):
        QuantizedDDPStrategy("fp32", collective="ring")


def test_static_graph(tmp_path) -> None:
    results = run_ranks(FIT, 2, tmp_path, scheme="qsgd", epochs=1, static_graph=True)
    assert_identical(results)
    assert all(s["buckets"] > 0 and s["sent_bytes"] > 0 for s in results[0]["stats"])
