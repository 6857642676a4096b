"""Instructions per request of the server rows of bench_apps.py, counted by callgrind.

Usage:
    python bench/bench_instructions.py [--rows aiohttp,uvicorn,fastapi,websocket]
                                       [--loops uvloop,ferroloop] [--seconds S]
                                       [--json PATH] [--markdown PATH] [--keep DIR]

Each (row, loop) runs the application of bench_apps.py on the loop in a fresh process under
``valgrind --tool=callgrind`` with instrumentation off. The client (wrk, or the load generator
for the WebSocket row) warms the server up; then instrumentation is switched on
(``callgrind_control -i on``) for two client runs, ``--seconds`` / 4 and ``--seconds`` long,
with the counters dumped after each (``callgrind_control -d``). Each run's count includes the
fixed cost of the client's 64 new connections; the difference of the two runs cancels it, and
divided by the difference in requests served gives the user-space instructions per request of
the server's process, split by the shared object they were executed in: the interpreter, the
loop's own module (ferroloop's, or uvloop's with libuv), asyncio's C accelerator, libc, and the
framework's C extensions. The kernel's share is not counted.

Why: rates and CPU times on a 2-core machine swing by 5-40% between rounds; an instruction
count does not depend on what else the machine is doing, so two loops' counts compare to within
about 1%. It is not a time (a cache miss costs more than an instruction), and callgrind slows
the server about 50 times, which changes how many events each ``epoll_wait`` returns: read it
next to bench_apps.py, not instead of it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

import _harness  # noqa: E402
import bench_apps  # noqa: E402

ROWS = ("aiohttp", "uvicorn", "fastapi", "websocket")
WARMUP_S = 3
CTL = ["callgrind_control"]


async def _serve(row: str, port_file: str, stop: asyncio.Future) -> None:
    sock = bench_apps._listen()
    if row == "aiohttp":
        from aiohttp import web

        runner = web.AppRunner(bench_apps.aiohttp_hello_app(), access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
    elif row in ("uvicorn", "fastapi"):
        app = bench_apps.starlette_app() if row == "uvicorn" else bench_apps.fastapi_app()
        # Held until the end: the server's serve() task must not be garbage-collected.
        uvicorn_server = await bench_apps.start_uvicorn(app, sock)  # noqa: F841
    elif row == "websocket":
        from websockets.asyncio.server import serve

        async def echo(ws: Any) -> None:
            with contextlib.suppress(Exception):
                async for message in ws:
                    await ws.send(message)

        await serve(echo, sock=sock, compression=None, ping_interval=None, max_queue=64)
    else:
        raise SystemExit(f"unknown row {row!r}")
    with open(port_file + ".tmp", "w") as f:
        f.write(str(sock.getsockname()[1]))
    os.rename(port_file + ".tmp", port_file)
    await stop


def serve(row: str, loop_name: str, port_file: str) -> None:
    """The server process (run under callgrind): serves until SIGTERM."""
    import logging

    logging.disable(logging.CRITICAL)  # clients that go away mid-message are expected
    loop = _harness.new_loop(loop_name)
    asyncio.set_event_loop(loop)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    loop.run_until_complete(_serve(row, port_file, stop))


def client_cmd(row: str, port: int, seconds: float) -> list[str]:
    if row == "websocket":
        return bench_apps.ws_cmd(port, seconds)
    return bench_apps.wrk_cmd(f"http://127.0.0.1:{port}/", seconds)


def requests_of(row: str, out: str) -> int:
    parse = bench_apps.parse_loadgen if row == "websocket" else bench_apps.parse_wrk
    return parse(out)[0]


def self_cost_by_object(path: str) -> Counter:
    """Sums the self cost (Ir) of a callgrind output file by shared object."""
    names: dict[str, str] = {}
    by_obj: Counter = Counter()
    obj = "?"
    after_calls = False
    # Compressed names: "(id) name" the first time an object appears, in an ob= or a cob=
    # line, then "(id)" alone.
    pat = re.compile(r"c?ob=\((\d+)\)(?: (.*))?")
    with open(path, errors="replace") as f:
        for line in f:
            c = line[:1]
            if c.isdigit() or c in "+-*":
                if after_calls:  # the inclusive cost of a call: not this function's own
                    after_calls = False
                    continue
                parts = line.split()
                if len(parts) >= 2:
                    by_obj[obj] += int(parts[1])
            elif line.startswith("ob="):
                m = pat.match(line.strip())
                if m:
                    if m.group(2):
                        names[m.group(1)] = m.group(2)
                    obj = names.get(m.group(1), m.group(1))
                else:
                    obj = line[3:].strip()
            elif line.startswith("cob="):
                m = pat.match(line.strip())
                if m and m.group(2):
                    names[m.group(1)] = m.group(2)
            elif line.startswith("calls="):
                after_calls = True
    return by_obj


def group(obj: str, loop_name: str) -> str:
    base = os.path.basename(obj)
    if base.startswith("libpython") or base in ("python", "python3") or "/bin/python" in obj:
        return "interpreter"
    if (loop_name == "ferroloop" and "_ferroloop" in base) or (
        loop_name == "uvloop" and "uvloop" in obj
    ):
        return "loop"
    if base.startswith("_asyncio."):
        return "asyncio (C)"
    if base.startswith(("libc.", "libm.", "ld-linux")):
        return "libc"
    return "framework (C)"


COLUMNS = ("interpreter", "loop", "asyncio (C)", "libc", "framework (C)")


def measure(row: str, loop_name: str, seconds: float, keep: str | None) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="ferroloop-cg-")
    port_file = os.path.join(tmp, "port")
    out_file = os.path.join(tmp, "callgrind.out")
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_file}",
        sys.executable,
        os.path.abspath(__file__),
        "--serve",
        row,
        loop_name,
        port_file,
    ]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not os.path.exists(port_file):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{row}/{loop_name}: server did not start: {server.stderr}")
            time.sleep(0.2)
        with open(port_file) as f:
            port = int(f.read())
        subprocess.run(client_cmd(row, port, WARMUP_S), capture_output=True, check=True)
        # Two client runs, a short and a long one, each dumped on its own: each run's count
        # includes the fixed cost of 64 new connections, which the difference cancels.
        subprocess.run([*CTL, "-i", "on", str(server.pid)], capture_output=True, check=True)
        requests = []
        for secs in (seconds / 4, seconds):
            run = subprocess.run(
                client_cmd(row, port, secs), capture_output=True, text=True, check=True
            )
            requests.append(requests_of(row, run.stdout))
            subprocess.run([*CTL, "-d", str(server.pid)], capture_output=True, check=True)
        subprocess.run([*CTL, "-i", "off", str(server.pid)], capture_output=True, check=True)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    dumps = sorted(
        (f for f in os.listdir(tmp) if f.startswith("callgrind.out.")),
        key=lambda f: int(f.rsplit(".", 1)[1]),
    )
    if len(dumps) < 2:
        raise RuntimeError(f"{row}/{loop_name}: expected two callgrind dumps, got {dumps}")
    short, long = (self_cost_by_object(os.path.join(tmp, f)) for f in dumps[:2])
    if keep:
        os.makedirs(keep, exist_ok=True)
        for i, f in enumerate(dumps[:2]):
            shutil.copy(os.path.join(tmp, f), os.path.join(keep, f"{row}-{loop_name}.{i + 1}"))
    shutil.rmtree(tmp, ignore_errors=True)
    extra = requests[1] - requests[0]
    if extra <= 0:
        raise RuntimeError(f"{row}/{loop_name}: the long run served no more requests {requests}")
    groups: Counter = Counter()
    for obj in set(short) | set(long):
        groups[group(obj, loop_name)] += long[obj] - short[obj]
    total = sum(groups.values())
    return {
        "row": row,
        "loop": loop_name,
        "requests": requests,
        "per_request": round(total / extra),
        "groups": {k: round(groups[k] / extra) for k in COLUMNS},
    }


def table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| row | loop | requests (long run - short run) | instructions / request | vs uvloop | "
        + " | ".join(COLUMNS)
        + " |",
        "|---|---|--:|--:|--:|" + "--:|" * len(COLUMNS),
    ]
    base = {r["row"]: r["per_request"] for r in results if r["loop"] == "uvloop"}
    for r in results:
        ratio = f"{r['per_request'] / base[r['row']]:.3f}" if r["row"] in base else ""
        cells = " | ".join(f"{r['groups'][k]:,}" for k in COLUMNS)
        lines.append(
            f"| {r['row']} | {r['loop']} | {r['requests'][1] - r['requests'][0]:,} | {r['per_request']:,} | {ratio} "
            f"| {cells} |"
        )
    return lines


def cli() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3], sys.argv[4])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--loops", default="uvloop,ferroloop")
    p.add_argument("--seconds", type=float, default=8.0, help="measured client run")
    p.add_argument("--json")
    p.add_argument("--markdown")
    p.add_argument("--keep", help="directory to keep the callgrind output files in")
    args = p.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found (Debian: apt-get install valgrind)")
    results = []
    for row in args.rows.split(","):
        for loop_name in args.loops.split(","):
            r = measure(row, loop_name, args.seconds, args.keep)
            results.append(r)
            print(
                f"{row:10} {loop_name:10} {r['requests']} requests "
                f"{r['per_request']:9,} instructions/request  {r['groups']}",
                flush=True,
            )
    lines = table(results)
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seconds": args.seconds, "results": results}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    cli()
