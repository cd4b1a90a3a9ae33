"""Fixtures shared by every test directory."""

import os

import torch

# Without a GPU, Triton's kernels run in its interpreter on CPU tensors
# (tests/lightning_quant/test_gpu_kernels.py). Triton reads this when it is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tests.utils.api_server import api_server, db_server  # noqa: E402, F401 - pytest fixtures
