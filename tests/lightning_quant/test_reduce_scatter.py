"""The re-quantizing reduce-scatter path and the choice of collective, in real gloo ranks."""

import logging
import math

import pytest
import torch

from lightning_quant.collectives import Collective, choose_collective
from lightning_quant.hooks import make_comm_hook
from lightning_quant.hooks.paths import shard_bounds
from lightning_quant.quantizers import get_quantizer
from lightning_quant.quantizers.bucketed import uniform_levels
from tests.utils.overhead import step_overhead
from tests.utils.ranks import run_ranks
from tests.utils.schemes import QUANTIZERS

WORKERS = "tests.lightning_quant.ddp_workers"
RS = "reduce_scatter"

pytestmark = pytest.mark.timeout(300)


# --- shards ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("numel", "align", "parts", "expected"),
    [
        (2048, 512, 4, [(0, 512), (512, 1024), (1024, 1536), (1536, 2048)]),
        (640, 512, 3, [(0, 0), (0, 512), (512, 640)]),  # fewer units than ranks, short tail
        (10, 512, 3, [(0, 0), (0, 0), (0, 10)]),  # smaller than one quantization bucket
        (4096, 512, 5, [(0, 512), (512, 1536), (1536, 2048), (2048, 3072), (3072, 4096)]),
        (7, 1, 3, [(0, 2), (2, 4), (4, 7)]),
    ],
)
def test_shards_hold_whole_quantization_buckets(numel, align, parts, expected):
    bounds = shard_bounds(numel, align, parts)
    assert bounds == expected
    assert bounds[0][0] == 0 and bounds[-1][1] == numel
    assert all(a <= b for a, b in bounds)
    assert all(a % align == 0 for a, _ in bounds)


# --- the choice of collective ------------------------------------------------------------


def choose(name: str, requested: str, n: int, **settings) -> Collective:
    q = get_quantizer(name, **settings)
    return choose_collective(name, q.collectives, requested, n, q.allreduce_limit())


GATHER_OR_SCATTER = [  # from the registry: every scheme that can do both
    name for name in QUANTIZERS
    if {Collective.ALLGATHER, Collective.REDUCE_SCATTER} <= set(get_quantizer(name).collectives)
]  # fmt: skip


@pytest.mark.parametrize("name", GATHER_OR_SCATTER)
def test_auto_gathers_at_two_ranks_and_scatters_from_three(name):
    assert choose(name, "auto", 2) is Collective.ALLGATHER
    for n in (3, 4, 8, 16):
        assert choose(name, "auto", n) is Collective.REDUCE_SCATTER
    assert choose(name, "allgather", 8) is Collective.ALLGATHER  # asked for: kept


def test_auto_sums_floats_and_global_qsgd_while_its_lanes_hold(caplog):
    for name in ("fp32", "fp16", "bf16"):
        assert choose(name, "auto", 16) is Collective.ALLREDUCE
    assert choose("global_qsgd", "auto", 7, bits=4) is Collective.ALLREDUCE
    assert choose("global_qsgd", "auto", 127, bits=8) is Collective.ALLREDUCE
    with caplog.at_level(logging.WARNING, logger="lightning_quant.collectives"):
        assert choose("global_qsgd", "auto", 8, bits=4) is Collective.REDUCE_SCATTER
        assert choose("global_qsgd", "allreduce", 9, bits=4) is Collective.REDUCE_SCATTER
    assert len(caplog.records) == 2 and "at most 7" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    ("name", "requested", "allowed"),
    [
        ("qsgd", "allreduce", "auto, allgather, reduce_scatter"),
        ("fp32", RS, "auto, allreduce"),
        ("global_qsgd", "allgather", "auto, allreduce, reduce_scatter"),
        ("nuqsgd", "ring", "auto, allgather, reduce_scatter"),
        ("global_qsgd_exp", "allreduce", "auto, allgather, reduce_scatter"),
    ],
)
def test_a_collective_a_scheme_cannot_do_is_refused_with_the_allowed_ones(name, requested, allowed):
    with pytest.raises(ValueError, match=allowed):
        make_comm_hook(name, collective=requested)


# --- real ranks --------------------------------------------------------------------------

CONFIGS = [
    {"scheme": "qsgd", "bits": 4},
    {"scheme": "qsgd_inf", "bits": 3, "bucket_size": 33},  # codes not byte-aligned per bucket
    {"scheme": "nuqsgd", "bits": 4},
    {"scheme": "dqsgd", "bits": 6, "total_steps": 4, "target_error": 1e-3},
    {"scheme": "global_qsgd", "bits": 4},
    {"scheme": "qsgd", "bits": 2, "error_feedback": True},
    {"scheme": "global_qsgd_exp", "bits": 8},
    {"scheme": "global_qsgd_exp", "bits": 3, "error_feedback": True},
]


def expected_rs_bytes(config: dict, numel: int, bits: int, n: int) -> tuple[int, int]:
    """(payload bytes, sent bytes) of one bucket on the reduce-scatter path of rank 0."""
    settings = {k: v for k, v in config.items() if k in ("bits", "bucket_size")}
    q = get_quantizer(config["scheme"], **settings)
    bounds = shard_bounds(numel, q.alignment, n)
    sizes = [q.wire_nbytes(b - a, bits=bits) for a, b in bounds]
    width = max(sizes)
    payload = sum(sizes) + width  # the all-to-all's input, then the padded all-gather's
    sent = sum(sizes[1:]) + (n - 1) * width  # rank 0 keeps shard 0; ring all-gather
    return payload, sent  # a shared scale rides on the NaN guard (step_overhead)


@pytest.mark.parametrize("world_size", [3, 4, 5])
def test_replicas_stay_bit_identical_on_many_small_buckets(world_size, tmp_path):
    every = {"min_compress_numel": 0, "compress_1d": True}  # every parameter quantized
    configs = [{**c, "collective": RS, **every, "seed": 1} for c in CONFIGS]
    results = run_ranks(f"{WORKERS}:train_each", world_size, tmp_path, configs=configs)
    for index, config in enumerate(CONFIGS):
        first = results[0][index]
        assert first["collective"] == RS
        assert max(len(step) for step in first["numels"]) >= 5  # many buckets
        for other in results[1:]:
            for a, b in zip(first["params"], other[index]["params"], strict=True):
                assert torch.equal(a, b), config
            assert [s["bits"] for s in other[index]["stats"]] == [
                s["bits"] for s in first["stats"]
            ]  # DQ-SGD: the same width on every rank, both stages
        norm = config["scheme"] == "dqsgd"  # + its gradient norm's all-reduce of 4 bytes
        for stats, numels in zip(first["stats"], first["numels"], strict=True):
            sizes = [expected_rs_bytes(config, k, stats["bits"], world_size) for k in numels]
            sizes += [(4, round(2 * (world_size - 1) / world_size * 4))] if norm else []
            scaled = get_quantizer(config["scheme"]).shared_scale
            sizes += step_overhead(len(numels), len(numels), world_size, scaled)
            assert stats["payload_bytes"] == sum(p for p, _ in sizes), config
            assert stats["sent_bytes"] == sum(s for _, s in sizes), config
            # an all-to-all and an all-gather, a NaN guard each (with any shared scale),
            # and the step's error share
            assert stats["collectives"] == 3 * len(numels) + 1 + norm
    dqsgd = results[0][3]["stats"]
    assert len({s["bits"] for s in dqsgd}) > 1  # its width really moved
    assert results[0][3]["kappa"] == pytest.approx(1 + 1 / world_size)  # two stages of n


@pytest.mark.parametrize(("collective", "world_size"), [(RS, 3), ("allgather", 3), (RS, 4)])
def test_dqsgd_reads_the_ranks_gradient_norm_not_the_noisy_mean(collective, world_size, tmp_path):
    """Its rule wants the workers' gradient norm, the same on every rank: the root of the
    mean of their squared norms, summed by one all-reduce of a float after the buckets'."""
    results = run_ranks(
        f"{WORKERS}:dqsgd_gradient_norm", world_size, tmp_path, collective=collective
    )
    local = torch.stack([r["local"] for r in results])
    exact = math.sqrt(float(local.pow(2).sum()) / world_size)
    for r in results:
        assert r["norm"] == results[0]["norm"]  # the same float on every rank
        assert r["norm"] == pytest.approx(exact, rel=1e-5)
    # what the rule read before: the decoded 3-bit mean, its norm inflated by the noise
    assert results[0]["decoded"] > 1.3 * float(local.mean(0).norm())


@pytest.mark.parametrize(
    ("scheme", "single", "world_size"),
    [
        ("qsgd", "allgather", 4),
        ("global_qsgd", "allreduce", 3),
        ("global_qsgd_exp", "allgather", 5),
    ],
)
def test_two_stages_stay_unbiased_and_within_their_variance_bound(
    scheme, single, world_size, tmp_path
):
    bits = 4
    results = run_ranks(
        f"{WORKERS}:two_stage_variance",
        world_size,
        tmp_path,
        scheme=scheme,
        draws=150,
        bits=bits,
        single=single,
    )
    exact = results[0]["exact"].double()
    locals_ = torch.stack([r["local"].double() for r in results])
    assert torch.allclose(locals_.mean(0), exact, atol=1e-6)
    variances = {}
    for collective, samples in results[0]["samples"].items():
        assert torch.equal(samples, results[-1]["samples"][collective])  # replicas agree
        samples = samples.double()
        mean, se = samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])
        assert ((mean - exact) ** 2).sum() <= 1.5 * (se**2).sum() + 1e-12, collective
        variances[collective] = ((samples - exact) ** 2).sum(1).mean().item()
    if scheme == "qsgd":  # QSGD's bound b per bucket of d <= 512, both stages
        assert variances[RS] > variances["allgather"]  # the second rounding adds its own
        s, n = uniform_levels(bits), world_size
        b = min(512 / s**2, math.sqrt(512) / s)
        spread = (locals_**2).sum().item() / n**2
        assert variances["allgather"] <= b * spread
        assert variances[RS] <= b * (exact**2).sum().item() + (b + b**2) * spread


def test_error_feedback_covers_both_stages_exactly(tmp_path):
    steps, n = 5, 3
    results = run_ranks(
        f"{WORKERS}:error_feedback_ledger", n, tmp_path, scheme="qsgd", bits=2, steps=steps
    )
    for name, total in results[0]["total"].items():
        mean = sum(r["local"][name] for r in results) / n

        def residual(kind: str, when: str, name=name, shape=total.shape) -> torch.Tensor:
            return sum(r[when][kind][name] for r in results).reshape(shape)

        # sum of outputs = T * mean + (1/n) sum_i (e1_i before - after) + (e2 before - after)
        expected = steps * mean
        expected += (residual("worker", "before") - residual("worker", "after")) / n
        expected += residual("owner", "before") - residual("owner", "after")
        assert torch.allclose(total, expected, atol=1e-4), name
        assert residual("owner", "after").abs().sum() > 0  # the second residual is in use
        for other in results[1:]:
            assert torch.equal(other["total"][name], total)
