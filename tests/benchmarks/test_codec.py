"""The codec benchmark's rows and table, on a small tensor (no timing is asserted)."""

from __future__ import annotations

import torch

from benchmarks import codec


def test_a_row_times_the_codec_and_the_hooks_error_measurement():
    x = torch.randn(1 << 14, generator=torch.Generator().manual_seed(0))
    row = codec.time_codec("nuqsgd", 4, x, repeats=2)
    assert row.numel == x.numel() and row.bits == 4
    assert min(row.encode_s, row.decode_s, row.copy_s, row.measure_s) > 0
    assert row.measure_share == row.measure_s / (row.encode_s + row.decode_s)
    table = codec.throughput_table([row])
    assert "error measurement / (enc+dec)" in table
    assert f"{row.measure_share:.2f} |" in table.splitlines()[-1]
