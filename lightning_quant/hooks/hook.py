"""The quantized DDP communication hook: picks a bucket's path and runs it in the pipeline."""

# No ``from __future__ import annotations`` here: DDP checks the hook's annotations
# against ``dist.GradBucket`` itself, and would find strings.
import torch
import torch.distributed as dist
from torch.futures import Future

from lightning_quant.collectives import Collective
from lightning_quant.hooks.paths import PATHS, Job, hierarchical
from lightning_quant.hooks.pipeline import Final, Stages
from lightning_quant.hooks.state import QuantizedCommState
from lightning_quant.quantizers import get_quantizer

__all__ = ["quantized_hook"]

_PLAIN = get_quantizer("fp32")  # buckets under min_compress_numel


def quantized_hook(state: QuantizedCommState, bucket: dist.GradBucket) -> Future[torch.Tensor]:
    """Average ``bucket`` across ranks through the state's quantizer and collective.

    Has PyTorch's comm-hook signature; returns a future holding the averaged bucket,
    written in place into the bucket's buffer.
    """
    stats = state.begin_bucket(bucket)
    tensor = bucket.buffer()
    small = tensor.numel() < state.min_compress_numel
    quantizer = _PLAIN if small else state.quantizer
    feedback = state.error_feedback and not small
    job = Job(
        bucket=bucket,
        quantizer=quantizer,
        stats=stats,
        generator=state.generator(tensor.device),
        worker_residuals=state.worker_residuals if feedback else None,
        owner_residuals=state.owner_residuals if feedback else None,
    )
    collective = Collective.ALLREDUCE if small else state.collective
    path: Stages | Final
    if state.local_group is not None and state.node_group is not None:
        path = hierarchical(
            job, state.local_group, state.node_group, collective, state.intra_dtype, tensor, tensor
        )
    else:
        path = PATHS[collective](job, state.group, tensor, tensor, 0)
    index = bucket.index()

    def record_norm(mean: torch.Tensor) -> None:  # DQ-SGD decides from the shared norm
        stats.bucket_sq_norms[index] = float(mean.float().pow(2).sum())

    on_done = record_norm if state.policy is not None else None
    return state.pipeline.run(path, tensor.device, bucket.is_last(), on_done)
