"""A new scheme is one module plus one registry line, and the suite runs it unedited.

The scheme here is a throwaway: stochastic ternary levels against each bucket's max norm,
declared as a :class:`~lightning_quant.quantizers.bucketed.BucketedQuantizer` would be in
its own module. Registered for the test (here and in the ranks the test starts), it goes
through the registry-driven tests exactly as they run for the shipped schemes: the codec's
properties, the hook's training with bit-identical replicas and exact bytes, error
feedback's contraction, the strategy's registered name and a Lightning run.
"""

import pytest
import torch

import tests.lightning_quant.test_error_feedback as feedback_tests
import tests.lightning_quant.test_hooks as hook_tests
import tests.lightning_quant.test_quantizers as codec_tests
from lightning_quant.hooks import available_schemes, get_scheme
from lightning_quant.quantizers import available_quantizers
from lightning_quant.quantizers.bucketed import BucketedQuantizer
from lightning_quant.strategy import STRATEGY_NAMES
from tests.utils.ranks import run_ranks
from tests.utils.schemes import make, registered

NAME = "toy_ternary"

pytestmark = pytest.mark.timeout(300)


class ToyTernary(BucketedQuantizer):
    """The whole scheme: max-norm scaling; the levels and rounding are the base class's."""

    norm = "inf"


@pytest.fixture
def toy():
    with registered(NAME, ToyTernary):  # what `@register_quantizer(NAME)` does in a module
        yield NAME


def test_the_registry_and_its_derived_lists_take_it_in(toy) -> None:
    assert toy in available_quantizers() and toy in available_schemes()
    assert get_scheme(toy, bits=3).collectives == make("qsgd").collectives
    assert make(toy).lossy and not make(toy).shared_scale  # so STOCHASTIC and BUCKETED


def test_its_codec_passes_the_codec_tests(toy) -> None:
    for bits in (2, 4):
        codec_tests.test_unbiased(toy, "heavy", bits)
    for dtype in (torch.float32, torch.bfloat16):
        codec_tests.test_every_dtype_and_shape_round_trips(toy, dtype, (2, 3, 257))
    codec_tests.test_payload_survives_the_wire(toy)
    codec_tests.test_all_zero_buckets_decode_to_exact_zeros(toy)
    codec_tests.test_non_finite_input_is_never_made_finite(toy, float("nan"))
    feedback_tests.test_contracted_payloads_never_expand_and_decode_as_returned(toy)


@pytest.mark.slow
def test_it_trains_through_the_hook_on_three_ranks(toy, tmp_path) -> None:
    hook_tests.test_training_keeps_ranks_identical_and_counts_real_bytes(
        toy, many_buckets=True, world_size=3, tmp_path=tmp_path / "train"
    )
    hook_tests.test_aggregated_gradient_is_unbiased(toy, 2, True, tmp_path / "unbiased")


@pytest.mark.slow
def test_lightning_trains_with_it(toy, tmp_path) -> None:
    # the registered strategy names are fixed at import; a new module's scheme is there
    # from then on, as every shipped one is
    assert f"ddp_{toy}" not in STRATEGY_NAMES
    results = run_ranks(
        "tests.lightning_quant.lightning_workers:fit_digits", 2, tmp_path, scheme=toy, epochs=1
    )
    for a, b in zip(results[0]["params"], results[1]["params"], strict=True):
        assert torch.equal(a, b)
    assert results[0]["stats"][-1]["sent_bytes"] > 0 and results[0]["config"]["scheme"] == toy
