"""Network benchmarks: echo and HTTP servers on asyncio vs uvloop vs rloop vs ferroloop.

Usage:
    python bench/bench_net.py [--quick] [--rounds N] [--loops asyncio,uvloop,rloop,ferroloop]
                              [--rows echo_proto_1k,...] [--json PATH] [--markdown PATH] [--list]
                              [--warmup S] [--duration S] [--client-threads N] [--no-build]

The server runs in a fresh worker subprocess on the loop under test; the native load generator
(bench/loadgen, Rust) runs as a separate process against it over loopback. Each row's value is
the load generator's round trips per second (higher is better); the detail column is its p99
latency. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from typing import NamedTuple

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

from _harness import NATIVE, Cell, NotSupported, Result, Row, fmt_rate, main, row  # noqa: E402

LOADGEN_DIR = os.path.join(BENCH_DIR, "loadgen")
LOADGEN_BIN = os.path.join(LOADGEN_DIR, "target", "release", "ferroloop-loadgen")

# Settings the parent hands to its workers through the environment.
ENV_LOADGEN = "FERROLOOP_LOADGEN"
ENV_WARMUP = "FERROLOOP_NET_WARMUP"
ENV_DURATION = "FERROLOOP_NET_DURATION"
ENV_THREADS = "FERROLOOP_NET_CLIENT_THREADS"

# Per measurement: warm-up (not counted), then the measured window, in seconds.
WARMUP_FULL, DURATION_FULL = 0.5, 1.5
WARMUP_QUICK, DURATION_QUICK = 0.25, 0.6
ROUNDS_FULL = 3
ROUNDS_QUICK = 2
QUICK_ROWS = ["echo_proto_1k", "echo_stream_1k", "ceiling_1k", "http", "ceiling_http"]

KIB = 1024
# (size, connections): fewer connections for bigger messages keep the bytes in flight (and the
# socket buffers they need) reasonable: 32 x 1 KiB, 16 x 10 KiB, 8 x 100 KiB.
SIZES = {"1k": (1 * KIB, 32), "10k": (10 * KIB, 16), "100k": (100 * KIB, 8)}
HTTP_CONNS = 32

HTTP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!"
)
HTTP_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

# --tune-malloc: keep glibc from serving big short-lived read buffers with mmap/munmap (asyncio
# and rloop allocate 256 KiB per read, above the initial 128 KiB threshold; see bench/README.md).
MALLOC_TUNING = {"MALLOC_TRIM_THRESHOLD_": str(64 << 20), "MALLOC_MMAP_THRESHOLD_": str(4 << 20)}

POLL_S = 0.05  # how often the worker's loop checks whether the load generator has finished


# --------------------------------------------------------------------------------------------
# The load generator


def loadgen_path() -> str:
    return os.environ.get(ENV_LOADGEN) or LOADGEN_BIN


def _newest_source_mtime() -> float:
    newest = 0.0
    for base, _dirs, files in os.walk(os.path.join(LOADGEN_DIR, "src")):
        for f in files:
            newest = max(newest, os.stat(os.path.join(base, f)).st_mtime)
    for f in ("Cargo.toml", "Cargo.lock"):
        p = os.path.join(LOADGEN_DIR, f)
        if os.path.exists(p):
            newest = max(newest, os.stat(p).st_mtime)
    return newest


def ensure_loadgen(build: bool) -> str | None:
    """Build the load generator if it is missing or older than its sources; an error or None."""
    if os.environ.get(ENV_LOADGEN):
        path = os.environ[ENV_LOADGEN]
        return None if os.access(path, os.X_OK) else f"{ENV_LOADGEN}={path} is not executable"
    fresh = os.path.exists(LOADGEN_BIN) and os.stat(LOADGEN_BIN).st_mtime >= _newest_source_mtime()
    if fresh:
        return None
    manifest = os.path.join(LOADGEN_DIR, "Cargo.toml")
    how = f"cargo build --release --manifest-path {os.path.relpath(manifest)}"
    if not build:
        if os.path.exists(LOADGEN_BIN):
            print(f"# warning: {LOADGEN_BIN} is older than its sources (--no-build)")
            return None
        return f"load generator not built: run `{how}`"
    if shutil.which("cargo") is None:
        return f"load generator not built and cargo not found: run `{how}`"
    print(f"# building the load generator: {how}", flush=True)
    proc = subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--manifest-path", manifest],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return f"building the load generator failed:\n{proc.stderr.strip()}"
    return None


def _setting(name: str, quick: bool, full: float, short: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else (short if quick else full)


def loadgen_cmd(target: list[str], mode: str, size: int, conns: int, quick: bool) -> list[str]:
    warmup = _setting(ENV_WARMUP, quick, WARMUP_FULL, WARMUP_QUICK)
    duration = _setting(ENV_DURATION, quick, DURATION_FULL, DURATION_QUICK)
    threads = os.environ.get(ENV_THREADS, "1")
    return [
        loadgen_path(),
        *target,
        "--mode",
        mode,
        *(["--size", str(size)] if mode == "echo" else []),
        "--conns",
        str(conns),
        "--warmup",
        str(warmup),
        "--duration",
        str(duration),
        "--threads",
        threads,
    ]


class Cpu(NamedTuple):
    """CPU seconds: user (the server's own code) and system (the kernel on its behalf)."""

    user: float
    sys: float

    def __sub__(self, other: object) -> Cpu:
        assert isinstance(other, Cpu)
        return Cpu(self.user - other.user, self.sys - other.sys)


def _cpu_self() -> Cpu:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return Cpu(r.ru_utime, r.ru_stime)


def _cpu_children() -> Cpu:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return Cpu(r.ru_utime, r.ru_stime)


def loadgen_result(stdout: str, stderr: str, rc: int | None, server_cpu: Cpu) -> Result:
    """Turns the load generator's JSON report into the row's Result (or raises).

    ``server_cpu``: CPU seconds (user + system, all threads) the server used while the load
    generator ran; divided by every round trip of the run (warm-up included) it gives the
    server's CPU cost per round trip, which other load on the machine disturbs far less than
    the rate. The user-space part is shown apart: it is what an event loop's own code costs,
    the rest is the kernel's work for the same system calls."""
    lines = stdout.strip().splitlines()
    try:
        rep = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (stderr.strip().splitlines() or ["<no output>"])[-1]
        raise RuntimeError(f"load generator failed (exit {rc}): {tail}") from None
    if rep.get("errors"):
        raise RuntimeError(
            f"load generator saw {rep['errors']} error(s), first: {rep.get('first_error')}"
        )
    if not rep.get("round_trips"):
        raise RuntimeError("no round trip completed in the measured window (server stuck?)")
    p99_ms = rep["latency_us"]["p99"] / 1000.0
    total = rep.get("round_trips_total") or rep["round_trips"]
    cpu_us = (server_cpu.user + server_cpu.sys) / total * 1e6
    user_us = server_cpu.user / total * 1e6
    return Result(
        rep["round_trips_per_sec"],
        f"p99 {p99_ms:.2f} ms, CPU {cpu_us:.2f} us/rt (user {user_us:.2f})",
        extra={
            "loadgen": rep,
            "server_cpu_s": round(server_cpu.user + server_cpu.sys, 4),
            "server_user_s": round(server_cpu.user, 4),
            "cpu_us_per_rt": cpu_us,
            "user_us_per_rt": user_us,
        },
    )


ServerStart = Callable[[], Awaitable[tuple[list[str], Callable[[], Awaitable[None]]]]]


def run_against(
    loop: asyncio.AbstractEventLoop,
    start: ServerStart,
    mode: str,
    size: int,
    conns: int,
    quick: bool,
) -> Result:
    """Starts a server on ``loop`` (``start()`` returns the loadgen's target arguments and an
    async closer), runs the load generator against it to completion, returns its result."""

    async def run() -> tuple[str, str, int | None, float]:
        target, close = await start()
        cpu0 = _cpu_self()
        try:
            proc = subprocess.Popen(
                loadgen_cmd(target, mode, size, conns, quick),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            try:
                while proc.poll() is None:
                    await asyncio.sleep(POLL_S)
            finally:
                if proc.poll() is None:
                    proc.kill()
                cpu = _cpu_self() - cpu0
                out, err = proc.communicate()
        finally:
            await close()
        return out.decode(errors="replace"), err.decode(errors="replace"), proc.returncode, cpu

    out, err, rc, cpu = loop.run_until_complete(run())
    return loadgen_result(out, err, rc, cpu)


async def _settle(tasks: set[asyncio.Task] | None = None) -> None:
    """After the load generator exits: let the servers see EOF, then cancel what is left."""
    await asyncio.sleep(0.05)
    for t in list(tasks or ()):
        t.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


def _tcp_target(port: int) -> list[str]:
    return ["--tcp", f"127.0.0.1:{port}"]


# --------------------------------------------------------------------------------------------
# Servers on the loop under test


class EchoProtocol(asyncio.Protocol):
    """The classic echo server: every chunk received is written back as is."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


def protocol_server(factory: Callable[[], asyncio.Protocol]) -> ServerStart:
    async def start():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(factory, "127.0.0.1", 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]

        async def close() -> None:
            server.close()
            await _settle()
            await server.wait_closed()

        return _tcp_target(port), close

    return start


def unix_protocol_server(factory: Callable[[], asyncio.Protocol]) -> ServerStart:
    async def start():
        loop = asyncio.get_running_loop()
        tmp = tempfile.mkdtemp(prefix="ferroloop-bench-net-")
        path = os.path.join(tmp, "echo.sock")
        try:
            server = await loop.create_unix_server(factory, path, backlog=1024)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

        async def close() -> None:
            server.close()
            await _settle()
            await server.wait_closed()
            shutil.rmtree(tmp, ignore_errors=True)

        return ["--unix", path], close

    return start


def streams_server(size: int) -> ServerStart:
    """asyncio streams: readexactly(size) then write + drain, per connection task."""

    async def start():
        tasks: set[asyncio.Task] = set()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                tasks.add(task)
            try:
                while True:
                    data = await reader.readexactly(size)
                    writer.write(data)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()
                if task is not None:
                    tasks.discard(task)

        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]

        async def close() -> None:
            server.close()
            await _settle(tasks)
            await server.wait_closed()

        return _tcp_target(port), close

    return start


def sock_server() -> ServerStart:
    """Low-level socket API: sock_accept, then per connection sock_recv + sock_sendall."""

    async def start():
        loop = asyncio.get_running_loop()
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1024)
        lsock.setblocking(False)
        tasks: set[asyncio.Task] = set()

        async def echo(conn: socket.socket) -> None:
            try:
                while True:
                    data = await loop.sock_recv(conn, 65536)
                    if not data:
                        break
                    await loop.sock_sendall(conn, data)
            except ConnectionError:
                pass
            finally:
                conn.close()

        async def accept() -> None:
            while True:
                conn, _ = await loop.sock_accept(lsock)
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                t = loop.create_task(echo(conn))
                tasks.add(t)
                t.add_done_callback(tasks.discard)

        acceptor = loop.create_task(accept())

        async def close() -> None:
            acceptor.cancel()
            await _settle(tasks)
            await asyncio.gather(acceptor, return_exceptions=True)
            lsock.close()

        return _tcp_target(lsock.getsockname()[1]), close

    return start


class HttpProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive with httptools' parser: a fixed 200 response per request."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.error = httptools.HttpParserError
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except self.error:
            self.transport.write(HTTP_BAD_REQUEST)  # type: ignore[attr-defined]
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_complete(self) -> None:
        self.transport.write(HTTP_RESPONSE)  # type: ignore[attr-defined]
        if not self.parser.should_keep_alive():
            self.transport.close()


def _require_httptools() -> None:
    try:
        import httptools  # noqa: F401
    except ImportError:
        raise RuntimeError("httptools is not installed: pip install httptools") from None


# --------------------------------------------------------------------------------------------
# Rows

TITLE_SIZE = {"1k": "1 KiB", "10k": "10 KiB", "100k": "100 KiB"}


def _register_echo_rows() -> None:
    def proto_row(tag: str):
        size, conns = SIZES[tag]

        def fn(loop: asyncio.AbstractEventLoop, quick: bool) -> Result:
            return run_against(loop, protocol_server(EchoProtocol), "echo", size, conns, quick)

        fn.__doc__ = f"Echo server, asyncio.Protocol + transport.write; {conns} connections."
        row(f"echo_proto_{tag}", f"echo Protocol {TITLE_SIZE[tag]} x{conns}", "rt/s")(fn)

    def stream_row(tag: str):
        size, conns = SIZES[tag]

        def fn(loop: asyncio.AbstractEventLoop, quick: bool) -> Result:
            return run_against(loop, streams_server(size), "echo", size, conns, quick)

        fn.__doc__ = f"Echo server, start_server + readexactly/write/drain; {conns} connections."
        row(f"echo_stream_{tag}", f"echo streams {TITLE_SIZE[tag]} x{conns}", "rt/s")(fn)

    def sock_row(tag: str):
        size, conns = SIZES[tag]

        def fn(loop: asyncio.AbstractEventLoop, quick: bool) -> Result:
            return run_against(loop, sock_server(), "echo", size, conns, quick)

        fn.__doc__ = f"Echo server, sock_accept + sock_recv/sock_sendall; {conns} connections."
        row(f"echo_sock_{tag}", f"echo sock_* {TITLE_SIZE[tag]} x{conns}", "rt/s")(fn)

    def ceiling_row(tag: str, unix: bool = False):
        size, conns = SIZES[tag]
        key = f"ceiling_unix_{tag}" if unix else f"ceiling_{tag}"
        ref = f"echo_unix_{tag}" if unix else f"echo_proto_{tag}"
        where = "Unix " if unix else ""

        def fn(loop: None, quick: bool) -> Result:
            return run_native("echo", size, conns, quick, unix=unix)

        fn.__doc__ = f"Pure-Rust single-thread epoll echo server ({where}{conns} connections)."
        title = f"ceiling: Rust epoll {where}{TITLE_SIZE[tag]} x{conns}"
        row(key, title, "rt/s", native=True, ref=ref)(fn)

    for tag in ("1k",):
        proto_row(tag)
        stream_row(tag)
        sock_row(tag)
        ceiling_row(tag)
    proto_row("10k")
    ceiling_row("10k")
    for tag in ("100k",):
        proto_row(tag)
        stream_row(tag)
        sock_row(tag)
        ceiling_row(tag)

    size, conns = SIZES["1k"]

    @row("echo_unix_1k", f"echo Protocol Unix 1 KiB x{conns}", "rt/s")
    def bench_unix(loop: asyncio.AbstractEventLoop, quick: bool) -> Result:
        """Echo server over a Unix socket, create_unix_server + Protocol; 32 connections."""
        if not hasattr(loop, "create_unix_server"):
            raise NotSupported("no create_unix_server")
        return run_against(loop, unix_protocol_server(EchoProtocol), "echo", size, conns, quick)

    ceiling_row("1k", unix=True)


_register_echo_rows()


@row("http", f"HTTP/1.1 httptools x{HTTP_CONNS}", "req/s")
def bench_http(loop: asyncio.AbstractEventLoop, quick: bool) -> Result:
    """Keep-alive GET, httptools request parser + fixed 13-byte response; 32 connections."""
    _require_httptools()
    return run_against(loop, protocol_server(HttpProtocol), "http", 0, HTTP_CONNS, quick)


@row("ceiling_http", f"ceiling: Rust epoll HTTP x{HTTP_CONNS}", "req/s", native=True, ref="http")
def bench_ceiling_http(loop: None, quick: bool) -> Result:
    """Pure-Rust single-thread epoll server answering each GET with the same fixed response."""
    return run_native("http", 0, HTTP_CONNS, quick)


def run_native(mode: str, size: int, conns: int, quick: bool, *, unix: bool = False) -> Result:
    """Runs the load generator against its own pure-Rust server (``loadgen serve``)."""
    tmp = tempfile.mkdtemp(prefix="ferroloop-bench-net-") if unix else None
    listen = ["--unix", os.path.join(tmp, "echo.sock")] if tmp else ["--tcp", "127.0.0.1:0"]
    server = subprocess.Popen(
        [loadgen_path(), "serve", *listen, "--mode", mode, "--stop-on-stdin-eof"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line:
            err = server.stderr.read() if server.stderr else ""
            raise RuntimeError(f"ceiling server did not start: {err.strip()}")
        bound = json.loads(line)["listening"]
        target = ["--unix", bound[len("unix:") :]] if tmp else ["--tcp", bound]
        cmd = loadgen_cmd(target, mode, size, conns, quick)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        # The server's CPU time: what RUSAGE_CHILDREN gains when it is reaped.
        cpu0 = _cpu_children()
        _stop_server(server)
        return loadgen_result(proc.stdout, proc.stderr, proc.returncode, _cpu_children() - cpu0)
    finally:
        _stop_server(server)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _stop_server(server: subprocess.Popen) -> None:
    if server.returncode is not None:
        return
    if server.stdin is not None and not server.stdin.closed:
        server.stdin.close()  # the server exits at EOF on stdin
    try:
        server.wait(timeout=5)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


ROW_ORDER = [
    "echo_proto_1k",
    "echo_stream_1k",
    "echo_sock_1k",
    "ceiling_1k",
    "echo_proto_10k",
    "ceiling_10k",
    "echo_proto_100k",
    "echo_stream_100k",
    "echo_sock_100k",
    "ceiling_100k",
    "echo_unix_1k",
    "ceiling_unix_1k",
    "http",
    "ceiling_http",
]


def _reorder_rows() -> None:
    from _harness import ROWS

    assert sorted(ROW_ORDER) == sorted(ROWS), "ROW_ORDER out of date"
    ordered = {k: ROWS[k] for k in ROW_ORDER}
    ROWS.clear()
    ROWS.update(ordered)


_reorder_rows()


# --------------------------------------------------------------------------------------------
# Report: fraction of the ceiling


def ceiling_epilogue(
    rows: list[Row], loops: list[str], cells: dict, baseline: str | None
) -> list[str]:
    """Each loop's best rate as a fraction of the pure-Rust server's under the same load."""
    out: list[str] = []
    pairs = []
    keys = {r.key for r in rows}
    for r in rows:
        if r.native and r.ref in keys:
            ceiling: Cell = cells[r.key, NATIVE]
            if ceiling.best:
                pairs.append((r, ceiling))
    if not pairs:
        return out
    from _harness import ROWS

    width = max(len(ROWS[r.ref].title) for r, _ in pairs)  # type: ignore[index]
    out.append("fraction of the ceiling (best rate / pure-Rust epoll server's best, same load):")
    out.append("  " + "row".ljust(width) + "".join(f"  {n:>9}" for n in loops) + "    ceiling")
    for r, ceiling in pairs:
        ref = ROWS[r.ref]  # type: ignore[index]
        parts = []
        for name in loops:
            c: Cell = cells[ref.key, name]
            parts.append(f"{c.best / ceiling.best:.2f}" if c.best else c.status)
        out.append(
            "  "
            + ref.title.ljust(width)
            + "".join(f"  {p:>9}" for p in parts)
            + f"  {fmt_rate(ceiling.best):>9}"
        )
    head = "echo_proto_1k"
    ceil = cells.get(("ceiling_1k", NATIVE))
    if "ferroloop" in loops and head in keys and ceil is not None and ceil.best:
        c = cells[head, "ferroloop"]
        value = f"{c.best / ceil.best:.2f}" if c.best else c.status
        out.append(f"ferroloop echo Protocol 1 KiB / ceiling: {value}")
    return out


# --------------------------------------------------------------------------------------------


def _net_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--warmup", type=float)
    p.add_argument("--duration", type=float)
    p.add_argument("--client-threads", type=int)
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--tune-malloc", action="store_true")
    return p.parse_known_args(argv)


DESCRIPTION = (
    "Network benchmarks (echo, HTTP) for asyncio, uvloop, rloop and ferroloop against a native "
    "load generator. Besides the options below: --warmup S and --duration S per measurement "
    f"(default {WARMUP_FULL}+{DURATION_FULL} s, quick {WARMUP_QUICK}+{DURATION_QUICK} s), "
    "--client-threads N (load generator threads, default 1), --no-build (do not build the "
    "load generator with cargo), --tune-malloc (run the servers with "
    "MALLOC_MMAP_THRESHOLD_=4MiB, MALLOC_TRIM_THRESHOLD_=64MiB: no mmap per 256 KiB read). "
    f"With --quick and no --rows it runs the rows {','.join(QUICK_ROWS)} (--rows all: every row)."
)


def cli(argv: list[str]) -> int:
    if "--worker" in argv:
        return main(argv, description=DESCRIPTION)
    net, rest = _net_args(argv)
    for flag, env, value in (
        ("--warmup", ENV_WARMUP, net.warmup),
        ("--duration", ENV_DURATION, net.duration),
        ("--client-threads", ENV_THREADS, net.client_threads),
    ):
        if value is not None:
            if value < (1 if flag == "--client-threads" else 0) or (
                flag == "--duration" and value == 0
            ):
                print(f"error: {flag} must be positive")
                return 2
            os.environ[env] = str(value)
    if net.tune_malloc:
        os.environ.update(MALLOC_TUNING)
        print("# --tune-malloc: " + " ".join(f"{k}={v}" for k, v in MALLOC_TUNING.items()))
    quick = "--quick" in rest
    rows_given = False
    for i, a in enumerate(rest):
        if a == "--rows" and i + 1 < len(rest):
            rows_given = True
            if rest[i + 1] == "all":  # every row, also with --quick
                rest[i + 1] = ",".join(ROW_ORDER)
        elif a.startswith("--rows="):
            rows_given = True
            if a == "--rows=all":
                rest[i] = "--rows=" + ",".join(ROW_ORDER)
    if quick and not rows_given:
        rest += ["--rows", ",".join(QUICK_ROWS)]
    if not {"--list", "-h", "--help"} & set(rest):
        err = ensure_loadgen(build=not net.no_build)
        if err:
            print(f"error: {err}")
            return 2
    return main(
        rest,
        description=DESCRIPTION,
        epilogue=ceiling_epilogue,
        default_rounds=(ROUNDS_FULL, ROUNDS_QUICK),
        meta_extra={
            "net": {
                "warmup_s": _setting(ENV_WARMUP, quick, WARMUP_FULL, WARMUP_QUICK),
                "duration_s": _setting(ENV_DURATION, quick, DURATION_FULL, DURATION_QUICK),
                "client_threads": int(os.environ.get(ENV_THREADS, "1")),
                "malloc_env": {k: os.environ[k] for k in MALLOC_TUNING if k in os.environ},
            }
        },
    )


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
