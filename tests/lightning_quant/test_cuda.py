"""The hook on CUDA tensors over NCCL (world size 1); skipped where no GPU is present."""

import pytest
import torch

from lightning_quant.quantizers import get_quantizer
from tests.utils.ranks import run_ranks

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("scheme", ["qsgd", "nuqsgd", "qsgd_inf", "dqsgd", "global_qsgd", "fp16"])
def test_hook_on_cuda_with_nccl(scheme: str, tmp_path) -> None:
    bits = {"global_qsgd": 8, "fp16": None}.get(scheme, 4)
    settings = {"bits": bits} if bits else {}
    [result] = run_ranks(
        "tests.lightning_quant.ddp_workers:train_plain_ddp",
        1,
        tmp_path,
        scheme=scheme,
        many_buckets=True,
        device="cuda",
        min_compress_numel=0,
        compress_1d=True,
        **settings,
    )
    last = result["stats"][-1]
    assert last["buckets"] > 0 and last["raw_bytes"] / last["payload_bytes"] > 1.9
    assert all(torch.isfinite(p).all() for p in result["params"])


@pytest.mark.parametrize("settings", [{"hierarchical": True}, {"collective": "reduce_scatter"}])
def test_two_stage_and_hierarchical_paths_on_cuda_with_nccl(settings: dict, tmp_path) -> None:
    # one GPU, one rank: NCCL runs the all-to-all, all-gather and the DeviceMesh groups
    [result] = run_ranks(
        "tests.lightning_quant.ddp_workers:train_plain_ddp",
        1,
        tmp_path,
        scheme="qsgd",
        bits=4,
        many_buckets=True,
        device="cuda",
        min_compress_numel=0,
        compress_1d=True,
        **settings,
    )
    assert result["stats"][-1]["collectives"] >= 2 * result["stats"][-1]["buckets"]
    assert all(torch.isfinite(p).all() for p in result["params"])


def test_codec_matches_its_wire_formula_on_cuda() -> None:
    for name in ("qsgd", "nuqsgd", "global_qsgd"):
        q = get_quantizer(name)
        x = torch.randn(1_000_003, device="cuda")
        payload = q.encode(x, torch.Generator(device="cuda").manual_seed(0))
        assert payload.nbytes == q.wire_nbytes(x.numel())
        assert q.decode(payload).is_cuda
