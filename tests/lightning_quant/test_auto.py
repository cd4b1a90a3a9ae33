"""Per-bucket choices in real gloo processes: the error figures, the fallbacks and ``auto``."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_quant.collectives import Collective
from lightning_quant.hooks import get_scheme, make_comm_hook
from lightning_quant.hooks.auto import (
    AutoChooser,
    AutoConfig,
    Choice,
    candidates,
    plain_choice,
    spread_sample,
    wider,
)
from lightning_quant.hooks.costs import predicted_seconds
from lightning_quant.hooks.errors import relative
from lightning_quant.hooks.link import LinkFit, LinkModel, fit_link
from lightning_quant.quantizers import get_quantizer
from tests.utils.ranks import run_ranks

WORKERS = "tests.lightning_quant.auto_workers"
DDP_WORKERS = "tests.lightning_quant.ddp_workers"

pytestmark = pytest.mark.timeout(300)

# (config, ranks): every path the estimate combines differently
ERROR_CASES = [
    ({"scheme": "qsgd", "bits": 4, "collective": "allgather"}, 3),
    ({"scheme": "qsgd", "bits": 4, "collective": "reduce_scatter"}, 4),
    ({"scheme": "nuqsgd", "bits": 3, "collective": "reduce_scatter", "error_feedback": True}, 3),
    ({"scheme": "global_qsgd", "bits": 8, "collective": "allreduce"}, 3),
    ({"scheme": "qsgd_inf", "bits": 3, "coding": "entropy"}, 3),
]


def bounded(r: float) -> float:
    return 1.0 if math.isinf(r) else r / (1 + r)


@pytest.mark.parametrize(("config", "ranks"), ERROR_CASES, ids=lambda c: str(c))
def test_the_estimated_error_tracks_the_exact_one(config, ranks, tmp_path):
    every = {"min_compress_numel": 0, "compress_1d": True, "check_error": True, "seed": 3}
    (result,) = run_ranks(
        f"{DDP_WORKERS}:train_each", ranks, tmp_path, configs=[{**config, **every}], steps=12
    )[0:1]
    stats = result[0]["stats"]
    assert all(s["exact_rel_error"] > 0 for s in stats)
    # compared as ||m^ - m||^2 / ||m^||^2 = r / (1 + r): r itself divides by the estimate
    # of ||m||^2, ||m^||^2 - error, which is unstable where the error outweighs the mean
    estimate = [bounded(s["rel_error"]) for s in stats]
    exact = [bounded(s["exact_rel_error"]) for s in stats]
    ratio = sum(estimate) / sum(exact)
    assert 0.75 < ratio < 1.3, (estimate, exact)
    assert all(0 < s["rel_variance"] for s in stats)


def test_a_casts_estimate_counts_its_casts_not_the_16_bit_sums(tmp_path):
    config = {"scheme": "fp16", "min_compress_numel": 0, "compress_1d": True, "check_error": True}
    results = run_ranks(f"{DDP_WORKERS}:train_each", 3, tmp_path, configs=[config], steps=6)
    stats = results[0][0]["stats"]
    estimate = sum(s["rel_error"] for s in stats)
    exact = sum(s["exact_rel_error"] for s in stats)
    # the all-reduce also rounds its partial sums to fp16, which no rank measures
    assert 0.2 * exact < estimate < exact < 1e-5


@pytest.mark.parametrize("scheme", ["qsgd", "global_qsgd_exp"])  # its flag carries a scale
def test_a_non_finite_bucket_goes_as_fp32_that_step_on_every_rank(scheme, tmp_path):
    settings = {"bits": 4, "min_compress_numel": 0, "compress_1d": True}
    results = run_ranks(
        f"{WORKERS}:nan_on_one_rank", 3, tmp_path, scheme=scheme, nan_step=1, **settings
    )
    for result in results:
        stats, grads = result["stats"], result["grads"]
        assert [s["fallbacks"] for s in stats] == [0, 1, 0]
        # bucket 0 holds the last layer: exactly plain DDP's mean, Inf and NaN included
        last = torch.cat([g.reshape(-1) for g in grads[1][-2:]])
        exact = result["exact"][0]
        assert torch.equal(last.nan_to_num().sort()[0], exact.nan_to_num().sort()[0])
        assert last.isinf().sum() == 1 and last.isnan().sum() == 1
        assert all(torch.isfinite(g).all() for g in grads[2][:-1])  # the others went on
    for other in results[1:]:
        for a, b in zip(results[0]["grads"][1], other["grads"][1], strict=True):
            assert torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.parametrize("scheme", ["qsgd", "global_qsgd_exp"])
def test_fallback_off_sends_no_guard(scheme, tmp_path):
    settings = {"bits": 4, "min_compress_numel": 0, "compress_1d": True}
    on, off = (
        run_ranks(
            f"{WORKERS}:nan_on_one_rank", 2, tmp_path / str(flag), scheme=scheme, nan_step=1,
            fallback=flag, **settings,
        )[0]
        for flag in (True, False)
    )  # fmt: skip
    assert all(s["fallbacks"] == 0 for s in off["stats"])
    buckets = on["stats"][0]["buckets"]
    # a shared scale goes with the guard's flag, or alone without it: the same scale
    guards = 0 if scheme == "global_qsgd_exp" else buckets
    assert on["stats"][0]["collectives"] - off["stats"][0]["collectives"] == guards
    for a, b in zip(on["grads"][0], off["grads"][0], strict=True):
        assert torch.equal(a, b)


def test_a_bucket_over_budget_widens_until_fp32(tmp_path):
    config = {
        "scheme": "qsgd", "bits": 2, "max_rel_variance": 1e-9, "min_compress_numel": 0,
        "compress_1d": True, "error_feedback": True,
    }  # fmt: skip
    results = run_ranks(f"{DDP_WORKERS}:train_each", 3, tmp_path, configs=[config], steps=5)
    stats = results[0][0]["stats"]
    buckets = stats[-1]["buckets"]  # DDP rebuilds its buckets after the first step
    # 2 -> 4 -> 8 bits -> fp32: each bucket moves three times, then stays
    assert sum(s["fallbacks"] for s in stats) == 3 * buckets and stats[-1]["fallbacks"] == 0
    assert stats[-1]["uncompressed_bytes"] == stats[-1]["raw_bytes"]
    assert stats[-1]["rel_error"] == 0
    for other in results[1:]:
        for a, b in zip(results[0][0]["params"], other[0]["params"], strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize(("ranks", "feedback"), [(3, True), (4, False), (5, True)])
def test_replicas_stay_identical_with_buckets_on_different_configurations(
    ranks, feedback, tmp_path
):
    results = run_ranks(f"{WORKERS}:forced_choices", ranks, tmp_path, error_feedback=feedback)
    labels = set(results[0]["labels"].values())
    assert {"fp16", "fp32", "nuqsgd-3"} <= labels and len(labels) >= 5
    for other in results[1:]:
        for a, b in zip(results[0]["params"], other["params"], strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("ranks", [3, 5])
def test_auto_decides_the_same_on_every_rank(ranks, tmp_path):
    config = {
        "probe_steps": 1, "redecide_every": 3, "widths": [2, 4, 8], "error_feedback": True,
        "bandwidth_change": 1e9,  # loopback's fit is noisy: decide on the steps only here
    }  # fmt: skip
    results = run_ranks(f"{WORKERS}:auto_training", ranks, tmp_path, steps=7, **config)
    first = results[0]
    assert first["decisions"] and {s for s, _, _ in first["decisions"]} == {1, 4}
    for other in results[1:]:
        assert other["decisions"] == first["decisions"]
        for a, b in zip(first["params"], other["params"], strict=True):
            assert torch.equal(a, b)
    assert all(s["link_bytes_per_s"] > 0 for s in first["stats"][1:])
    for decision, why in zip(first["decisions"], first["explained"], strict=True):
        fastest = why["fastest"]
        assert fastest[0]["choice"] == decision[2] and why["link_mbit_s"] > 0
        assert [f["predicted_ms"] for f in fastest] == sorted(f["predicted_ms"] for f in fastest)
        assert all(f["rel_variance"] <= 0.25 or f["choice"] in ("fp32", "fp16", "bf16")
                   for f in fastest)  # fmt: skip


# --- single process ---------------------------------------------------------------------


def test_the_link_fit_recovers_latency_and_bandwidth():
    truth = LinkModel(latency_s=2e-4, bytes_per_s=12.5e6)
    samples = [(r, s, truth.seconds(s, r)) for r in (2, 4, 6) for s in (8, 4096, 1 << 20, 8 << 20)]
    fitted = fit_link(samples)
    assert fitted.latency_s == pytest.approx(2e-4, rel=1e-6)
    assert fitted.bytes_per_s == pytest.approx(12.5e6, rel=1e-6)
    fit = LinkFit(min_bytes=1024)
    assert fit.model() is None  # nothing large enough yet
    start = fit.launched()
    fit.completed(start, 2 << 20, 2)
    assert fit.model() is not None and fit.model().bytes_per_s > 0
    with pytest.raises(ValueError, match="bytes_per_s"):
        LinkModel(0.0, 0.0)


def test_a_bandwidth_move_that_lasts_two_steps_brings_a_decision_forward():
    chooser = AutoChooser(AutoConfig(widths=(4,), redecide_every=50), 0.25, 2, torch.device("cpu"))
    chooser._decided_bandwidth = 125e6
    fast, slow = LinkModel(1e-4, 120e6), LinkModel(1e-4, 12.5e6)
    for step, link in enumerate([fast, slow, fast, slow, slow], start=10):
        chooser.watch(step, link)
        assert not chooser.due(step + 1) or step == 14
    assert chooser.due(15) and chooser._decided_bandwidth == 12.5e6


def test_predictions_prefer_fp32_on_a_fast_link_and_codes_on_a_slow_one():
    numel, n = 4_000_000, 4
    fp32 = plain_choice()
    coded = Choice(get_quantizer("qsgd", bits=4, coding="entropy"), Collective.REDUCE_SCATTER)
    codec = {"bytes_per_coord": 0.14, "encode_s": 5e-9, "decode_s": 4e-9}
    for rate, winner in ((10e9 / 8, fp32), (100e6 / 8, coded)):
        link = LinkModel(latency_s=1e-4, bytes_per_s=rate)
        times = {
            "fp32": predicted_seconds(fp32, numel, n, link, 4.0, 0.0, 0.0),
            "coded": predicted_seconds(coded, numel, n, link, **codec),
        }
        assert min(times, key=times.get) == ("fp32" if winner is fp32 else "coded")


def test_candidates_span_schemes_widths_and_codings():
    config = AutoConfig(widths=(2, 4))
    labels = [c.label for c in candidates(config, 4, torch.device("cpu"))]
    assert labels[:3] == ["fp32", "fp16", "bf16"]
    assert {"qsgd-2", "qsgd-4-entropy", "nuqsgd-4", "global_qsgd-4"} <= set(labels)
    assert not any(label.startswith("dqsgd") for label in labels)  # its width is its own
    assert len(labels) == len(set(labels))
    gpu = [c.label for c in candidates(config, 4, torch.device("cuda"))]
    assert not any(label.endswith("entropy") for label in gpu)


def test_wider_doubles_the_width_then_goes_fp32():
    choice = Choice(get_quantizer("qsgd", bits=2, coding="entropy"), Collective.ALLGATHER)
    steps = [choice.label]
    while not choice.plain:
        choice = wider(choice, 3, own_width=False)
        steps.append(choice.label)
    assert steps == ["qsgd-2-entropy", "qsgd-4-entropy", "qsgd-8-entropy", "fp32"]
    dqsgd = Choice(get_quantizer("dqsgd", bits=4), Collective.ALLGATHER)
    assert wider(dqsgd, 3, own_width=True).plain


def test_a_choice_round_trips_through_a_checkpoint():
    choice = Choice(get_quantizer("nuqsgd", bits=3, coding="entropy"), Collective.REDUCE_SCATTER)
    again = Choice.from_state(choice.state_dict())
    assert again.label == "nuqsgd-3-entropy" and again.collective is Collective.REDUCE_SCATTER
    state, _ = make_comm_hook("qsgd", bits=2)
    state.choices[3] = choice
    fresh, _ = make_comm_hook("qsgd", bits=2)
    fresh.load_state_dict(state.state_dict())
    assert fresh.choices[3].label == "nuqsgd-3-entropy"


def test_relative_error_is_against_the_exact_mean():
    assert relative(1.0, 5.0) == pytest.approx(0.25)
    assert relative(0.0, 0.0) == 0.0 and relative(1.0, 1.0) == math.inf
    assert math.isnan(relative(math.nan, 1.0))


def test_auto_settings_are_checked():
    with pytest.raises(ValueError, match="max_rel_variance"):
        get_scheme("auto", max_rel_variance=0)
    with pytest.raises(ValueError, match="codings"):
        get_scheme("auto", codings=["zip"])
    with pytest.raises(ValueError, match="collective='auto'"):
        get_scheme("auto").check_collective("allgather")
    with pytest.raises(ValueError, match="max_rel_variance"):
        make_comm_hook("qsgd", max_rel_variance=-1.0)
    assert get_scheme("auto", widths=[2, 3]).config_dict()["widths"] == (2, 3)


def test_the_sample_spreads_over_the_whole_bucket():
    values = torch.arange(1_000_000.0)
    sample = spread_sample(values, 1 << 12, pieces=8)
    assert sample.numel() == 1 << 12 and sample[0] == 0 and sample[-1] == 999_999
    assert torch.equal(sample[:512], torch.arange(512.0))  # runs of consecutive elements
    assert spread_sample(values[:100], 1 << 12) is not None
