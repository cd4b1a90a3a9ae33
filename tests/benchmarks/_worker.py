"""Processes the network-emulation tests run inside a rank's namespace.

Usage (each prints one JSON line on success)::

    _worker.py serve PORT NBYTES        # accept one connection, read NBYTES, report Mbit/s
    _worker.py send ADDR PORT NBYTES    # connect (retrying for 10 s) and send NBYTES
    _worker.py pingpong-serve PORT ROUNDS
    _worker.py pingpong ADDR PORT ROUNDS
    _worker.py allreduce NUMEL          # gloo all_reduce over env:// (RANK, WORLD_SIZE, ...)
    _worker.py hold WORLD_SIZE LINK     # bring up a network, print its namespaces, sleep
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

CHUNK = 1 << 16
CONNECT_TIMEOUT_S = 10.0


def _listen(port: int) -> socket.socket:
    server = socket.create_server(("0.0.0.0", port))
    server.settimeout(CONNECT_TIMEOUT_S)
    return server


def _connect(addr: str, port: int) -> socket.socket:
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        try:
            return socket.create_connection((addr, port), timeout=CONNECT_TIMEOUT_S)
        except (ConnectionRefusedError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def serve(port: int, nbytes: int) -> dict[str, float]:
    with _listen(port) as server:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(CONNECT_TIMEOUT_S)
            start = time.perf_counter()
            received = 0
            while received < nbytes:
                chunk = conn.recv(CHUNK)
                if not chunk:
                    break
                received += len(chunk)
            seconds = time.perf_counter() - start
            conn.sendall(b"k")
    return {"bytes": received, "seconds": seconds, "mbit_per_s": received * 8 / seconds / 1e6}


def send(addr: str, port: int, nbytes: int) -> dict[str, float]:
    block = b"\0" * CHUNK
    with _connect(addr, port) as conn:
        sent = 0
        while sent < nbytes:
            sent += conn.send(block[: min(CHUNK, nbytes - sent)])
        conn.recv(1)
    return {"bytes": sent}


def pingpong_serve(port: int, rounds: int) -> dict[str, float]:
    with _listen(port) as server:
        conn, _ = server.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(rounds):
                conn.sendall(conn.recv(1))
    return {"rounds": rounds}


def pingpong(addr: str, port: int, rounds: int) -> dict[str, float]:
    with _connect(addr, port) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            conn.sendall(b"x")
            conn.recv(1)
            times.append(time.perf_counter() - start)
    times.sort()
    return {"median_rtt_s": times[len(times) // 2], "min_rtt_s": times[0]}


def allreduce(numel: int) -> dict[str, float]:
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    tensor = torch.full((numel,), float(rank + 1))
    dist.all_reduce(tensor)  # warm-up, also the checked result
    expected = world * (world + 1) / 2
    ok = bool(torch.all(tensor == expected))
    start = time.perf_counter()
    dist.all_reduce(torch.ones(numel))
    seconds = time.perf_counter() - start
    dist.destroy_process_group()
    return {
        "rank": rank,
        "world_size": world,
        "ok": ok,
        "value": tensor[0].item(),
        "seconds": seconds,
        "ifname": os.environ.get("GLOO_SOCKET_IFNAME", ""),
    }


def hold(world_size: int, link: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks.netem import emulated_network

    # A process started in the background may inherit SIGINT ignored; the tests need
    # Python's usual KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with emulated_network(world_size, link) as net:
        print(json.dumps({"namespaces": net.namespaces}), flush=True)
        time.sleep(60)


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "hold":
        hold(int(args[0]), args[1])
        return
    functions = {
        "serve": serve,
        "send": send,
        "pingpong-serve": pingpong_serve,
        "pingpong": pingpong,
        "allreduce": allreduce,
    }
    parsed = [int(a) if a.isdigit() else a for a in args]
    print(json.dumps(functions[command](*parsed)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
