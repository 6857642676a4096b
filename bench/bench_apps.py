"""Application benchmarks: real frameworks and drivers on asyncio, uvloop and ferroloop.

Usage:
    python bench/bench_apps.py [--quick] [--rounds N] [--loops asyncio,uvloop,ferroloop]
                               [--rows aiohttp,uvicorn,...] [--json PATH] [--markdown PATH]
                               [--list] [--warmup S] [--duration S] [--tune-malloc]
    python bench/bench_apps.py --profile [--rows ...] [--loops uvloop,ferroloop]
                               [--rates apps.json] [--json PATH] [--markdown PATH]

Server rows run the application on the loop under test in a fresh worker process and drive it
from another process: wrk (HTTP, 64 keep-alive connections, one thread) or the native load
generator in bench/loadgen (WebSocket). Client rows run 64 client tasks on the loop under test
against a C server: nginx (HTTP), Redis or PostgreSQL (scripts/services.sh). Each row's value
is requests (or commands, queries) per second; the detail column gives the CPU time of the
process running the loop per request (from /proc/PID/stat, user + system), with its user part,
and how busy the other side was. ``--profile`` runs each row once per loop under ``perf`` and
``py-spy`` and splits that CPU time: kernel, the loop's native code, the loop's Python code,
asyncio's library, the framework and application. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, BENCH_DIR)

import _harness  # noqa: E402
from _harness import Result, fmt_rate, main, row  # noqa: E402

# Settings the parent hands to its workers through the environment.
ENV_WARMUP = "FERROLOOP_APPS_WARMUP"
ENV_DURATION = "FERROLOOP_APPS_DURATION"
ENV_NGINX = "FERROLOOP_APPS_NGINX"  # HOST:PORT of the nginx the client rows use
ENV_NGINX_PID = "FERROLOOP_APPS_NGINX_PID"
ENV_PROFILE = "FERROLOOP_APPS_PROFILE"  # "perf:PATH" or "pyspy:PATH": profile the window
ENV_LOADGEN = "FERROLOOP_LOADGEN"

WARMUP_FULL, DURATION_FULL = 1.0, 3.0
WARMUP_QUICK, DURATION_QUICK = 0.5, 1.0
ROUNDS_FULL, ROUNDS_QUICK = 3, 2
DEFAULT_LOOPS = "asyncio,uvloop,ferroloop"

CONNS = 64  # wrk connections / loadgen connections / client tasks
PG_POOL = 8
WS_SIZE = 128  # bytes per WebSocket message
BODY = b"Hello, World!"
POLL_S = 0.05  # how often the worker's loop checks whether a child process has finished

# --tune-malloc, as in bench_net.py: no mmap/munmap per big short-lived buffer.
MALLOC_TUNING = {"MALLOC_TRIM_THRESHOLD_": str(64 << 20), "MALLOC_MMAP_THRESHOLD_": str(4 << 20)}

SERVICES_ENV = os.environ.get(
    "FERROLOOP_SERVICES_ENV",
    os.path.join(
        os.environ.get("FERROLOOP_SERVICES_DIR", "/tmp/ferroloop-services"), "services.env"
    ),
)

# Which rows need which outside program or server (the parent makes sure they are there).
NEEDS_WRK = {"aiohttp", "uvicorn", "fastapi", "sanic", "aiohttp_tls"}
NEEDS_LOADGEN = {"websocket"}
NEEDS_NGINX = {"aiohttp_client", "httpx"}
NEEDS_SERVICES = {"redis", "asyncpg", "asyncpg_tls"}


def _setting(name: str, quick: bool, full: float, short: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else (short if quick else full)


def window(quick: bool) -> tuple[float, float]:
    """(warm-up, measured) seconds per measurement."""
    return (
        _setting(ENV_WARMUP, quick, WARMUP_FULL, WARMUP_QUICK),
        _setting(ENV_DURATION, quick, DURATION_FULL, DURATION_QUICK),
    )


# --------------------------------------------------------------------------------------------
# CPU accounting: /proc/PID/stat


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int | str = "self") -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all its threads, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After "pid (comm)": state is field 3, utime field 14, stime field 15 (1-based).
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def pids_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            u, s = proc_cpu(pid)
            total += u + s
    return total


@dataclass
class Window:
    """What one measured window saw: requests, wall time, CPU of the loop's process and of
    the other side (the load generator, or the server the clients talk to)."""

    requests: int
    seconds: float
    user: float
    sys: float
    peer_cpu: float | None = None  # CPU seconds of the other side in the window
    peer: str = ""
    p99_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def result(self) -> Result:
        if self.requests <= 0 or self.seconds <= 0:
            raise RuntimeError("no request completed in the measured window")
        rate = self.requests / self.seconds
        cpu_us = (self.user + self.sys) / self.requests * 1e6
        user_us = self.user / self.requests * 1e6
        busy = (self.user + self.sys) / self.seconds
        parts = []
        if self.p99_ms is not None:
            parts.append(f"p99 {self.p99_ms:.2f} ms")
        parts.append(f"CPU {cpu_us:.1f} us/req (user {user_us:.1f}), loop process {busy:.0%} busy")
        extra = {
            "pid": os.getpid(),
            "requests": self.requests,
            "seconds": round(self.seconds, 4),
            "user_s": round(self.user, 3),
            "sys_s": round(self.sys, 3),
            "cpu_us_per_req": cpu_us,
            "user_us_per_req": user_us,
            "busy": busy,
            **self.extra,
        }
        if self.peer_cpu is not None:
            peer_busy = self.peer_cpu / self.seconds
            parts.append(f"{self.peer} {peer_busy:.0%}")
            extra["peer"] = self.peer
            extra["peer_cpu_s"] = round(self.peer_cpu, 3)
            extra["peer_busy"] = peer_busy
            extra["peer_cpu_us_per_req"] = self.peer_cpu / self.requests * 1e6
        if self.p99_ms is not None:
            extra["p99_ms"] = self.p99_ms
        return Result(rate, ", ".join(parts), extra=extra)


# --------------------------------------------------------------------------------------------
# Profiling hook (--profile): the worker attaches a profiler to itself for the measured window


class Profiler:
    """Started right before the measured window; ``finish()`` waits for it to write its file."""

    def __init__(self, duration: float) -> None:
        self.proc: subprocess.Popen | None = None
        spec = os.environ.get(ENV_PROFILE)
        if not spec:
            return
        kind, path = spec.split(":", 1)
        pid = str(os.getpid())
        if kind == "perf":
            # cpu-clock: this VM has no hardware counters. DWARF call chains: the walk from
            # each sample up to the first loop / Python / extension frame (see analyse_perf).
            cmd = ["perf", "record", "-q", "-e", "cpu-clock", "-F", "999"]
            cmd += ["--call-graph", "dwarf,16384", "-p", pid, "-o", path]
            cmd += ["--", "sleep", f"{duration:.2f}"]
        elif kind == "pyspy":
            # Python frames only: py-spy's --native cannot merge 3.11's inlined Python calls.
            cmd = [_pyspy(), "record", "-r", "250", "-d", str(max(1, math.floor(duration)))]
            cmd += ["--nonblocking", "--format", "raw", "-o", path, "--pid", pid]
        else:
            raise ValueError(f"unknown profiler {kind!r}")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        time.sleep(0.3 if kind == "perf" else 0.1)  # let it attach before the window opens

    async def finish(self) -> None:
        if self.proc is None:
            return
        deadline = time.monotonic() + 60
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
        if self.proc.poll() is None:
            self.proc.kill()
        _, err = self.proc.communicate()
        if self.proc.returncode != 0:
            sys.stderr.write(err.decode(errors="replace"))


def _pyspy() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.access(here, os.X_OK) else "py-spy"


# --------------------------------------------------------------------------------------------
# Child processes (wrk, the load generator) run from the loop under test without blocking it


async def run_child(cmd: list[str], timeout: float) -> tuple[str, str, int, Any]:
    """Runs ``cmd`` to completion while the loop keeps serving; returns (stdout, stderr, exit
    code, rusage of the child)."""
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    deadline = time.monotonic() + timeout
    try:
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{os.path.basename(cmd[0])} did not finish in {timeout:.0f} s")
            await asyncio.sleep(POLL_S)
        out.seek(0)
        err.seek(0)
        return (
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            proc.returncode,
            rusage,
        )
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        out.close()
        err.close()


_WRK_DURATION = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b")
_WRK_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _wrk_time_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _WRK_UNITS[m.group(2)] * 1e3


def parse_wrk(out: str) -> tuple[int, float, float | None]:
    """wrk's report -> (requests, seconds, p99 ms); raises on socket errors or non-2xx."""
    m = _WRK_DURATION.search(out)
    if not m:
        raise RuntimeError(f"cannot parse wrk's output: {out.strip()[-300:]!r}")
    requests, seconds = int(m.group(1)), float(m.group(2)) * _WRK_UNITS[m.group(3)]
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if errs and any(int(x) for x in errs.groups()):
        raise RuntimeError(f"wrk: {errs.group(0)}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise RuntimeError(f"wrk: {bad.group(0)}")
    p99 = re.search(r"^\s*99(?:\.000)?%\s+(\S+)", out, re.M)
    return requests, seconds, (_wrk_time_ms(p99.group(1)) if p99 else None)


def wrk_cmd(url: str, seconds: float, latency: bool = False) -> list[str]:
    # One wrk thread: the server under test gets the other core.
    cmd = ["wrk", "-t1", f"-c{CONNS}", f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
    return cmd + (["--latency"] if latency else []) + [url]


def loadgen_bin() -> str:
    return os.environ.get(ENV_LOADGEN) or os.path.join(
        BENCH_DIR, "loadgen", "target", "release", "ferroloop-loadgen"
    )


def ws_cmd(port: int, seconds: float) -> list[str]:
    return [
        loadgen_bin(),
        "--tcp",
        f"127.0.0.1:{port}",
        "--mode",
        "ws",
        "--path",
        "/ws",
        "--size",
        str(WS_SIZE),
        "--conns",
        str(CONNS),
        "--warmup",
        "0",
        "--duration",
        f"{seconds:.2f}",
    ]


def parse_loadgen(out: str) -> tuple[int, float, float | None]:
    lines = out.strip().splitlines()
    try:
        rep = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"load generator failed: {out.strip()[-300:]!r}") from None
    if rep.get("errors"):
        raise RuntimeError(f"load generator: {rep['errors']} error(s): {rep.get('first_error')}")
    return int(rep["round_trips"]), float(rep["duration_s"]), rep["latency_us"]["p99"] / 1000.0


async def drive_server(
    cmd_for: Callable[[float], list[str]],
    parse: Callable[[str], tuple[int, float, float | None]],
    quick: bool,
    peer: str,
) -> Window:
    """Warm the server up with one client run, then measure a second run: the loop process's
    CPU over the measured run, the client's from its rusage."""
    warmup, duration = window(quick)
    out, err, rc, _ = await run_child(cmd_for(warmup), timeout=warmup + 60)
    if rc != 0:
        raise RuntimeError(f"{peer} warm-up run failed (exit {rc}): {(err or out).strip()[-300:]}")
    prof = Profiler(duration)
    u0, s0 = proc_cpu()
    out, err, rc, rusage = await run_child(cmd_for(duration), timeout=duration + 60)
    u1, s1 = proc_cpu()
    await prof.finish()
    if rc != 0 and not out.strip():
        raise RuntimeError(f"{peer} failed (exit {rc}): {err.strip()[-300:]}")
    requests, seconds, p99 = parse(out)
    return Window(
        requests,
        seconds,
        u1 - u0,
        s1 - s0,
        peer_cpu=rusage.ru_utime + rusage.ru_stime,
        peer=f"{peer} (client)",
        p99_ms=p99,
    )


def _drive(loop: asyncio.AbstractEventLoop, coro: Awaitable[Window]) -> Result:
    """Runs a row's coroutine on the loop under test (py-spy sees this frame as 'the loop's
    native code is running' when it is the innermost Python frame, see analyse_pyspy)."""
    return loop.run_until_complete(coro).result()  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Server rows


def _listen() -> socket.socket:
    # proto=IPPROTO_TCP, as getaddrinfo() gives: asyncio's loop sets TCP_NODELAY on accepted
    # sockets only when their proto says TCP (base_events._set_nodelay), and without it
    # uvicorn's separate header and body writes wait for a delayed ACK (~40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def aiohttp_hello_app() -> Any:
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="Hello, World!")

    app = web.Application()
    app.router.add_get("/", hello)
    return app


async def serve_aiohttp(quick: bool, tls: bool) -> Window:
    from aiohttp import web

    ctx = None
    if tls:
        import trustme

        # In memory (wrk does not verify the certificate).
        cert = trustme.CA().issue_cert("127.0.0.1", "localhost")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
    runner = web.AppRunner(aiohttp_hello_app(), access_log=None)
    await runner.setup()
    sock = _listen()
    site = web.SockSite(runner, sock, ssl_context=ctx)
    await site.start()
    url = f"{'https' if tls else 'http'}://127.0.0.1:{sock.getsockname()[1]}/"
    try:
        return await drive_server(lambda d: wrk_cmd(url, d, latency=True), parse_wrk, quick, "wrk")
    finally:
        await runner.cleanup()


@row("aiohttp", f"aiohttp.web hello, wrk x{CONNS}", "req/s")
def bench_aiohttp(loop: asyncio.AbstractEventLoop, quick: bool) -> Result:
    """aiohttp.web handler returning web.Response(text='Hello, World!'); wrk, 64 keep-alive
    connections, one thread."""
    return _drive(loop, serve_aiohttp(quick, tls=False))


@row("aiohttp_tls", f"aiohttp.web hello TLS, wrk x{CONNS}", "req/s")
def bench_aiohttp_tls(loop: asyncio.AbstractEventLoop, quick: bool) -> Result:
    """The aiohttp row over TLS (trustme certificate, ECDSA P-256; wrk https, keep-alive)."""
    return _drive(loop, serve_aiohttp(quick, tls=True))


async def start_uvicorn(app: Any, sock: socket.socket) -> tuple[Any, asyncio.Future]:
    """uvicorn (httptools, no lifespan, no access log) serving ``app`` on ``sock`` on the
    running loop; returns once it has started: the server and its serve() task."""
    import uvicorn

    config = uvicorn.Config(
        app,
        http="httptools",
        ws="none",
        lifespan="off",
        loop="none",
        access_log=False,
        log_level="warning",
        server_header=False,
    )
    server = uvicorn.Server(config)
    # uvicorn's capture_signals() installs handlers with signal.signal; none are needed here.
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    with contextlib.suppress(AttributeError):
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn exited before it started")
        await asyncio.sleep(0.01)
    return server, task


async def serve_uvicorn(app: Any, quick: bool) -> Window:
    sock = _listen()
    server, task = await start_uvicorn(app, sock)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    try:
        return await drive_server(lambda d: wrk_cmd(url, d, latency=True), parse_wrk, quick, "wrk")
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("Hello, World!")

    return Starlette(routes=[Route("/", hello)])


def fastapi_app() -> Any:
    from fastapi import FastAPI

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/")
    async def hello() -> dict[str, str]:
        return {"message": "Hello, World!"}

    return app


@row("uvicorn", f"uvicorn + Starlette, wrk x{CONNS}", "req/s")
def bench_uvicorn(loop: asyncio.AbstractEventLoop, quick: bool) -> Result:
    """uvicorn (httptools) serving a Starlette route returning PlainTextResponse; wrk x64."""
    return _drive(loop, serve_uvicorn(starlette_app(), quick))


@row("fastapi", f"uvicorn + FastAPI JSON, wrk x{CONNS}", "req/s")
def bench_fastapi(loop: asyncio.AbstractEventLoop, quick: bool) -> Result:
    """uvicorn (httptools) serving a FastAPI endpoint returning a dict (JSON); wrk x64."""
    return _drive(loop, serve_uvicorn(fastapi_app(), quick))


async def serve_sanic(quick: bool) -> Window:
    from sanic import Sanic
    from sanic.response import text

    app = Sanic("ferroloop_bench", configure_logging=False)
    app.config.USE_UVLOOP = False  # run on the loop under test, whatever it is
    app.config.ACCESS_LOG = False

    @app.get("/")
    async def hello(request: Any) -> Any:
        return text("Hello, World!")

    sock = _listen()
    sock.setblocking(True)  # Sanic hands it to loop.create_server(sock=...)
    server = await app.create_server(sock=sock, access_log=False, backlog=1024)
    if server is None:
        raise RuntimeError("Sanic's create_server returned None")
    await server.startup()
    await server.start_serving()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    try:
        return await drive_server(lambda d: wrk_cmd(url, d, latency=True), parse_wrk, quick, "wrk")
    finally:
        server.close()
        await server.wait_closed()


@row("sanic", f"Sanic text, wrk x{CONNS}", "req/s")
def bench_sanic(loop: asyncio.AbstractEventLoop, quick: bool) -> Result:
    """Sanic (its own HTTP/1.1 parser) returning text('Hello, World!'), USE_UVLOOP off, on the
    loop under test through app.create_server; wrk x64."""
    return _drive(loop, serve_sanic(quick))


async def serve_websockets(quick: bool) -> Window:
    from websockets.asyncio.server import serve

    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    sock = _listen()
    server = await serve(echo, sock=sock, compression=None, ping_interval=None, max_queue=64)
    port = sock.getsockname()[1]
    try:
        return await drive_server(lambda d: ws_cmd(port, d), parse_loadgen, quick, "loadgen")
    finally:
        server.close()
        await server.wait_closed()


@row("websocket", f"websockets echo {WS_SIZE} B x{CONNS}", "msg/s")
def bench_websocket(loop: asyncio.AbstractEventLoop, quick: bool) -> Result:
    """websockets (asyncio server) echoing each binary message; the native load generator
    (bench/loadgen --mode ws) keeps one 128-byte message in flight on each of 64 connections."""
    return _drive(loop, serve_websockets(quick))


# --------------------------------------------------------------------------------------------
# Client rows: 64 tasks on the loop under test against a C server


async def run_clients(
    op: Callable[[int], Awaitable[None]],
    quick: bool,
    peer_pids: list[int],
    peer: str,
    workers: int = CONNS,
) -> Window:
    """``workers`` tasks each run ``op(i)`` back to back; counts completed ops in the window."""
    warmup, duration = window(quick)
    count = 0
    stop = False

    async def worker(i: int) -> None:
        nonlocal count
        while not stop:
            await op(i)
            count += 1

    tasks = [asyncio.ensure_future(worker(i)) for i in range(workers)]
    try:
        await asyncio.sleep(warmup)
        _check(tasks)
        prof = Profiler(duration)
        c0, t0, (u0, s0), p0 = count, time.perf_counter(), proc_cpu(), pids_cpu(peer_pids)
        await asyncio.sleep(duration)
        c1, t1, (u1, s1), p1 = count, time.perf_counter(), proc_cpu(), pids_cpu(peer_pids)
        await prof.finish()
        _check(tasks)
    finally:
        stop = True
        done, pending = await asyncio.wait(tasks, timeout=10)
        for t in pending:
            t.cancel()
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            raise t.exception()  # type: ignore[misc]
    return Window(
        c1 - c0,
        t1 - t0,
        u1 - u0,
        s1 - s0,
        peer_cpu=(p1 - p0) if peer_pids else None,
        peer=f"{peer} (server)",
    )


def _check(tasks: list[asyncio.Future]) -> None:
    for t in tasks:
        if t.done():
            t.result()
            raise RuntimeError("a client task stopped early")


def nginx_target() -> tuple[str, list[int]]:
    addr = os.environ.get(ENV_NGINX)
    if not addr:
        raise RuntimeError("no nginx (the parent starts one: run bench/bench_apps.py itself)")
    pid = os.environ.get(ENV_NGINX_PID)
    return f"http://{addr}/", [int(pid)] if pid else []


async def aiohttp_client(quick: bool) -> Window:
    import aiohttp

    url, pids = nginx_target()
    connector = aiohttp.TCPConnector(limit=CONNS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def op(i: int) -> None:
            async with session.get(url) as resp:
                body = await resp.read()
                if resp.status != 200 or body != BODY:
                    raise RuntimeError(f"unexpected response {resp.status} {body[:40]!r}")

        return await run_clients(op, quick, pids, "nginx")


@row("aiohttp_client", f"aiohttp client x{CONNS} -> nginx", "req/s")
def bench_aiohttp_client(loop: asyncio.AbstractEventLoop, quick: bool) -> Result:
    """aiohttp.ClientSession (TCPConnector limit 64), 64 tasks doing GET + read() against
    nginx (one worker process, keep-alive, a 13-byte body from memory)."""
    return _drive(loop, aiohttp_client(quick))


async def httpx_client(quick: bool) -> Window:
    import httpx

    url, pids = nginx_target()
    limits = httpx.Limits(max_connections=CONNS, max_keepalive_connections=CONNS)
    async with httpx.AsyncClient(limits=limits) as client:

        async def op(i: int) -> None:
            resp = await client.get(url)
            if resp.status_code != 200 or resp.content != BODY:
                raise RuntimeError(f"unexpected response {resp.status_code}")

        return await run_clients(op, quick, pids, "nginx")


@row("httpx", f"httpx client x{CONNS} -> nginx", "req/s")
def bench_httpx(loop: asyncio.AbstractEventLoop, quick: bool) -> Result:
    """httpx.AsyncClient (64 connections), 64 tasks doing GET against nginx, as above."""
    return _drive(loop, httpx_client(quick))


def service_url(name: str) -> str:
    key = f"FERROLOOP_{name}_URL"
    if os.environ.get(key):
        return os.environ[key]
    with contextlib.suppress(OSError):
        with open(SERVICES_ENV) as f:
            for line in f:
                k, _, v = line.strip().partition("=")
                if k == key:
                    return v
    raise RuntimeError(f"{key} not set and no {SERVICES_ENV}: run scripts/services.sh start")


async def redis_client(quick: bool) -> Window:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(service_url("REDIS"))
    try:
        info = await client.info("server")
        pids = [int(info["process_id"])]
        value = b"x" * 64

        async def op(i: int) -> None:
            key = f"ferroloop-bench:{i}"
            await client.set(key, value)
            if await client.get(key) != value:
                raise RuntimeError("GET returned something else")

        w = await run_clients(op, quick, pids, "redis-server")
        w.requests *= 2  # one SET and one GET per op: the rate counts commands
        w.extra["commands_per_op"] = 2
        return w
    finally:
        await client.aclose()


@row("redis", f"redis-py SET+GET x{CONNS}", "cmd/s")
def bench_redis(loop: asyncio.AbstractEventLoop, quick: bool) -> Result:
    """redis.asyncio (redis-py, no hiredis), 64 tasks each doing SET then GET of a 64-byte value
    on its own key, one connection per task (the pool grows to 64); commands per second."""
    return _drive(loop, redis_client(quick))


async def asyncpg_client(quick: bool, tls: bool) -> Window:
    import asyncpg

    # asyncpg's default sslmode is "prefer": TLS whenever the server offers it, as the
    # PostgreSQL of scripts/services.sh does. Say which one each row measures.
    pool = await asyncpg.create_pool(
        service_url("PG"), min_size=PG_POOL, max_size=PG_POOL, ssl="require" if tls else False
    )
    try:
        # The pool's server processes (one backend per connection).
        conns = [await pool.acquire() for _ in range(PG_POOL)]
        pids = [c.get_server_pid() for c in conns]
        for c in conns:
            await pool.release(c)

        async def op(i: int) -> None:
            if await pool.fetchval("SELECT $1::int", i) != i:
                raise RuntimeError("SELECT returned something else")

        return await run_clients(op, quick, pids, "postgres")
    finally:
        await pool.close()


@row("asyncpg", f"asyncpg pool {PG_POOL}, x{CONNS} SELECT", "query/s")
def bench_asyncpg(loop: asyncio.AbstractEventLoop, quick: bool) -> Result:
    """asyncpg pool of 8 connections (plain TCP: ssl=False), 64 tasks doing
    pool.fetchval('SELECT $1::int', i)."""
    return _drive(loop, asyncpg_client(quick, tls=False))


@row("asyncpg_tls", f"asyncpg TLS pool {PG_POOL}, x{CONNS} SELECT", "query/s")
def bench_asyncpg_tls(loop: asyncio.AbstractEventLoop, quick: bool) -> Result:
    """The asyncpg row over TLS (ssl='require'; what asyncpg's default sslmode 'prefer' gives
    against a server with ssl=on, such as the one of scripts/services.sh)."""
    return _drive(loop, asyncpg_client(quick, tls=True))


ROW_ORDER = [
    "aiohttp",
    "uvicorn",
    "fastapi",
    "sanic",
    "aiohttp_tls",
    "websocket",
    "aiohttp_client",
    "httpx",
    "redis",
    "asyncpg",
    "asyncpg_tls",
]


def _reorder_rows() -> None:
    rows = _harness.ROWS
    assert sorted(ROW_ORDER) == sorted(rows), "ROW_ORDER out of date"
    ordered = {k: rows[k] for k in ROW_ORDER}
    rows.clear()
    rows.update(ordered)


_reorder_rows()


# --------------------------------------------------------------------------------------------
# Parent side: the outside programs and servers


def _as_root(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return cmd
    if shutil.which("sudo"):
        return ["sudo", "-n", *cmd]
    raise RuntimeError(f"need root (or sudo) to run: {' '.join(cmd)}")


def apt_install(packages: list[str]) -> str | None:
    """Installs Debian packages (as scripts/services.sh does); an error text or None."""
    if not shutil.which("apt-get"):
        return f"{', '.join(packages)} missing and no apt-get: install them by hand"
    print(f"# installing {' '.join(packages)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for cmd in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "-o", "Dpkg::Use-Pty=0", *packages],
        ):
            proc = subprocess.run(_as_root(cmd), capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                return f"{' '.join(cmd)} failed: {proc.stderr.strip()[-300:]}"
    except RuntimeError as exc:
        return str(exc)
    return None


def nginx_bin() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def ensure_programs(rows: set[str], build: bool, install: bool) -> list[str]:
    """Makes sure wrk, nginx, the load generator and the services are there; returns errors."""
    errors = []
    missing = []
    if rows & NEEDS_WRK and not shutil.which("wrk"):
        missing.append("wrk")
    if rows & NEEDS_NGINX and not nginx_bin():
        missing.append("nginx-light")
    if missing:
        err = apt_install(missing) if install else f"missing: {' '.join(missing)} (--no-install)"
        if err:
            errors.append(err)
    if rows & NEEDS_LOADGEN:
        err = _bench_net().ensure_loadgen(build)
        if err:
            errors.append(err)
    if rows & NEEDS_SERVICES:
        services = os.path.join(ROOT, "scripts", "services.sh")
        ok = subprocess.run([services, "status"], capture_output=True).returncode == 0
        if not ok and install:
            print("# starting PostgreSQL and Redis: scripts/services.sh install && start")
            for step in ("install", "start"):
                proc = subprocess.run([services, step], capture_output=True, text=True)
                if proc.returncode != 0:
                    errors.append(f"scripts/services.sh {step}: {proc.stderr.strip()[-300:]}")
                    break
        elif not ok:
            errors.append("PostgreSQL / Redis not running: scripts/services.sh start")
    return errors


def _bench_net() -> Any:
    """bench_net.py's load generator helpers, without registering its rows here."""
    saved = dict(_harness.ROWS)
    _harness.ROWS.clear()
    try:
        import bench_net
    finally:
        _harness.ROWS.clear()
        _harness.ROWS.update(saved)
    return bench_net


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{
            default_type text/plain;
            return 200 "Hello, World!";
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_server():
    """One nginx process (no master, one worker) on a free loopback port, serving a 13-byte
    body from memory with unlimited keep-alive; its address and pid go to the workers' env."""
    binary = nginx_bin()
    if binary is None:
        raise RuntimeError("nginx not installed (apt-get install nginx-light)")
    tmp = tempfile.mkdtemp(prefix="ferroloop-bench-nginx-")
    port = _free_port()
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(tmp=tmp, port=port))
    proc = subprocess.Popen(
        [binary, "-p", tmp, "-c", conf, "-e", os.path.join(tmp, "error.log")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"nginx exited: {err.strip()[-300:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("nginx did not start listening")
            time.sleep(0.05)
        os.environ[ENV_NGINX] = f"127.0.0.1:{port}"
        os.environ[ENV_NGINX_PID] = str(proc.pid)
        yield
    finally:
        os.environ.pop(ENV_NGINX, None)
        os.environ.pop(ENV_NGINX_PID, None)
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Report: CPU per request


def median_cpu(cell: Any) -> tuple[float, float] | None:
    """(CPU, user) us per request of the loop's process, medians over the cell's rounds."""
    extras = [e for e in cell.extras if "cpu_us_per_req" in e]
    if not extras:
        return None
    return (
        statistics.median(e["cpu_us_per_req"] for e in extras),
        statistics.median(e["user_us_per_req"] for e in extras),
    )


def cpu_epilogue(rows: list[Any], loops: list[str], cells: dict, baseline: str | None) -> list[str]:
    """Median CPU time per request of the loop's process (user part in brackets), and each
    loop's CPU efficiency against the baseline's: baseline us/req / loop us/req. The rate on a
    machine where the loop's process has a core to itself is about 1 / (CPU per request), so
    this ratio predicts the rate ratio of a quiet machine, and other load disturbs it far less
    than the rates."""
    out = ["CPU per request of the loop's process, median over rounds, us (user part):"]
    width = max(len(r.title) for r in rows)
    others = [n for n in loops if n != baseline] if baseline else []
    head = "".join(f"  {n:>16}" for n in loops)
    head += "".join(f"  {n + ' eff.':>16}" for n in others)
    out.append("  " + "row".ljust(width) + head)
    for r in rows:
        parts = []
        med = {name: median_cpu(cells[r.key, name]) for name in loops}
        for name in loops:
            m = med[name]
            parts.append(f"{m[0]:.1f} ({m[1]:.1f})" if m else "-")
        base = med.get(baseline) if baseline else None
        for name in others:
            m = med[name]
            parts.append(f"{base[0] / m[0]:.2f}x" if m and base else "-")
        out.append("  " + r.title.ljust(width) + "".join(f"  {p:>16}" for p in parts))
    if others:
        out.append(f"  (eff.: {baseline}'s CPU per request / the loop's; > 1 = less CPU)")
    return out


# --------------------------------------------------------------------------------------------
# --profile: where each request's CPU time goes
#
# perf (cpu-clock, DWARF call chains) attributes every sample of the loop's process by walking
# from the sample up its stack to the first frame that says whose work it is:
#   kernel      the sample is in the kernel (system calls, loopback TCP, page faults)
#   loop        a frame in the loop's native module (_ferroloop*.so; uvloop's loop*.so, libuv
#               inside): the loop's code and whatever C it calls directly (malloc, memcpy,
#               CPython's object and call machinery), up to the Python code it calls
#   loop_py     a Python function in the loop's package (python/ferroloop/*.py, uvloop/*.py)
#   asyncio_c   asyncio's C accelerator (_asyncio: Future, Task steps)
#   asyncio_py  a Python function of asyncio (streams, sslproto, base_events, ...)
#   app_py      any other Python function: the framework, the application, the stdlib
#               modules they use
#   ext         a C extension in site-packages: the framework's (httptools, multidict, yarl,
#               aiohttp's parser, asyncpg's protocol, pydantic-core, websockets' speedups)
#   tls         OpenSSL (libssl, libcrypto, _ssl)
#   other       no such frame (libc or the interpreter alone, a broken unwind)
# Python functions show in perf's stacks on 3.12+ with the perf trampoline (PYTHONPERFSUPPORT=1:
# a "py::function:file" frame above each _PyEval_EvalFrameDefault). On 3.11 they do not: a
# sample that reaches _PyEval_EvalFrameDefault first counts as "python" (Python code with the
# builtins it calls), and a second run under py-spy (Python frames only: its --native cannot
# merge 3.11's inlined Python calls) bounds the loop's and asyncio's Python parts from above: the
# share of samples whose innermost Python frame is theirs (this includes the native code and
# system calls made from those frames, so it overstates them).

CATEGORIES = [
    "kernel",
    "loop",
    "loop_py",
    "asyncio_c",
    "asyncio_py",
    "app_py",
    "python",
    "ext",
    "tls",
    "other",
]
LOOP_DSO = {"ferroloop": "_ferroloop", "uvloop": "/uvloop/", "rloop": "/rloop/"}
LOOP_PKG = {"ferroloop": "ferroloop/", "uvloop": "uvloop/", "rloop": "rloop/"}


def trampolines() -> bool:
    """Whether the workers' Python has the perf trampoline (3.12+ on Linux x86-64/arm64)."""
    return sys.version_info >= (3, 12) and hasattr(sys, "activate_stack_trampoline")


def _short_dso(path: str) -> str:
    base = os.path.basename(path)
    if "site-packages/" in path:
        pkg = path.split("site-packages/", 1)[1].split("/", 1)[0]
        return f"{pkg}/{base}" if pkg != base else base
    return base


def classify_py_file(file: str, loop: str) -> str:
    """loop_py / asyncio_py / app_py for a Python source path (absolute, or as py-spy shows
    it: relative to its sys.path entry)."""
    pkg = LOOP_PKG.get(loop)
    if pkg and (file.startswith(pkg) or f"/{pkg}" in file):
        return "loop_py"
    # The stdlib's asyncio package (not, say, redis/asyncio/).
    if file.startswith("asyncio/") or re.search(r"/lib/python3\.\d+/asyncio/", file):
        return "asyncio_py"
    return "app_py"


def classify_frame(path: str, sym: str, loop: str) -> str | None:
    """The category a frame decides, or None to keep walking up."""
    if path.startswith("[kernel") or path == "[unknown]" and sym.startswith("0xffff"):
        return "kernel"
    if sym.startswith("py::"):  # the perf trampoline: py::qualname:/path/file.py
        return classify_py_file(sym.rsplit(":", 1)[-1], loop)
    marker = LOOP_DSO.get(loop)
    if marker and marker in path:
        return "loop"
    base = os.path.basename(path)
    if base.startswith("_asyncio."):
        return "asyncio_c"
    if base.startswith(("libssl", "libcrypto", "_ssl.")):
        return "tls"
    if "site-packages/" in path:
        return "ext"
    return None


Frame = tuple[str, str, str, list[tuple[str, str]]]  # dso, symbol, its source line, inlined


def perf_samples(path: str, pid: int) -> list[list[Frame]]:
    """Call chains from ``perf script`` of process ``pid`` (perf -p also follows the children
    started after it attached, e.g. wrk): per sample, frames from the leaf up, each as (dso,
    symbol, source line, [(function, source line) inlined at that address, innermost first])."""
    # restore_signals=False: perf inherits Python's ignored SIGPIPE. perf resolves source
    # lines through addr2line child processes; one for an anonymous executable mapping
    # ("//anon") exits at once, and with SIGPIPE at its default the next write kills perf,
    # leaving a truncated sample stream.
    proc = subprocess.run(
        ["perf", "script", "-i", path, "-F", "pid,ip,sym,dso,srcline"],
        capture_output=True,
        text=True,
        timeout=900,
        restore_signals=False,
    )
    # perf script may exit non-zero after a harmless complaint (addr2line on an anonymous
    # mapping, say) with its output complete: only no output at all is an error.
    if not proc.stdout.strip():
        raise RuntimeError(f"perf script: {proc.stderr.strip()[-300:]}")
    frame_re = re.compile(r"^\t\s*([0-9a-f]+)\s+(.*)$")
    samples: list[list[Frame]] = []
    frames: list[Frame] = []
    keep = True
    # The current address: its lines as [symbol, dso or None, source line, inlined?].
    group: list[list[Any]] = []
    group_ip = None

    def flush_group() -> None:
        nonlocal group
        if group:
            phys = next((g for g in group if not g[3]), None) or group[-1]
            inl = [(g[0], g[2]) for g in group if g is not phys]
            frames.append((phys[1] or "[unknown]", phys[0], phys[2], inl))
        group = []

    def end_sample() -> None:
        nonlocal frames, group_ip
        flush_group()
        if frames and keep:
            samples.append(frames)
        frames, group_ip = [], None

    for line in proc.stdout.splitlines():
        if not line.strip():
            end_sample()
            continue
        if re.fullmatch(r"\s*\d+\s*", line):  # a sample's header: its pid
            end_sample()
            keep = line.strip() == str(pid)
            continue
        if line.startswith("\t"):
            m = frame_re.match(line)
            if not m:
                continue
            ip, rest = m.groups()
            dso = None
            dm = re.match(r"^(.*?)\s+\(([/\[][^()]*)\)$", rest)
            sym = rest
            if dm:
                sym, dso = dm.groups()
            if ip != group_ip:
                flush_group()
                group_ip = ip
            group.append([sym, dso, "", dso is None])
        elif group:  # the source line of the frame above
            src = line.strip()
            group[-1][3] = src.endswith("(inlined)") or group[-1][1] is None
            group[-1][2] = src.removesuffix("(inlined)").strip()
    end_sample()
    return samples


def _clean_sym(sym: str) -> str:
    sym = re.sub(r"<[^<>]*(?:<[^<>]*>[^<>]*)*>", "<>", sym)  # drop generic arguments
    if sym.startswith("py::"):
        name, _, file = sym[4:].rpartition(":")
        sym = f"{name} ({_py_short(file)})"
    return sym[:110]


def _py_short(file: str) -> str:
    for marker in ("site-packages/", "/python/", "lib/python3.", "/bench/"):
        if marker in file:
            rest = file.split(marker, 1)[1]
            return rest.split("/", 1)[1] if marker == "lib/python3." else rest
    return os.path.basename(file)


# ferroloop's sources, to name the function around a line perf reports (base names; mod.rs
# and lib.rs are ambiguous and left out). FERROLOOP_SRC_DIR: the sources the measured build
# came from, when the work tree has moved on since.
FERRO_SRC_DIR = os.environ.get("FERROLOOP_SRC_DIR") or os.path.join(ROOT, "src")
FERRO_SRC = {
    f: os.path.join(d, f)
    for d, _s, files in os.walk(FERRO_SRC_DIR)
    for f in files
    if f.endswith(".rs") and f not in ("mod.rs", "lib.rs")
}
_FN_RE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:unsafe\s+)?(?:extern \"C\"\s+)?fn\s+(\w+)")
_fn_cache: dict[str, list[str]] = {}


def _enclosing_fn(src_line: str) -> str | None:
    """'stream.rs:808' -> the name of the innermost fn declared at or above that line."""
    file, _, num = src_line.partition(":")
    path = FERRO_SRC.get(file)
    if path is None or not num.isdigit():
        return None
    if path not in _fn_cache:
        with open(path, errors="replace") as f:
            _fn_cache[path] = f.read().splitlines()
    lines = _fn_cache[path]
    n = min(int(num), len(lines))
    if n and lines[n - 1].lstrip().startswith("#["):
        return "pyo3 wrapper"  # e.g. the #[pymethods] line: argument parsing, type checks
    for i in range(n - 1, -1, -1):
        m = _FN_RE.match(lines[i])
        if m:
            return m.group(1)
    return None


def _loop_where(frame: Frame, loop: str) -> str:
    """A loop frame as 'fn (file:line)': for ferroloop the innermost inlined code that is
    ferroloop's own (not pyo3's, std's or CPython's inline helpers)."""
    dso, sym, src, inl = frame
    if loop == "ferroloop":
        for _name, line in [*inl, (sym, src)]:
            if line.split(":", 1)[0] in FERRO_SRC:
                return f"{_enclosing_fn(line) or _clean_sym(_name)} ({line})"
    return _clean_sym(sym)


_PYMETHOD_RE = re.compile(r"(?:(\w+)::)?__pymethod_(?:get_|set_)?(\w+?)__")
_PYX_RE = re.compile(r"__pyx_pw_6uvloop_4loop_\d+(\w+?)_\d+(\w+)$")


def _loop_entry(frames: list[Frame], i: int, loop: str) -> str:
    """Which of the loop's entry points the time belongs to: the outermost Python-callable
    method of the loop (a pyo3 #[pymethods] wrapper, a Cython def) in the native stretch that
    holds frame ``i`` (up to the Python code that called it)."""
    entry = None
    outer = frames[i]
    for f in frames[i:]:
        if f[1].startswith("py::") or f[1] == "_PyEval_EvalFrameDefault":
            break
        if classify_frame(f[0], f[1], loop) != "loop":
            continue
        outer = f
        for name in [n for n, _ in f[3]] + [f[1]]:
            m = _PYMETHOD_RE.search(name) or _PYX_RE.search(name)
            if m:
                cls, meth = m.groups()
                entry = f"{cls}.{meth}" if cls else meth
    return entry or re.sub(r"^_ferroloop::", "", _clean_sym(outer[1]))


def analyse_perf(path: str, loop: str, pid: int) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    loop_where: Counter[str] = Counter()  # where in the loop's code the walk stopped
    loop_entry: Counter[str] = Counter()  # through which entry point of the loop
    loop_leaf: Counter[str] = Counter()  # what was running (the loop itself, malloc, ...)
    py_funcs: dict[str, Counter[str]] = {"loop_py": Counter(), "asyncio_py": Counter()}
    syscalls: Counter[str] = Counter()  # kernel samples by the user-space caller
    ext: Counter[str] = Counter()
    other: Counter[str] = Counter()
    samples = perf_samples(path, pid)
    for frames in samples:
        cat = None
        for i, frame in enumerate(frames):
            dso, sym = frame[0], frame[1]
            if sym == "_PyEval_EvalFrameDefault":
                # With the trampoline the Python function is the next frame up.
                nxt = frames[i + 1][1] if i + 1 < len(frames) else ""
                if nxt.startswith("py::"):
                    continue
                cat = "python"
                break
            cat = classify_frame(dso, sym, loop)
            if cat is None:
                continue
            if cat == "kernel":
                caller = next((f for f in frames[i:] if not f[0].startswith("[kernel")), None)
                syscalls[_clean_sym(caller[1]) if caller else "?"] += 1
            elif cat == "loop":
                loop_where[_loop_where(frame, loop)] += 1
                loop_entry[_loop_entry(frames, i, loop)] += 1
                loop_leaf[f"{_clean_sym(frames[0][1])} ({_short_dso(frames[0][0])})"] += 1
            elif cat in py_funcs:
                py_funcs[cat][_clean_sym(sym)] += 1
            elif cat == "ext":
                ext[_short_dso(dso)] += 1
            break
        if cat is None:
            cat = "other"
            other[f"{_clean_sym(frames[0][1])} ({_short_dso(frames[0][0])})"] += 1
        counts[cat] += 1
    total = sum(counts.values())
    return {
        "samples": total,
        "shares": {c: counts[c] / total if total else 0.0 for c in CATEGORIES},
        "loop_entries": loop_entry.most_common(20),
        "loop_functions": loop_where.most_common(30),
        "loop_leaf": loop_leaf.most_common(15),
        "loop_py_functions": py_funcs["loop_py"].most_common(15),
        "asyncio_py_functions": py_funcs["asyncio_py"].most_common(15),
        "kernel_by_caller": syscalls.most_common(10),
        "ext_modules": ext.most_common(10),
        "other": other.most_common(10),
    }


def _pyspy_frame(frame: str) -> tuple[str, str]:
    m = re.match(r"^(.*) \(([^()]*?)(?::\d+)?\)$", frame)
    return (m.group(1), m.group(2)) if m else (frame, "")


def analyse_pyspy(path: str, loop: str) -> dict[str, Any]:
    """Shares of all on-CPU samples by the owner of the innermost Python frame (upper bounds
    for the Python code of the loop and of asyncio, see above)."""
    counts: Counter[str] = Counter()
    funcs: dict[str, Counter[str]] = {"loop_py": Counter(), "asyncio_py": Counter()}
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not stack or not n.isdigit():
                continue
            func, file = _pyspy_frame(stack.split(";")[-1])
            base = os.path.basename(file)
            if (
                base == "bench_apps.py" and func in ("_drive", "<module>")
            ) or base == "_harness.py":
                cat = "native"  # the loop's native code (or the kernel) is running
            elif (
                loop == "ferroloop"
                and file.endswith("ferroloop/_loop.py")
                and func in ("Loop.run_forever", "Loop.run_until_complete")
            ):
                cat = "native"
            else:
                cat = classify_py_file(file, loop)
            counts[cat] += int(n)
            if cat in funcs:
                funcs[cat][f"{func} ({file})"] += int(n)
    total = sum(counts.values())
    return {
        "samples": total,
        "shares": {
            c: counts[c] / total if total else 0.0
            for c in ("native", "loop_py", "asyncio_py", "app_py")
        },
        "loop_py_functions": funcs["loop_py"].most_common(15),
        "asyncio_py_functions": funcs["asyncio_py"].most_common(15),
    }


SPLIT_COLUMNS = [
    ("kernel", "kernel"),
    ("loop_native", "loop native"),
    ("loop_python", "loop Python"),
    ("asyncio", "asyncio lib (C + Python)"),
    ("app", "framework + app (Python + C ext)"),
    ("other", "other (OpenSSL, libc, interpreter alone)"),
]


def combine(perf: dict[str, Any], spy: dict[str, Any] | None) -> dict[str, float]:
    """The table's columns from perf's categories. Without the trampoline (3.11) perf cannot
    tell whose Python code ran: the loop's Python part is then py-spy's upper bound, and
    asyncio's Python code stays in the framework + app column (py-spy's bound for it is far
    too loose to split it out: asyncio's StreamWriter.write is the innermost Python frame of
    every send system call that redis-py makes)."""
    s = perf["shares"]
    loop_py, asyncio_py, app_py = s["loop_py"], s["asyncio_py"], s["app_py"]
    py = s["python"]  # 3.11: Python code the trampoline would have named
    if py and spy is not None:
        bound_loop = min(py, spy["shares"]["loop_py"])
        loop_py += bound_loop
        app_py += py - bound_loop
    else:
        app_py += py
    return {
        "kernel": s["kernel"],
        "loop_native": s["loop"],
        "loop_python": loop_py,
        "asyncio": s["asyncio_c"] + asyncio_py,
        "app": s["ext"] + app_py,
        "other": s["tls"] + s["other"],
    }


def _load_rates(path: str | None) -> dict[tuple[str, str], float]:
    if not path:
        return {}
    with open(path) as f:
        doc = json.load(f)
    return {
        (r, loop): cell["best"]
        for r, per_loop in doc.get("summary", {}).items()
        for loop, cell in per_loop.items()
        if cell.get("best")
    }


def run_profiles(args: argparse.Namespace, rows: list[str], loops: list[str]) -> int:
    script = os.path.abspath(__file__)
    outdir = args.profile_dir or tempfile.mkdtemp(prefix="ferroloop-bench-apps-profile-")
    os.makedirs(outdir, exist_ok=True)
    try:
        return _run_profiles(args, rows, loops, script, outdir)
    finally:
        if not args.profile_dir:
            shutil.rmtree(outdir, ignore_errors=True)  # ~50 MB of perf data per profile


def _run_profiles(
    args: argparse.Namespace, rows: list[str], loops: list[str], script: str, outdir: str
) -> int:
    rates = _load_rates(args.rates)
    if shutil.which("perf") is None:
        print("error: perf not found (apt-get install linux-perf)")
        return 2
    exact = trampolines()
    kinds = ("perf",) if exact else ("perf", "pyspy")
    how = (
        "perf with the perf trampoline (Python functions named)"
        if exact
        else "perf, and py-spy for the Python part"
    )
    load_start = _harness._loadavg()
    print(f"# {how}; profiles in {outdir}; load average {load_start}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    failed = False
    for r in rows:
        for loop in loops:
            rec: dict[str, Any] = {}
            for kind in kinds:
                out = os.path.join(outdir, f"{r}-{loop}.{kind}")
                os.environ[ENV_PROFILE] = f"{kind}:{out}"
                if exact:
                    os.environ["PYTHONPERFSUPPORT"] = "1"
                try:
                    res = _harness._spawn(script, loop, r, args.quick, timeout=180)
                finally:
                    os.environ.pop(ENV_PROFILE, None)
                    os.environ.pop("PYTHONPERFSUPPORT", None)
                if res.get("status") != "ok" or not os.path.exists(out):
                    rec["error"] = f"{kind}: {res.get('error', 'no profile written')}"
                    break
                rec[f"{kind}_run"] = res.get("extra", {})
                rec[f"{kind}_rate"] = res["ops"]
                try:
                    if kind == "perf":
                        pid = int(res["extra"]["pid"])
                        try:
                            rec[kind] = analyse_perf(out, loop, pid)
                        finally:
                            with contextlib.suppress(OSError):
                                os.unlink(f"/tmp/perf-{pid}.map")  # the trampoline's symbols
                    else:
                        rec[kind] = analyse_pyspy(out, loop)
                except Exception as exc:  # noqa: BLE001 - one bad profile is not the run
                    rec["error"] = f"{kind} analysis: {type(exc).__name__}: {exc}"
                    break
            if "error" in rec:
                failed = True
                print(f"{r} / {loop}: {rec['error']}", flush=True)
            else:
                rec["split"] = combine(rec["perf"], rec.get("pyspy"))
                rate = rates.get((r, loop)) or rec["perf_rate"]
                share = rec["split"]["loop_native"] + rec["split"]["loop_python"]
                rec["loop_share"] = share
                rec["rate"] = rate
                rec["rate_source"] = "--rates" if (r, loop) in rates else "profiled run"
                rec["limit"] = rate / (1 - share) if share < 1 else None
                # Requests per CPU second of the loop's process (what a core to itself would
                # serve), and the same with a loop that costs nothing.
                cpu_us = rec["perf_run"].get("cpu_us_per_req")
                rec["per_cpu_s"] = 1e6 / cpu_us if cpu_us else None
                rec["limit_per_cpu_s"] = (
                    rec["per_cpu_s"] / (1 - share) if cpu_us and share < 1 else None
                )
                sp = rec["split"]
                print(
                    f"{r} / {loop}: {fmt_rate(rate)}/s, "
                    + ", ".join(f"{k} {sp[k]:.1%}" for k, _ in SPLIT_COLUMNS)
                    + f", limit {fmt_rate(rec['limit'])}/s",
                    flush=True,
                )
            results.setdefault(r, {})[loop] = rec
    lines = render_profile(rows, loops, results, exact)
    print()
    print("\n".join(lines))
    meta = _harness.machine_info(loops, script)
    meta.update(
        {
            "quick": args.quick,
            "profile_dir": outdir,
            "trampoline": exact,
            "loadavg_start": load_start,
            "loadavg_end": _harness._loadavg(),
            "duration_s": window(args.quick)[1],
        }
    )
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {args.markdown}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "profiles": results}, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    return 1 if failed else 0


def render_profile(rows: list[str], loops: list[str], results: dict, exact: bool) -> list[str]:
    how = (
        "perf cpu-clock with DWARF call chains and the perf trampoline"
        if exact
        else "perf cpu-clock with DWARF call chains; without the perf trampoline, loop Python "
        "is py-spy's upper bound, asyncio is its C accelerator only and asyncio's Python code "
        "counts under framework + app"
    )
    out = [
        f"Where the CPU time of the loop's process goes (% of its samples; {how}; Python "
        f"{sys.version.split()[0]}):",
        "",
        "| row | loop | rate | CPU us/req | busy | "
        + " | ".join(t for _, t in SPLIT_COLUMNS)
        + " | limit (loop free) | req per CPU-s | limit per CPU-s |",
        "|---|---|--:|--:|--:|" + "--:|" * len(SPLIT_COLUMNS) + "--:|--:|--:|",
    ]
    for r in rows:
        title = _harness.ROWS[r].title
        for loop in loops:
            rec = results.get(r, {}).get(loop)
            if rec is None or "split" not in rec:
                err = rec.get("error", "-") if rec else "-"
                out.append(f"| {title} | {loop} | error: {err} |" + " |" * (len(SPLIT_COLUMNS) + 5))
                continue
            sp = rec["split"]
            cpu = rec["perf_run"].get("cpu_us_per_req")
            busy = rec["perf_run"].get("busy")
            cells = [f"{sp[k] * 100:.1f}" for k, _ in SPLIT_COLUMNS]
            out.append(
                f"| {title} | {loop} | {fmt_rate(rec['rate'])} | "
                + (f"{cpu:.1f}" if cpu else "-")
                + " | "
                + (f"{busy:.0%}" if busy is not None else "-")
                + " | "
                + " | ".join(cells)
                + f" | {fmt_rate(rec['limit'])} | {fmt_rate(rec.get('per_cpu_s'))}"
                + f" | {fmt_rate(rec.get('limit_per_cpu_s'))} |"
            )
    for r in rows:
        for loop in loops:
            rec = results.get(r, {}).get(loop)
            if not rec or "perf" not in rec:
                continue
            out.append("")
            out.append(f"{_harness.ROWS[r].title} / {loop}:")
            perf = rec["perf"]
            n = perf["samples"] or 1

            def top(items: list, k: int, denom: int = n) -> str:
                return "; ".join(f"{name} {c / denom:.1%}" for name, c in items[:k])

            if perf["loop_functions"]:
                out.append("  loop native, by entry point: " + top(perf["loop_entries"], 8))
                out.append("  loop native, by function: " + top(perf["loop_functions"], 8))
                out.append("  loop native, by leaf: " + top(perf["loop_leaf"], 6))
            spy = rec.get("pyspy")
            for key, what in (("loop_py_functions", "loop"), ("asyncio_py_functions", "asyncio")):
                if perf[key]:
                    out.append(f"  {what} Python: " + top(perf[key], 6))
                elif spy and spy[key]:
                    out.append(
                        f"  {what} Python (py-spy, innermost frame, share of all samples): "
                        + top(spy[key], 6, spy["samples"] or 1)
                    )
            if perf["kernel_by_caller"]:
                out.append("  kernel, by caller: " + top(perf["kernel_by_caller"], 6))
    return out


# --------------------------------------------------------------------------------------------
# --summary: one table from a timing run, a --tune-malloc run and a profile


def summary(paths: list[str]) -> list[str]:
    """The README table: rates and CPU efficiency (default and tuned allocator), each loop's
    share of the CPU and ferroloop's limit against uvloop. Files are told apart by content:
    a --profile JSON has "profiles"; a timing JSON whose meta.apps.malloc_env is set is the
    --tune-malloc run."""
    timing: dict[str, Any] | None = None
    tuned: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        if "profiles" in doc:
            profile = doc
        elif doc.get("meta", {}).get("apps", {}).get("malloc_env"):
            tuned = doc
        else:
            timing = doc
    if timing is None:
        raise SystemExit("--summary needs a timing run's --json")

    def med_cpu(doc: dict[str, Any] | None, key: str, loop: str) -> float | None:
        if doc is None:
            return None
        vals = [
            r["extra"]["cpu_us_per_req"]
            for r in doc["raw"]
            if r.get("row") == key and r.get("loop") == loop and r.get("status") == "ok"
        ]
        return statistics.median(vals) if vals else None

    def eff(doc: dict[str, Any] | None, key: str) -> str:
        u, f = med_cpu(doc, key, "uvloop"), med_cpu(doc, key, "ferroloop")
        return f"{u / f:.2f}x" if u and f else "-"

    def share(key: str, loop: str) -> float | None:
        rec = (profile or {}).get("profiles", {}).get(key, {}).get(loop, {})
        return rec.get("loop_share")

    out = [
        "| row | unit | asyncio | uvloop | ferroloop | ferroloop / uvloop: best rate |"
        " CPU per request, us (uvloop / ferroloop) | ferroloop / uvloop: CPU efficiency |"
        " same, --tune-malloc | loop share of the CPU (uvloop / ferroloop) |"
        " limit: ferroloop's rate with a free loop | a free loop / uvloop |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    summ = timing["summary"]
    for key, info in timing["rows"].items():
        cells = summ.get(key, {})

        def best(loop: str, cells: dict = cells) -> str:
            c = cells.get(loop)
            if not c or not c.get("best"):
                return c["status"] if c else "-"
            spread = c.get("spread_pct")
            return fmt_rate(c["best"]) + (f" ±{spread:.0f}%" if spread is not None else "")

        ub, fb = (cells.get(n, {}).get("best") for n in ("uvloop", "ferroloop"))
        ratio = f"{fb / ub:.2f}x" if ub and fb else "-"
        u, f = med_cpu(timing, key, "uvloop"), med_cpu(timing, key, "ferroloop")
        cpu = f"{u:.1f} / {f:.1f}" if u and f else "-"
        su, sf = share(key, "uvloop"), share(key, "ferroloop")
        shares = f"{su:.1%} / {sf:.1%}" if su is not None and sf is not None else "-"
        # The rate with a loop that costs nothing: ferroloop's rate / (1 - its loop share);
        # and what any loop could reach against uvloop if the rest cost what it costs on
        # uvloop: 1 / (1 - uvloop's share).
        limit = f"{fmt_rate(fb / (1 - sf))}" if fb and sf is not None else "-"
        free = f"{1 / (1 - su):.2f}x" if su is not None else "-"
        out.append(
            f"| {info['title']} | {info['unit']} | {best('asyncio')} | {best('uvloop')} | "
            f"{best('ferroloop')} | {ratio} | {cpu} | {eff(timing, key)} | {eff(tuned, key)} | "
            f"{shares} | {limit} | {free} |"
        )
    meta = timing["meta"]
    out.append("")
    out.append(
        f"Timing: {meta['rounds']} rounds{' (quick)' if meta.get('quick') else ''}, "
        f"{meta['date']}, commit {meta.get('git_commit')}, Python {meta['python']}, load average "
        f"{meta.get('loadavg_start')} at the start and {meta.get('loadavg_end')} at the end."
        + (
            f" Profile: Python {profile['meta']['python']}"
            + (" with the perf trampoline" if profile["meta"].get("trampoline") else "")
            + f", load average {profile['meta'].get('loadavg_start')}."
            if profile
            else ""
        )
    )
    return out


# --------------------------------------------------------------------------------------------


DESCRIPTION = (
    "Application benchmarks (aiohttp, uvicorn + Starlette, FastAPI, Sanic, aiohttp TLS, "
    "websockets, aiohttp / httpx clients, redis-py, asyncpg) on asyncio, uvloop and ferroloop. "
    "Besides the options below: --warmup S and --duration S per measurement (default "
    f"{WARMUP_FULL}+{DURATION_FULL} s, quick {WARMUP_QUICK}+{DURATION_QUICK} s), --tune-malloc "
    "(MALLOC_MMAP_THRESHOLD_=4MiB, MALLOC_TRIM_THRESHOLD_=64MiB for the workers), --no-install "
    "(do not apt-get wrk / nginx or start the services), --no-build (do not build the load "
    "generator), --profile (profile each row once per loop with perf and py-spy instead of "
    "timing rounds; default loops uvloop,ferroloop; --rates JSON takes the rates for the limit "
    "column from a timing run's --json; --profile-dir DIR keeps the raw profiles). "
    "--summary TIMING.json [TUNED.json] [PROFILE.json]: print the README table from the "
    "--json files of a timing run, a --tune-malloc run and a --profile run."
)


def _app_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--warmup", type=float)
    p.add_argument("--duration", type=float)
    p.add_argument("--tune-malloc", action="store_true")
    p.add_argument("--no-install", action="store_true")
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--rates")
    p.add_argument("--profile-dir")
    return p.parse_known_args(argv)


def _option(rest: list[str], name: str) -> str | None:
    for i, a in enumerate(rest):
        if a == name and i + 1 < len(rest):
            return rest[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def cli(argv: list[str]) -> int:
    if "--worker" in argv:
        return main(argv, description=DESCRIPTION)
    if argv and argv[0] == "--summary":
        print("\n".join(summary(argv[1:])))
        return 0
    app, rest = _app_args(argv)
    for flag, env, value in (
        ("--warmup", ENV_WARMUP, app.warmup),
        ("--duration", ENV_DURATION, app.duration),
    ):
        if value is not None:
            if value < 0 or (flag == "--duration" and value < 1):
                print(f"error: {flag} out of range (--duration at least 1 s)")
                return 2
            os.environ[env] = str(value)
    if app.tune_malloc:
        os.environ.update(MALLOC_TUNING)
        print("# --tune-malloc: " + " ".join(f"{k}={v}" for k, v in MALLOC_TUNING.items()))
    if {"--list", "-h", "--help"} & set(rest):
        return main(rest, description=DESCRIPTION, default_rounds=(ROUNDS_FULL, ROUNDS_QUICK))
    rows = [x for x in (_option(rest, "--rows") or ",".join(ROW_ORDER)).split(",") if x]
    unknown = [x for x in rows if x not in _harness.ROWS]
    if unknown:
        print(f"error: unknown row(s): {', '.join(unknown)}; known: {', '.join(ROW_ORDER)}")
        return 2
    if _option(rest, "--loops") is None:
        rest += ["--loops", "uvloop,ferroloop" if app.profile else DEFAULT_LOOPS]
    errors = ensure_programs(set(rows), build=not app.no_build, install=not app.no_install)
    if errors:
        for e in errors:
            print(f"error: {e}")
        return 2
    quick = "--quick" in rest
    with contextlib.ExitStack() as stack:
        if set(rows) & NEEDS_NGINX:
            stack.enter_context(nginx_server())
        if app.profile:
            p = argparse.ArgumentParser()
            p.add_argument("--quick", action="store_true")
            p.add_argument("--loops")
            p.add_argument("--rows")
            p.add_argument("--json")
            p.add_argument("--markdown")
            args = p.parse_args(rest)
            args.rates, args.profile_dir = app.rates, app.profile_dir
            if app.duration is None and not quick:
                os.environ[ENV_DURATION] = str(DURATION_FULL)
            return run_profiles(args, rows, (args.loops or "").split(","))
        warmup, duration = window(quick)
        return main(
            rest,
            description=DESCRIPTION,
            epilogue=cpu_epilogue,
            default_rounds=(ROUNDS_FULL, ROUNDS_QUICK),
            meta_extra={
                "apps": {
                    "warmup_s": warmup,
                    "duration_s": duration,
                    "connections": CONNS,
                    "malloc_env": {k: os.environ[k] for k in MALLOC_TUNING if k in os.environ},
                    "wrk": _version(["wrk", "-v"]),
                    "nginx": _version([nginx_bin() or "nginx", "-v"]),
                    "packages": {
                        d: _harness.package_version(d)
                        for d in (
                            "aiohttp",
                            "uvicorn",
                            "httptools",
                            "starlette",
                            "fastapi",
                            "sanic",
                            "websockets",
                            "httpx",
                            "redis",
                            "hiredis",
                            "asyncpg",
                        )
                    },
                }
            },
        )


def _version(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (proc.stdout + proc.stderr).strip().splitlines()
    return text[0][:80] if text else None


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
