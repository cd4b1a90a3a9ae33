"""Emulated network links between training ranks on one machine.

Each node gets its own network namespace and one interface in ``10.200.0.0/24`` (node
``i`` is ``10.200.0.(i+1)``): two nodes are joined by a veth pair, more by a bridge in a
hub namespace. A shaped link puts a ``tbf`` qdisc on both directions of every node's link.
A node's ``ranks_per_node`` ranks talk over its loopback, unshaped (as the GPUs of one
machine over NVLink); only traffic between nodes crosses the shaped link and its byte
counters. ``tbf`` adds no delay (``netem``, which would, is not available here).

Nothing is routed anywhere else. Everything created is removed on normal exit, on an
exception, on SIGINT/SIGTERM and at interpreter exit; :func:`cleanup_stale` removes what a
killed run left behind. Needs root and iproute2 (``ip``, ``tc``).

Example::

    with emulated_network(2, link="100mbit") as net:
        subprocess.run(net.command(0, [sys.executable, "train.py"]), timeout=600)
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import logging
import os
import signal
import threading
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

from benchmarks.links import LINK_PRESETS, LinkPreset, link_preset
from benchmarks.namespaces import (
    Host,
    NetworkEmulationError,
    delete_namespace,
    list_namespaces,
    missing_prerequisite,
    pid_alive,
    run,
)

__all__ = [
    "DEFAULT_MASTER_PORT",
    "LINK_PRESETS",
    "link_preset",
    "NETNS_PREFIX",
    "SUBNET",
    "EmulatedNetwork",
    "Host",
    "LinkPreset",
    "NetworkEmulationError",
    "cleanup_stale",
    "emulated_network",
    "network_emulation_available",
]

log = logging.getLogger(__name__)

SUBNET = "10.200.0.0/24"
NETNS_PREFIX = "lqnet-"
DEFAULT_MASTER_PORT = 29500
_MAX_NODES = 253  # 10.200.0.1 .. 10.200.0.253


@functools.cache
def network_emulation_available() -> bool:
    """Return whether namespaces, veth pairs and ``tbf`` can be created here.

    Checks root and iproute2, then builds and removes a shaped 2-rank network once
    (cached), so a container without the capabilities or kernel modules answers ``False``.
    """
    if missing_prerequisite() is not None:
        return False
    try:
        with emulated_network(2, link="100mbit", install_signal_handlers=False):
            pass
    except NetworkEmulationError as error:
        log.info("network emulation unavailable: %s", error)
        return False
    return True


def cleanup_stale(prefix: str = NETNS_PREFIX, *, include_live: bool = False) -> list[str]:
    """Delete the namespaces of ``prefix`` left behind by killed runs; return their names.

    Names are ``{prefix}{pid}-{sequence}-{rank or "hub"}``; those whose creating process
    still runs belong to a concurrent run and are kept, unless ``include_live``.
    """
    if not prefix:
        raise ValueError("prefix must not be empty: it would match every namespace")
    if missing_prerequisite() is not None:
        return []
    active = {ns for net in list(_ACTIVE) for ns in net.namespaces}
    deleted = []
    for name in list_namespaces():
        if not name.startswith(prefix) or name in active:
            continue
        pid_text = name[len(prefix) :].split("-", 1)[0]
        pid = int(pid_text) if pid_text.isdigit() else None
        if not include_live and pid is not None and pid != os.getpid() and pid_alive(pid):
            continue
        if delete_namespace(name):
            deleted.append(name)
    if deleted:
        log.info("removed stale network namespaces: %s", ", ".join(deleted))
    return deleted


_SEQUENCE = itertools.count()
_ACTIVE: set[EmulatedNetwork] = set()
_HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class EmulatedNetwork:
    """A set of network namespaces joined by emulated links, one per rank.

    Build it with :func:`emulated_network` and use it as a context manager; nothing is
    created before ``__enter__``, which raises :class:`NetworkEmulationError` when not
    root, without ``ip``/``tc``, or when a command fails (whatever was created is removed
    first).

    Args:
        nodes: number of nodes, 2 to 253.
        link: ``"none"``, a ``tbf`` rate such as ``"10mbit"`` (:func:`link_preset`), or
            a :class:`LinkPreset`.
        ranks_per_node: ranks each node holds, on its loopback.
        prefix: start of the namespace names; :func:`cleanup_stale` takes the same.
        master_port: the ``MASTER_PORT`` handed to every rank by default.
        install_signal_handlers: clean up on SIGINT/SIGTERM, then run the handler that
            was installed before (main thread only).

    Attributes:
        nodes: number of nodes (namespaces joined by links).
        ranks_per_node: ranks each node holds.
        world_size: ``nodes * ranks_per_node``.
        link: the :class:`LinkPreset` every node's link uses.
        hosts: one :class:`Host` per node, indexed by node.
        hub: the namespace holding the bridge (more than two ranks), else ``None``.
        master_port: the port :meth:`command` hands out by default.
    """

    def __init__(
        self,
        nodes: int,
        link: str | LinkPreset = "none",
        *,
        ranks_per_node: int = 1,
        prefix: str = NETNS_PREFIX,
        master_port: int = DEFAULT_MASTER_PORT,
        install_signal_handlers: bool = True,
    ) -> None:
        if not 2 <= nodes <= _MAX_NODES:
            raise ValueError(f"nodes must be between 2 and {_MAX_NODES}, got {nodes}")
        if ranks_per_node < 1:
            raise ValueError(f"ranks_per_node must be >= 1, got {ranks_per_node}")
        if isinstance(link, str):
            link = link_preset(link)
        if not 1024 <= master_port <= 65535 - 1000:
            raise ValueError(f"master_port must be between 1024 and 64535, got {master_port}")
        self.nodes = nodes
        self.ranks_per_node = ranks_per_node
        self.world_size = nodes * ranks_per_node
        self.link = link
        self.master_port = master_port
        self._next_port = master_port + 1
        self._install_handlers = install_signal_handlers
        pid, seq = os.getpid(), next(_SEQUENCE)
        # Interfaces are created directly inside their namespaces, so their names only
        # have to be unique there; the pid and sequence number make them recognisable.
        tag = f"{pid:x}.{seq % 0x1000:x}"
        self.hosts = [
            Host(
                rank=rank,
                namespace=f"{prefix}{pid}-{seq}-{rank}",
                interface=f"v{tag}.{rank}",
                address=f"10.200.0.{rank + 1}",
            )
            for rank in range(nodes)
        ]
        self.hub = f"{prefix}{pid}-{seq}-hub" if nodes > 2 else None
        self._bridge = f"b{tag}"
        self._ports = [f"p{tag}.{rank}" for rank in range(nodes)]
        for name in (*(h.interface for h in self.hosts), self._bridge, *self._ports):
            if len(name) > 15:
                raise ValueError(f"interface name {name!r} is longer than 15 characters")
        self._owner_pid = pid
        self._created: list[str] = []
        self._shaped: list[tuple[str, str]] = []  # (namespace, interface) of every tbf
        self._entered = False
        self._closed = False
        self._previous_handlers: dict[int, Any] = {}

    # ----- public API -------------------------------------------------------------------

    @property
    def namespaces(self) -> list[str]:
        """Return every namespace this network uses (ranks, then the hub if any)."""
        return [h.namespace for h in self.hosts] + ([self.hub] if self.hub else [])

    def env(
        self, rank: int, extra: Mapping[str, str] | None = None, *, master_port: int | None = None
    ) -> dict[str, str]:
        """Return the rendezvous variables for ``rank``, updated with ``extra``.

        ``GLOO_SOCKET_IFNAME`` is the interface of the rank's node, ``MASTER_ADDR`` node
        0's address; ranks are numbered by node (``NODE_RANK = rank // ranks_per_node``,
        ``LOCAL_RANK = rank % ranks_per_node``), as Lightning and torchrun number them.
        """
        node, local = divmod(rank, self.ranks_per_node)
        host = self.hosts[node]
        env = {
            "GLOO_SOCKET_IFNAME": host.interface,
            "MASTER_ADDR": self.hosts[0].address,
            "MASTER_PORT": str(self.master_port if master_port is None else master_port),
            "WORLD_SIZE": str(self.world_size),
            "RANK": str(rank),
            "NODE_RANK": str(node),
            "LOCAL_RANK": str(local),
            "LOCAL_WORLD_SIZE": str(self.ranks_per_node),
        }
        env.update(extra or {})
        return env

    def command(
        self,
        rank: int,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        master_port: int | None = None,
    ) -> list[str]:
        """Return ``argv`` prefixed to run inside the namespace of ``rank``'s node.

        The result is ``ip netns exec NS env K=V ... argv``, with the variables of
        :meth:`env`; the process otherwise inherits the caller's environment.

        Example::

            subprocess.Popen(net.command(1, [sys.executable, "train.py"], {"SEED": "1"}))
        """
        if not self._entered or self._closed:
            raise RuntimeError("the emulated network is not up; use it inside its `with` block")
        variables = self.env(rank, env, master_port=master_port)
        assignments = [f"{key}={value}" for key, value in variables.items()]
        namespace = self.hosts[rank // self.ranks_per_node].namespace
        return ["ip", "netns", "exec", namespace, "env", *assignments, *argv]

    def next_master_port(self) -> int:
        """Return a port not handed out before by this network, for one more run.

        The namespaces are fresh and private, so only runs launched in this network can
        hold a port there; a new port per run avoids a previous TCPStore's TIME_WAIT.
        """
        port = self._next_port
        self._next_port += 1
        return port

    def __enter__(self) -> EmulatedNetwork:
        if self._entered:
            raise RuntimeError("an EmulatedNetwork can be entered only once")
        reason = missing_prerequisite()
        if reason is not None:
            raise NetworkEmulationError(reason)
        self._entered = True
        _ACTIVE.add(self)
        if self._install_handlers:
            self._install_signal_handlers()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        log.info(
            "emulated network up: %d nodes of %d ranks, link %s, namespaces %s",
            self.nodes, self.ranks_per_node, self.link.name, ", ".join(self.namespaces),
        )  # fmt: skip
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Delete every namespace created (their interfaces go with them); idempotent."""
        if os.getpid() != self._owner_pid:
            return  # a forked child must not tear down its parent's network
        self._closed = True
        while self._created:
            delete_namespace(self._created.pop())
        self._restore_signal_handlers()
        _ACTIVE.discard(self)

    # ----- building ---------------------------------------------------------------------

    def _add_namespace(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        self._created.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])

    def set_rate(self, link: str) -> None:
        """Change every shaped interface's ``tbf`` to ``link``'s rate, mid-run."""
        preset = link_preset(link)
        if not preset.shaped:
            raise ValueError(f"set_rate needs a tbf rate, got {link!r}")
        self.link = preset
        for namespace, interface in self._shaped:
            self._tbf("replace", namespace, interface)

    def _shape(self, namespace: str, interface: str) -> None:
        self._shaped.append((namespace, interface))
        if self.link.shaped:
            self._tbf("add", namespace, interface)

    def _tbf(self, verb: str, namespace: str, interface: str) -> None:
        tbf = ["qdisc", verb, "dev", interface, "root", "tbf", *self.link.tbf_args()]
        run(["tc", "-n", namespace, *tbf])

    def _build(self) -> None:
        for name in self.namespaces:
            if self._closed:
                raise NetworkEmulationError("interrupted while building the network")
            self._add_namespace(name)
        if self.hub is None:
            a, b = self.hosts
            run(
                ["ip", "link", "add", a.interface, "netns", a.namespace, "type", "veth",
                 "peer", "name", b.interface, "netns", b.namespace]
            )  # fmt: skip
        else:
            run(["ip", "-n", self.hub, "link", "add", self._bridge, "type", "bridge"])
            run(["ip", "-n", self.hub, "link", "set", self._bridge, "up"])
            for host, port in zip(self.hosts, self._ports, strict=True):
                run(
                    ["ip", "link", "add", host.interface, "netns", host.namespace,
                     "type", "veth", "peer", "name", port, "netns", self.hub]
                )  # fmt: skip
                run(["ip", "-n", self.hub, "link", "set", port, "master", self._bridge])
                run(["ip", "-n", self.hub, "link", "set", port, "up"])
                self._shape(self.hub, port)
        for host in self.hosts:
            run(
                ["ip", "-n", host.namespace, "addr", "add", f"{host.address}/24",
                 "dev", host.interface]
            )  # fmt: skip
            run(["ip", "-n", host.namespace, "link", "set", host.interface, "up"])
            self._shape(host.namespace, host.interface)

    # ----- signals ----------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; atexit still cleans up
        for signum in _HANDLED_SIGNALS:
            if signal.getsignal(signum) == signal.SIG_IGN:
                continue  # the process chose to survive this signal; so does the network
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in list(self._previous_handlers.items()):
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
                del self._previous_handlers[signum]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Clean up, then do what the previous handler of ``signum`` would have done."""
        previous = self._previous_handlers.get(signum, signal.SIG_DFL)
        self.close()
        if callable(previous):
            previous(signum, frame)  # SIGINT's default raises KeyboardInterrupt
        elif previous in (signal.SIG_DFL, None):
            _close_all_active()  # the process is about to die: leave nothing behind
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


def emulated_network(
    nodes: int, link: str | LinkPreset = "none", **options: Any
) -> EmulatedNetwork:
    """Return an :class:`EmulatedNetwork` of ``nodes`` nodes (not yet built: enter it).

    Example::

        with emulated_network(3, link="1gbit", ranks_per_node=2) as net:
            print(net.hosts[0].address, net.command(2, ["python", "-c", "print(1)"]))
    """
    return EmulatedNetwork(nodes, link, **options)


@atexit.register
def _close_all_active() -> None:
    for net in list(_ACTIVE):
        with contextlib.suppress(Exception):
            net.close()
