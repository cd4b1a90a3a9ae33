"""The comm hook in real gloo processes: identical parameters, real bytes, unbiased means."""

import math

import pytest
import torch

from lightning_quant.collectives import Collective
from lightning_quant.hooks import QuantizedCommState, make_comm_hook
from lightning_quant.hooks import get_scheme as make_peer
from lightning_quant.quantizers.bucketed import BucketedQuantizer
from tests.utils.overhead import ring, step_overhead
from tests.utils.ranks import run_ranks
from tests.utils.schemes import (
    PEERS,
    QUANTIZERS,
    STOCHASTIC,
    lowest_width,
    make,
    registry_name,
    takes,
)

WORKERS = "tests.lightning_quant.ddp_workers"

pytestmark = pytest.mark.timeout(240)


def settings_of(scheme: str) -> dict:
    return {"bits": 4} if make(scheme).lossy else {}


def single_stage(scheme: str) -> Collective:
    """The one-stage collective a scheme reduces with: all-gather, else its all-reduce."""
    collectives = make(scheme).collectives
    return Collective.ALLGATHER if Collective.ALLGATHER in collectives else Collective.ALLREDUCE


def expected_bytes(
    scheme: str, shapes: list[tuple[int, int]], min_numel: int, bits: int, n: int
) -> tuple[int, int, int]:
    """Return (payload, sent, uncompressed) bytes of one bucket on a single-stage path.

    Parameters under ``min_numel`` elements and 1-D ones go as one fp32 all-reduce; the
    rest, packed one after the other, through the scheme: its lanes summed, or its
    payloads gathered (a shared scale rides on the NaN guard: ``step_overhead``).
    """
    if make(scheme).name == "fp32":  # plain DDP: the whole bucket in one all-reduce
        size = 4 * sum(k for k, _ in shapes)
        return size, ring(size, n), size
    plain = sum(k for k, dim in shapes if k < min_numel or dim == 1)
    packed = sum(k for k, _ in shapes) - plain
    payload, sent = (4 * plain, ring(4 * plain, n)) if plain else (0, 0)
    if not packed:
        return payload, sent, 4 * plain
    q = make(scheme, **settings_of(scheme))
    if not q.lossy:  # a float cast: one all-reduce
        size = q.wire_nbytes(packed)
        return payload + size, sent + ring(size, n), 4 * plain
    if single_stage(scheme) is Collective.ALLREDUCE:  # summed lanes, the scale apart
        lanes = q.wire_nbytes(packed) - 4
        return payload + lanes, sent + ring(lanes, n), 4 * plain
    size = q.wire_nbytes(packed, bits=bits)
    return payload + size, sent + (n - 1) * size, 4 * plain


def compresses(scheme: str, shapes: list[tuple[int, int]], min_numel: int) -> bool:
    """Whether a bucket goes through the scheme (and its NaN guard), not all as fp32."""
    packed = any(k >= min_numel and dim > 1 for k, dim in shapes)
    return packed and make(scheme).name != "fp32"


@pytest.mark.parametrize(
    ("world_size", "many_buckets"),
    [(2, False), (3, True)],
    ids=["2-ranks-one-bucket", "3-ranks-many-buckets"],
)
@pytest.mark.parametrize("scheme", QUANTIZERS)
def test_training_keeps_ranks_identical_and_counts_real_bytes(
    scheme: str, many_buckets: bool, world_size: int, tmp_path
) -> None:
    settings = settings_of(scheme)
    # single-stage paths here: the reduce-scatter path has tests of its own
    results = run_ranks(
        f"{WORKERS}:train_plain_ddp",
        world_size,
        tmp_path,
        scheme=scheme,
        many_buckets=many_buckets,
        min_compress_numel=64,
        collective=str(single_stage(scheme)),
        **settings,
    )
    first = results[0]
    for other in results[1:]:  # bit-identical parameters on every rank
        for a, b in zip(first["params"], other["params"], strict=True):
            assert torch.equal(a, b)
    assert sum(len(step) for step in first["numels"]) > 0  # the hook ran
    if many_buckets:
        assert max(len(step) for step in first["numels"]) >= 3
    n = world_size
    shares_a_norm = make(scheme, **settings).make_policy() is not None  # one float a step
    for stats, numels, shapes in zip(first["stats"], first["numels"], first["shapes"], strict=True):
        sizes = [expected_bytes(scheme, s, 64, stats["bits"], n) for s in shapes]
        sizes += [(4, ring(4, n), 0)] if shares_a_norm else []
        guarded = sum(1 for s in shapes if compresses(scheme, s, 64))
        scaled = make(scheme).shared_scale
        sizes += [(p, s, 0) for p, s in step_overhead(guarded, len(shapes), n, scaled)]
        assert stats["payload_bytes"] == sum(payload for payload, _, _ in sizes)
        assert stats["sent_bytes"] == sum(sent for _, sent, _ in sizes)
        assert stats["uncompressed_bytes"] == sum(plain for _, _, plain in sizes) > 0
        assert stats["inter_node_bytes"] == stats["sent_bytes"]  # one rank per node
        assert stats["raw_bytes"] == 4 * sum(numels)
        assert stats["buckets"] == len(numels)
        fp32 = 2 * (n - 1) / n * stats["raw_bytes"]
        assert stats["compression_ratio"] == pytest.approx(fp32 / stats["sent_bytes"])
    if isinstance(make(scheme), BucketedQuantizer):  # 2 ranks: the all-gather sends q
        last = first["stats"][-1]
        assert last["compression_ratio"] > 0.8 * 32 / last["bits"] / (n - 1)


@pytest.mark.parametrize(
    ("scheme", "world_size", "many_buckets"),
    [(name, 2 + i % 2, i % 3 != 2) for i, name in enumerate(STOCHASTIC)],
)
def test_aggregated_gradient_is_unbiased(scheme, world_size, many_buckets, tmp_path) -> None:
    # the narrowest width whose payloads the scheme's own collective can take
    bits = next(
        b for b in range(lowest_width(scheme), 9)
        if takes(scheme, bits=b) and (make(scheme, bits=b).allreduce_limit() or 99) >= world_size
    )  # fmt: skip
    name, preset = registry_name(scheme)
    results = run_ranks(
        f"{WORKERS}:aggregated_gradients",
        world_size,
        tmp_path,
        scheme=name,
        draws=300,
        many_buckets=many_buckets,
        bits=bits,
        min_compress_numel=0,
        compress_1d=True,
        **preset,
    )
    exact, samples = results[0]["exact"].double(), results[0]["samples"].double()
    assert torch.equal(results[0]["samples"], results[-1]["samples"])  # all ranks agree
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])
    err = (mean - exact).abs()
    assert (err**2).sum() <= 1.5 * (se**2).sum() + 1e-12
    assert samples.std(0).max() > 0  # it really was quantized


def test_error_feedback_trains_identically_across_ranks(tmp_path) -> None:
    results = run_ranks(
        f"{WORKERS}:train_plain_ddp",
        3,
        tmp_path,
        scheme="qsgd",
        many_buckets=True,
        bits=2,
        error_feedback=True,
        min_compress_numel=0,
        compress_1d=True,
    )
    for a, b in zip(results[0]["params"], results[2]["params"], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("scheme", [p for p in PEERS if not make_peer(p).unavailable("gloo")])
def test_pytorch_peers_run_and_are_counted(scheme: str, tmp_path) -> None:
    results = run_ranks(
        f"{WORKERS}:train_plain_ddp", 2, tmp_path, scheme=scheme, many_buckets=False, steps=4
    )
    for a, b in zip(results[0]["params"], results[1]["params"], strict=True):
        assert torch.allclose(a, b)
    stats = results[0]["stats"]
    raw = stats[-1]["raw_bytes"]
    if scheme == "torch_fp16":
        assert all(s["payload_bytes"] == raw // 2 == s["sent_bytes"] for s in stats)
    else:  # vanilla allreduce for 2 steps, then low-rank factors
        assert stats[0]["payload_bytes"] == raw and stats[-1]["payload_bytes"] < raw / 4


def test_settings_are_checked_before_training() -> None:
    with pytest.raises(KeyError, match="available"):
        make_comm_hook("qsgd9")
    with pytest.raises(ValueError, match="bits must be"):
        make_comm_hook("nuqsgd", bits=1)
    with pytest.raises(ValueError, match="min_compress_numel"):
        QuantizedCommState("qsgd", min_compress_numel=-1)
    with pytest.raises(TypeError, match="only floating"):
        module = torch.nn.Module()
        module.weight = torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))
        QuantizedCommState("qsgd").bind(module)


class FakeBucket:
    """Just enough of dist.GradBucket for the error-feedback bookkeeping."""

    def __init__(self, index: int, params: list[torch.nn.Parameter]) -> None:
        self._index, self._params = index, params

    def index(self) -> int:
        return self._index

    def parameters(self) -> list[torch.nn.Parameter]:
        return self._params


def test_comm_state_round_trips_and_residuals_survive_a_new_bucket_layout() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    params = list(model.parameters())
    every = {"min_compress_numel": 0, "compress_1d": True}  # every parameter compressed

    def layout(state: QuantizedCommState, bucket: FakeBucket):
        return state.plan(bucket).compressed  # the parameters by name, in bucket order

    state = QuantizedCommState("dqsgd", error_feedback=True, seed=3, **every).bind(model)
    state.policy.choose(None)
    state.policy.choose(2.5)
    state.generator(torch.device("cpu")).manual_seed(99)
    one_bucket = FakeBucket(0, params)
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    assert layout(state, one_bucket).keys == ("0.weight", "0.bias", "1.weight", "1.bias")
    state.worker_residuals.store(layout(state, one_bucket), flat)  # residual = flat
    saved = state.state_dict()

    restored = QuantizedCommState("dqsgd", error_feedback=True, seed=3, **every).bind(model)
    restored.load_state_dict(saved)
    assert restored.policy.state_dict() == state.policy.state_dict()
    assert torch.equal(
        restored.generator(torch.device("cpu")).get_state(),
        state.generator(torch.device("cpu")).get_state(),
    )
    # after DDP's rebuild: two buckets holding the parameters in another order
    second, first = FakeBucket(0, params[2:]), FakeBucket(1, params[:2])
    zeros_a = torch.zeros(sum(p.numel() for p in params[2:]))
    zeros_b = torch.zeros(sum(p.numel() for p in params[:2]))
    expected_a = torch.cat([p.detach().reshape(-1) for p in params[2:]])
    expected_b = torch.cat([p.detach().reshape(-1) for p in params[:2]])
    for memory, owner in ((restored.worker_residuals, restored), (state.worker_residuals, state)):
        # restored from a checkpoint, and in a live run with no checkpoint in between
        assert torch.equal(memory.add(layout(owner, second), zeros_a), expected_a)
        assert torch.equal(memory.add(layout(owner, first), zeros_b), expected_b)
