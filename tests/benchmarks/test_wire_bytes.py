"""The bytes the hook counts against the bytes the ranks' interfaces really sent (root only)."""

from __future__ import annotations

import pytest

from benchmarks.netem import emulated_network, network_emulation_available
from benchmarks.sweep.launch import launch_ranks
from benchmarks.sweep.plan import RunSpec
from benchmarks.sweep.records import summarize

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not network_emulation_available(), reason="network emulation needs root and iproute2"
    ),
]

RUNS = [  # (scheme, bits, collective): every collective the hook can launch
    ("fp32", 32, "allreduce"),
    ("qsgd", 4, "allgather"),
    ("nuqsgd", 4, "reduce_scatter"),
    ("global_qsgd", 4, "allreduce"),
]


@pytest.mark.timeout(300)
def test_sent_bytes_match_the_interface_counters(tmp_path):
    # an unshaped veth per rank: the counters count the same bytes, only faster
    world = 3
    records = {}
    with emulated_network(world, link="none") as net:
        for index, (scheme, bits, collective) in enumerate(RUNS):
            spec = RunSpec(
                task="large", scheme=scheme, bits=bits, world_size=world, link="none", seed=0,
                steps=5, warmup=2, batch_size=32, bucket_size=512, collective=collective,
            )  # fmt: skip
            result = launch_ranks(spec, tmp_path / f"run{index}", net, timeout_s=240)
            records[collective, scheme] = summarize(spec, result)
    for key, record in records.items():
        assert record["collective"] == key[0]
        # one rank per node: what a rank sends is what crosses its node's interface
        sent, measured = (
            record["sent_bytes_per_rank"],
            record["measured_inter_node_tx_bytes_per_node"],
        )
        assert len(measured) == world
        for ours, wire in zip(sent, measured, strict=True):
            assert ours == pytest.approx(wire, rel=0.10), key  # headers add a few percent
    # the reduce-scatter sends less than the all-gather at 3 ranks: 2 (n-1)/n against n-1
    gathered = records["allgather", "qsgd"]["measured_tx_bytes_per_step"]
    scattered = records["reduce_scatter", "nuqsgd"]["measured_tx_bytes_per_step"]
    assert scattered < 0.75 * gathered


@pytest.mark.timeout(300)
def test_inter_node_bytes_match_each_nodes_interface_on_two_nodes_of_two(tmp_path):
    # two namespaces of two ranks each: only what leaves a node crosses its veth
    nodes, per_node = 2, 2
    records = {}
    with emulated_network(nodes, link="none", ranks_per_node=per_node) as net:
        for index, hierarchical in enumerate((False, True)):
            spec = RunSpec(
                task="large", scheme="qsgd", bits=4, world_size=nodes * per_node, link="none",
                seed=0, steps=5, warmup=2, batch_size=32, bucket_size=512,
                collective="reduce_scatter" if not hierarchical else "allgather",
                ranks_per_node=per_node, hierarchical=hierarchical,
            )  # fmt: skip
            result = launch_ranks(spec, tmp_path / f"run{index}", net, timeout_s=240)
            records[hierarchical] = summarize(spec, result)
    for hierarchical, record in records.items():
        assert record["hierarchical"] is hierarchical and record["topology"] == "2x2"
        model = record["inter_node_bytes_per_node"]
        measured = record["measured_inter_node_tx_bytes_per_node"]
        for ours, wire in zip(model, measured, strict=True):
            assert ours == pytest.approx(wire, rel=0.10), hierarchical
    # the hierarchy sends each chunk across once: about 0.57x the flat reduce-scatter's
    flat = records[False]["measured_inter_node_tx_bytes_per_step"]
    assert records[True]["measured_inter_node_tx_bytes_per_step"] < 0.65 * flat
