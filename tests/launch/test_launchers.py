"""Launch a user's script across two emulated nodes as users do: torchrun, and SLURM.

Two network namespaces joined by a 100 Mbit/s link, each holding one node of two ranks.
``Trainer(strategy="ddp_qsgd", num_nodes=2, devices=2)`` must take the hierarchical
path on its own (``hierarchical="auto"``), keep the replicas identical, and count the
bytes that leave each node within 10% of what the node's interface counted (TCP/IP
headers and acknowledgements included). Needs root and iproute2; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.netem import EmulatedNetwork, emulated_network, network_emulation_available

SCRIPT = Path(__file__).with_name("train_script.py")
ROOT = Path(__file__).resolve().parents[2]
STEPS, WARMUP = 10, 2  # as in train_script.py: the counter is read after step WARMUP
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK",
                      "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")  # fmt: skip

pytestmark = [
    pytest.mark.skipif(
        not network_emulation_available(), reason="network emulation needs root and iproute2"
    ),
    pytest.mark.slow,
    pytest.mark.timeout(400),
]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return {k: v for k, v in env.items() if not k.startswith("SLURM_")}


def _in_namespace(net: EmulatedNetwork, node: int, variables: dict[str, str]) -> list[str]:
    host = net.hosts[node]
    variables = {"GLOO_SOCKET_IFNAME": host.interface, **variables}
    assignments = [f"{k}={v}" for k, v in variables.items()]
    return ["ip", "netns", "exec", host.namespace, "env", *assignments]


def torchrun(net: EmulatedNetwork, out: Path, port: int) -> list[list[str]]:
    """One ``torchrun --nnodes 2 --nproc-per-node 2`` per node, meeting by c10d rendezvous."""
    return [
        _in_namespace(net, node, {})
        + [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--nproc-per-node",
            "2",
            "--rdzv-backend",
            "c10d",
            "--rdzv-id",
            "lq-launch",
            "--rdzv-endpoint",
            f"{net.hosts[0].address}:{port}",
            "--rdzv-conf",
            f"is_host={int(node == 0)}",
            "--local-addr",
            net.hosts[node].address,
            str(SCRIPT),
            "--out",
            str(out),
            "--steps",
            str(STEPS),
        ]  # fmt: skip
        for node in range(2)
    ]


def slurm(net: EmulatedNetwork, out: Path, port: int) -> list[list[str]]:
    """One process per rank with the variables ``srun --nodes 2 --ntasks-per-node 2`` sets."""
    commands = []
    for rank in range(4):
        node, local = divmod(rank, 2)
        variables = {
            "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_NNODES": "2",
            "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NODELIST": "node[0-1]",
            "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(local), "SLURM_NODEID": str(node),
            "MASTER_ADDR": net.hosts[0].address, "MASTER_PORT": str(port),
        }  # fmt: skip
        argv = [sys.executable, str(SCRIPT), "--out", str(out), "--steps", str(STEPS)]
        commands.append(_in_namespace(net, node, variables) + argv)
    return commands


def _run(commands: list[list[str]], workdir: Path, timeout: float = 300) -> None:
    logs = [open(workdir / f"launch{i}.log", "w") for i in range(len(commands))]  # noqa: SIM115
    procs = [
        subprocess.Popen(c, cwd=ROOT, env=_clean_env(), stdout=log, stderr=subprocess.STDOUT)
        for c, log in zip(commands, logs, strict=True)
    ]
    try:
        for proc in procs:
            proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        raise
    finally:
        for log in logs:
            log.close()
    failed = [i for i, proc in enumerate(procs) if proc.returncode]
    assert not failed, "\n".join((workdir / f"launch{i}.log").read_text()[-3000:] for i in failed)


@pytest.mark.parametrize(
    ("launcher", "environment"),
    [(torchrun, "TorchElasticEnvironment"), (slurm, "SLURMEnvironment")],
    ids=["torchrun", "slurm"],
)
def test_two_nodes_launched_as_users_do(launcher, environment, tmp_path) -> None:
    out = tmp_path / "out"
    with emulated_network(2, link="100mbit", ranks_per_node=2) as net:
        _run(launcher(net, out, net.next_master_port()), tmp_path)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(4)]
    assert {r["environment"] for r in ranks} == {environment}
    assert all(r["hierarchical"] for r in ranks)  # auto, with 2 nodes of 2 devices
    assert len({r["digest"] for r in ranks}) == 1  # identical replicas
    for node in range(2):
        members = [r for r in ranks if r["node"] == node]
        counted = sum(
            s["inter_node_bytes"] for r in members for s in r["steps"] if s["step"] >= WARMUP
        )
        (reader,) = [r for r in members if r["local"] == 0]
        before, after = reader["tx_bytes"]
        measured = after - before
        assert counted > 0
        print(f"{launcher.__name__} node {node}: counted {counted} B, interface {measured} B")
        assert abs(measured - counted) <= 0.1 * counted, (node, measured, counted)
