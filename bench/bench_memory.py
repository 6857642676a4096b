"""Memory per idle connection: an echo server holding N idle TCP connections.

Usage:
    python bench/bench_memory.py [--connections 9000] [--loops asyncio,uvloop,ferroloop]
                                 [--rounds 3] [--json PATH]

For each loop, in a fresh process: start a Protocol echo server, then open N client sockets
(plain blocking sockets in a helper thread, so the client side costs no loop memory and is
the same for every loop), let the server accept them all, collect garbage, and read RSS.
The figure is (RSS with N connections - RSS before) / N: the server side of one idle
connection (transport, protocol, socket object, the loop's registrations; the kernel's socket
buffers are not in RSS). Lower is better. The client sockets are created before the baseline
so that only the server side is counted.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import socket
import subprocess
import sys
import time

KIB = 1024


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(loop_name: str, n: int) -> dict[str, float]:
    import asyncio

    if loop_name == "ferroloop":
        import ferroloop

        loop = ferroloop.new_event_loop()
    elif loop_name == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    made = 0

    class Counting(Echo):
        def connection_made(self, transport):
            nonlocal made
            made += 1
            super().connection_made(transport)

    async def main() -> dict[str, float]:
        server = await loop.create_server(Counting, "127.0.0.1", 0, backlog=4096)
        port = server.sockets[0].getsockname()[1]
        # Warm up: a few connections through every code path, then closed.
        warm = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
        while made < 50:
            await asyncio.sleep(0.01)
        for s in warm:
            s.close()
        await asyncio.sleep(0.2)
        # The client sockets, made up front but not connected yet.
        clients = [socket.socket() for _ in range(n)]
        gc.collect()
        await asyncio.sleep(0.1)
        before = rss_bytes()
        target = made + n
        for s in clients:
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            await asyncio.sleep(0)
        deadline = time.monotonic() + 60
        while made < target and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        gc.collect()
        after = rss_bytes()
        result = {"connections": made - 50, "bytes_per_conn": (after - before) / n}
        for s in clients:
            s.close()
        server.close()
        await asyncio.sleep(0.2)
        return result

    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=9000)
    parser.add_argument("--loops", default="asyncio,uvloop,ferroloop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.worker:
        print(json.dumps(worker(args.worker, args.connections)))
        return 0
    loops = args.loops.split(",")
    results: dict[str, list[float]] = {name: [] for name in loops}
    for r in range(args.rounds):
        order = loops[r % len(loops) :] + loops[: r % len(loops)]
        for name in order:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    name,
                    "--connections",
                    str(args.connections),
                ],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if out.returncode != 0:
                print(f"{name}: failed\n{out.stderr}", file=sys.stderr)
                continue
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results[name].append(res["bytes_per_conn"])
    print(f"server-side memory per idle TCP connection ({args.connections} connections, "
          f"{args.rounds} rounds, fresh process each; lower is better)")  # fmt: skip
    print(f"{'loop':<12} {'best':>10} {'median':>10}")
    summary = {}
    for name, values in results.items():
        if not values:
            continue
        values.sort()
        best, median = values[0], values[len(values) // 2]
        summary[name] = {"best": best, "median": median, "all": values}
        print(f"{name:<12} {best / KIB:>8.2f} KiB {median / KIB:>7.2f} KiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
