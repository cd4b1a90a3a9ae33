"""The hierarchical path: full precision inside a node, quantized between nodes (real gloo)."""

import math

import pytest
import torch

from lightning_quant.collectives import Collective, ring_traffic
from lightning_quant.hooks import make_comm_hook
from lightning_quant.hooks.groups import use_hierarchy
from lightning_quant.quantizers import get_quantizer
from tests.utils.overhead import step_overhead_traffic
from tests.utils.ranks import run_ranks

WORKERS = "tests.lightning_quant.ddp_workers"

pytestmark = pytest.mark.timeout(300)


def test_auto_turns_on_for_several_nodes_of_several_ranks():
    assert use_hierarchy("auto", 4, 2) is True
    assert use_hierarchy("auto", 8, 4) is True
    assert use_hierarchy("auto", 4, 1) is False  # one rank per node: nothing to reduce inside
    assert use_hierarchy("auto", 4, 4) is False  # one node: nothing to quantize between
    assert use_hierarchy("auto", 6, 4) is False  # does not fit: stays flat
    assert use_hierarchy(False, 8, 4) is False and use_hierarchy(True, 8, 4) is True
    assert use_hierarchy(True, 4, 4) is False  # one node: turned off, with a warning


def test_a_topology_the_world_does_not_fit_is_a_clear_error():
    with pytest.raises(ValueError, match="6 ranks does not fit nodes of 4 ranks"):
        use_hierarchy(True, 6, 4)
    with pytest.raises(ValueError, match="True, False or 'auto'"):
        make_comm_hook("qsgd", hierarchical="yes")


def expected_bytes(config: dict, numel: int, bits: int, nodes: int, local: int) -> tuple[int, int]:
    """(intra-node, inter-node) bytes one rank sends for one bucket on the hierarchical path
    (local rank 0 of node 0, inter-node path: the all-gather, as auto picks at 2 nodes)."""
    q = get_quantizer(config["scheme"], bits=bits)
    units = -(-numel // q.alignment)
    chunk = -(-units // local) * q.alignment
    intra = 2 * (local - 1) * chunk * 4  # fp32 reduce-scatter, then all-gather, in the node
    mine = min(numel, chunk)  # local rank 0's chunk
    inter = (nodes - 1) * q.wire_nbytes(mine, bits=bits)
    return intra, inter


CONFIGS = [
    {"scheme": "qsgd", "bits": 4},
    {"scheme": "dqsgd", "bits": 6, "total_steps": 4, "target_error": 1e-3},
    {"scheme": "nuqsgd", "bits": 3, "error_feedback": True},
]


@pytest.mark.parametrize(("nodes", "local"), [(2, 2), (3, 2)])
def test_replicas_stay_bit_identical_and_count_intra_and_inter_bytes(nodes, local, tmp_path):
    configs = [
        {
            **c,
            "hierarchical": True,
            "ranks_per_node": local,
            "min_compress_numel": 0,
            "compress_1d": True,
            "seed": 2,
        }  # fmt: skip
        for c in CONFIGS
    ]
    results = run_ranks(f"{WORKERS}:train_each", nodes * local, tmp_path, configs=configs)
    for index, config in enumerate(CONFIGS):
        first = results[0][index]
        for other in results[1:]:
            for a, b in zip(first["params"], other[index]["params"], strict=True):
                assert torch.equal(a, b), config
        for stats, numels in zip(first["stats"], first["numels"], strict=True):
            if nodes == 2:  # auto between 2 nodes: the all-gather
                sizes = [expected_bytes(config, k, stats["bits"], nodes, local) for k in numels]
                ranks = range(nodes * local)
                node_of = [r // local for r in ranks]
                if config["scheme"] == "dqsgd":  # its gradient norm's sum over every rank
                    norm = ring_traffic(Collective.ALLREDUCE, 4, ranks, 0, node_of)
                    sizes.append((norm.sent - norm.inter_node, norm.inter_node))
                overhead = step_overhead_traffic(len(numels), len(numels), ranks, node_of)
                sizes += [(t.sent - t.inter_node, t.inter_node) for t in overhead]
                assert stats["intra_node_bytes"] == sum(i for i, _ in sizes), config
                assert stats["inter_node_bytes"] == sum(e for _, e in sizes), config
            assert stats["collectives"] >= 3 * len(numels)  # inside, between, inside
    dqsgd = [s["bits"] for s in results[0][1]["stats"]]
    assert len(set(dqsgd)) > 1 and all(
        [s["bits"] for s in r[1]["stats"]] == dqsgd for r in results
    )  # one width per step, the same on every rank


def test_hierarchical_aggregate_is_unbiased_on_two_nodes_of_two(tmp_path):
    results = run_ranks(
        f"{WORKERS}:aggregated_gradients",
        4,
        tmp_path,
        scheme="qsgd",
        draws=300,
        many_buckets=True,
        bits=2,
        min_compress_numel=0,
        compress_1d=True,
        hierarchical=True,
        ranks_per_node=2,
    )
    exact, samples = results[0]["exact"].double(), results[0]["samples"].double()
    assert torch.equal(results[0]["samples"], results[-1]["samples"])
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])
    assert ((mean - exact) ** 2).sum() <= 1.5 * (se**2).sum() + 1e-12
    assert samples.std(0).max() > 0


@pytest.mark.parametrize("collective", ["allgather", "reduce_scatter"])
def test_error_feedback_between_nodes_loses_nothing(collective, tmp_path):
    steps, nodes, local = 4, 2, 2
    results = run_ranks(
        f"{WORKERS}:error_feedback_ledger",
        nodes * local,
        tmp_path,
        scheme="qsgd",
        bits=2,
        steps=steps,
        collective=collective,
        hierarchical=True,
        ranks_per_node=local,
    )
    for name, total in results[0]["total"].items():
        mean = sum(r["local"][name] for r in results) / (nodes * local)

        def moved(kind: str, name=name, shape=total.shape) -> torch.Tensor:
            zero = torch.zeros(shape, dtype=torch.float64).reshape(-1)
            change = [r["before"][kind].get(name, zero) - r["after"][kind].get(name, zero)
                      for r in results]  # fmt: skip
            return sum(change).reshape(shape)

        # each chunk is quantized among one rank per node: its residuals count 1/nodes
        expected = steps * mean + moved("worker") / nodes + moved("owner")
        assert torch.allclose(total, expected, atol=1e-4), name
