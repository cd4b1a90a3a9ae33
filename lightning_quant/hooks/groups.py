"""Process groups as the hook sees them: members, this rank's place, and their nodes."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from lightning_quant.collectives import AUTO
from lightning_quant.hooks.link import LinkFit

__all__ = [
    "Group",
    "check_hierarchical",
    "detect_ranks_per_node",
    "mesh_groups",
    "node_mesh",
    "use_hierarchy",
    "world_group",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Group:
    """A process group and what counting its traffic needs.

    Attributes:
        process_group: the group handed to collectives (``None``: the default group).
        ranks: its members as global ranks, in group-rank order.
        index: this rank's position in ``ranks``.
        node_of: the node of every global rank of the world.
        link: the fit of its link, from the collectives launched on it.
    """

    process_group: dist.ProcessGroup | None
    ranks: tuple[int, ...]
    index: int
    node_of: tuple[int, ...]
    link: LinkFit = field(default_factory=LinkFit, compare=False, repr=False)

    @property
    def size(self) -> int:
        return len(self.ranks)


def world_group(process_group: dist.ProcessGroup | None, ranks_per_node: int = 1) -> Group:
    """Describe ``process_group`` (default: the world), nodes of ``ranks_per_node`` ranks."""
    if not dist.is_initialized():
        return Group(process_group, (0,), 0, (0,))
    world = dist.get_world_size()
    ranks = tuple(
        dist.get_process_group_ranks(process_group) if process_group is not None else range(world)
    )
    index = dist.get_rank(process_group)
    return Group(process_group, ranks, index, tuple(r // ranks_per_node for r in range(world)))


def detect_ranks_per_node(process_group: dist.ProcessGroup | None = None) -> int:
    """Return how many ranks share each node, as the launcher laid them out.

    The launcher's ``LOCAL_WORLD_SIZE`` where it sets it (torchrun, Lightning's launchers):
    a description of the cluster, not a setting of this library. Otherwise the ranks' host
    names, gathered once (collectively: every rank must call it), where every node holds
    the same number of consecutive ranks; otherwise, and without a process group, 1.
    """
    if not dist.is_initialized():
        return 1
    world = dist.get_world_size()
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    if local.isdigit() and int(local) >= 1 and world % int(local) == 0:
        return int(local)
    hosts: list[str | None] = [None] * world
    dist.all_gather_object(hosts, socket.gethostname())
    per_node = hosts.count(hosts[0])
    blocks = [hosts[r : r + per_node] for r in range(0, world, per_node)]
    if world % per_node == 0 and all(len(set(block)) == 1 for block in blocks):
        if len({block[0] for block in blocks}) == len(blocks):
            return per_node
    log.warning("ranks are not laid out in equal nodes of consecutive ranks: %s", hosts)
    return 1


def node_mesh(ranks_per_node: int, device_type: str) -> DeviceMesh:
    """Build the (node, local) mesh of the world, collectively: every rank must call it.

    Global rank ``r`` sits on node ``r // ranks_per_node`` as local rank
    ``r % ranks_per_node``, Lightning's and torchrun's numbering.

    Raises:
        ValueError: the world size is not a whole number of nodes of ``ranks_per_node``.
    """
    world = dist.get_world_size()
    if ranks_per_node < 1 or world % ranks_per_node:
        raise ValueError(
            f"a world of {world} ranks does not fit nodes of {ranks_per_node} ranks each; "
            "every node must hold the same number of ranks"
        )
    return init_device_mesh(
        device_type, (world // ranks_per_node, ranks_per_node), mesh_dim_names=("node", "local")
    )


def mesh_groups(mesh: DeviceMesh) -> tuple[Group, Group]:
    """Return the ``(local, node)`` groups of this rank in a (node, local) mesh.

    ``local`` holds the ranks of this rank's node; ``node`` the ranks of the same local
    index on every node, one per node.
    """
    nodes = {rank: node for node, row in enumerate(mesh.mesh.tolist()) for rank in row}
    node_of = tuple(nodes[rank] for rank in range(len(nodes)))
    groups = []
    for name in ("local", "node"):
        process_group = mesh.get_group(name)
        ranks = tuple(dist.get_process_group_ranks(process_group))
        groups.append(Group(process_group, ranks, dist.get_rank(process_group), node_of))
    return groups[0], groups[1]


def check_hierarchical(hierarchical: bool | str) -> None:
    """Raise ``ValueError`` unless ``hierarchical`` is ``True``, ``False`` or ``"auto"``."""
    if hierarchical not in (True, False, AUTO):
        raise ValueError(f"hierarchical must be True, False or 'auto', got {hierarchical!r}")


def use_hierarchy(hierarchical: bool | str, world_size: int, ranks_per_node: int) -> bool:
    """Resolve ``hierarchical`` (``True``, ``False`` or ``"auto"``) for this layout.

    It is on when there are several nodes of several ranks each: ``"auto"`` turns it on
    there, and ``True`` anywhere else is turned off with a warning (one node, or one rank
    per node: the path would quantize through one-rank groups for nothing).

    Raises:
        ValueError: an unknown value, or ``True`` for a world that is not a whole number
            of nodes of ``ranks_per_node`` ranks.
    """
    check_hierarchical(hierarchical)
    fits = world_size % ranks_per_node == 0
    if hierarchical is True and not fits:
        raise ValueError(
            f"a world of {world_size} ranks does not fit nodes of {ranks_per_node} ranks; "
            "the hierarchical path needs every node to hold the same number of ranks"
        )
    useful = fits and ranks_per_node > 1 and world_size // ranks_per_node > 1
    if hierarchical is True and not useful:
        nodes = world_size // ranks_per_node
        log.warning(
            "hierarchical=True turned off: %d node(s) of %d rank(s) leave nothing to reduce "
            "%s; using the flat path",
            nodes, ranks_per_node, "between nodes" if nodes == 1 else "inside a node",
        )  # fmt: skip
    return useful if hierarchical in (True, AUTO) else False
