"""The hook, the strategy and the codecs on CUDA; skipped where no GPU is present.

NCCL will not put two ranks on one GPU, so the NCCL runs have world size 1; several ranks
share the GPU over gloo, which takes CUDA tensors. The fused kernels' layout and
unbiasedness on the device are checked by ``test_gpu_kernels.py``, which runs on CUDA here.
"""

import pytest
import torch

from lightning_quant.quantizers import get_quantizer, kernels
from tests.utils.ranks import run_ranks

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

PLAIN = "tests.lightning_quant.ddp_workers:train_plain_ddp"
FIT = "tests.lightning_quant.lightning_workers:fit_digits"
SMALL_TOO = {"min_compress_numel": 0, "compress_1d": True, "many_buckets": True}


@pytest.mark.parametrize(
    "scheme", ["qsgd", "nuqsgd", "qsgd_inf", "dqsgd", "global_qsgd", "global_qsgd_exp", "fp16"]
)
def test_hook_on_cuda_with_nccl(scheme: str, tmp_path) -> None:
    bits = {"global_qsgd": 8, "fp16": None}.get(scheme, 4)
    settings = {"bits": bits} if bits else {}
    [result] = run_ranks(PLAIN, 1, tmp_path, scheme=scheme, device="cuda", **SMALL_TOO, **settings)
    last = result["stats"][-1]
    assert last["buckets"] > 0 and last["raw_bytes"] / last["payload_bytes"] > 1.9
    assert all(torch.isfinite(p).all() for p in result["params"])
    if scheme != "fp16":  # codec time measured on the device, between CUDA events
        assert 0 < last["encode_s"] < 1 and 0 < last["decode_s"] < 1


@pytest.mark.parametrize("settings", [{"hierarchical": True}, {"collective": "reduce_scatter"}])
def test_two_stage_and_hierarchical_paths_on_cuda_with_nccl(settings: dict, tmp_path) -> None:
    # one GPU, one rank: NCCL runs the all-to-all, all-gather and the DeviceMesh groups
    [result] = run_ranks(
        PLAIN, 1, tmp_path, scheme="qsgd", bits=4, device="cuda", **SMALL_TOO, **settings
    )
    assert result["stats"][-1]["collectives"] >= 2 * result["stats"][-1]["buckets"]
    assert all(torch.isfinite(p).all() for p in result["params"])


@pytest.mark.parametrize(
    ("scheme", "collective"),
    [("qsgd", "allgather"), ("qsgd", "reduce_scatter"), ("global_qsgd", "allreduce")],
)
def test_three_ranks_on_cuda_tensors_over_gloo_stay_identical(
    scheme: str, collective: str, tmp_path
) -> None:
    results = run_ranks(
        PLAIN, 3, tmp_path, scheme=scheme, bits=8, collective=collective, device="cuda",
        backend="gloo", **SMALL_TOO,
    )  # fmt: skip
    first = results[0]["params"]
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(first, other["params"], strict=True))
    assert all(torch.isfinite(p).all() for p in first)


def test_lightning_trains_with_16_mixed_precision_on_the_gpu(tmp_path) -> None:
    [result] = run_ranks(
        FIT, 1, tmp_path, scheme="qsgd", epochs=2, precision="16-mixed", accelerator="gpu"
    )
    assert result["test_acc"] > 0.5
    assert result["stats"] and result["stats"][-1]["payload_bytes"] > 0


@pytest.mark.parametrize("name", ["qsgd", "nuqsgd", "global_qsgd", "global_qsgd_exp"])
def test_the_codec_takes_the_fused_kernels_and_matches_its_wire_formula(name: str) -> None:
    q = get_quantizer(name)
    x = torch.randn(1_000_003, device="cuda")
    assert kernels.supports(x)
    payload = q.encode(x, torch.Generator(device="cuda").manual_seed(0))
    assert payload.nbytes == q.wire_nbytes(x.numel()) and payload.data.is_cuda
    decoded = q.decode(payload)
    assert decoded.is_cuda and torch.isfinite(decoded).all()
