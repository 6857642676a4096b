"""Soak test: mixed load on one event loop for a given time, sampling resources, failing on
growth.

    python scripts/soak.py --duration 600            # 10 minutes on ferroloop
    python scripts/soak.py --duration 60 --loop asyncio
    python scripts/soak.py --duration 600 --json soak.json

One process, one loop, serving and driving itself over loopback:

- TCP churn: workers connect to an echo server, send 64 bytes, read them back and close
  (``--tcp-rate`` connections per second in total, default enough for 1M in 10 minutes);
- TLS churn: a few workers do the same over TLS (a self-signed certificate made with the
  openssl command line);
- UDP: a worker sends datagrams to an echo endpoint and waits for each reply;
- subprocesses: ``/bin/true`` spawned and awaited, a few per second;
- timers: a thousand ``call_later`` at a time, half of them cancelled;
- the default executor: batches of small jobs;
- cancellations: tasks cancelled mid-``sleep``, ``wait_for`` timeouts, a ``TaskGroup`` with a
  failing child.

Every ``--sample`` seconds it records open file descriptors, RSS, the loop's lag (p99 over
the recent window, from ``loop.metrics()`` on ferroloop; measured with a probe timer on other
loops) and the operations done. It fails (exit status 1) when, between the first and the last
fifth of the run (the first minute is warm-up), RSS grew by more than ``--max-rss-growth`` MiB
or the number of file descriptors grew at all beyond a small slack; or when any worker
raised.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

PAYLOAD = b"x" * 64


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def make_tls_contexts(tmp: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key, cert = os.path.join(tmp, "key.pem"), os.path.join(tmp, "cert.pem")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", key, "-out", cert, "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cert)
    return server, client


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.waiter: asyncio.Future | None = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(data)


async def tls_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.deadline = 0.0
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []
        self.samples: list[dict[str, Any]] = []
        self.probe_lags: list[float] = []

    def running(self) -> bool:
        return time.monotonic() < self.deadline and len(self.errors) < 20

    def fail(self, what: str, exc: BaseException) -> None:
        self.errors.append(f"{what}: {exc!r}")

    # -- workers ---------------------------------------------------------------------------

    async def tcp_worker(self, port: int, rate: float) -> None:
        interval = 1.0 / rate
        next_at = time.monotonic()
        while self.running():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(PAYLOAD)
                if await reader.readexactly(len(PAYLOAD)) != PAYLOAD:
                    raise AssertionError("tcp echo mismatch")
                writer.close()
                await writer.wait_closed()
                self.counts["tcp_connections"] += 1
            except Exception as exc:
                self.fail("tcp", exc)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                next_at = time.monotonic()  # behind: do not try to catch up in a burst

    async def tls_worker(self, port: int, ctx: ssl.SSLContext) -> None:
        while self.running():
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
                )
                writer.write(PAYLOAD)
                if await reader.readexactly(len(PAYLOAD)) != PAYLOAD:
                    raise AssertionError("tls echo mismatch")
                writer.close()
                await writer.wait_closed()
                self.counts["tls_connections"] += 1
            except Exception as exc:
                self.fail("tls", exc)
            await asyncio.sleep(0.01)

    async def udp_worker(self, addr: Any) -> None:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(UdpClient, remote_addr=addr)
        try:
            while self.running():
                proto.waiter = loop.create_future()
                transport.sendto(PAYLOAD)
                try:
                    await asyncio.wait_for(proto.waiter, 1.0)
                    self.counts["udp_datagrams"] += 1
                except TimeoutError:
                    self.counts["udp_lost"] += 1  # loopback UDP may drop under load
                await asyncio.sleep(0.001)
        finally:
            transport.close()

    async def subprocess_worker(self) -> None:
        while self.running():
            try:
                proc = await asyncio.create_subprocess_exec("/bin/true")
                if await proc.wait() != 0:
                    raise AssertionError("subprocess exit status")
                self.counts["subprocesses"] += 1
            except Exception as exc:
                self.fail("subprocess", exc)
            await asyncio.sleep(0.2)

    async def timer_worker(self) -> None:
        loop = asyncio.get_running_loop()
        fired = 0

        def tick() -> None:
            nonlocal fired
            fired += 1

        while self.running():
            handles = [loop.call_later(random.uniform(0, 0.05), tick) for _ in range(1000)]
            for h in handles[::2]:
                h.cancel()
            await asyncio.sleep(0.1)
            self.counts["timers"] += len(handles)
        self.counts["timers_fired"] += fired

    async def executor_worker(self) -> None:
        loop = asyncio.get_running_loop()
        while self.running():
            results = await asyncio.gather(
                *(loop.run_in_executor(None, pow, i, 2) for i in range(64))
            )
            if results[-1] != 63 * 63:
                self.fail("executor", AssertionError(results[-1]))
            self.counts["executor_jobs"] += len(results)
            await asyncio.sleep(0.01)

    async def cancel_worker(self) -> None:
        async def sleeper() -> None:
            await asyncio.sleep(10)

        async def failing() -> None:
            await asyncio.sleep(0.001)
            raise ValueError("expected")

        while self.running():
            tasks = [asyncio.create_task(sleeper()) for _ in range(50)]
            await asyncio.sleep(0.005)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await asyncio.wait_for(sleeper(), 0.002)
            except TimeoutError:
                pass
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(sleeper())
                    tg.create_task(failing())
            except* ValueError:
                pass
            self.counts["cancellations"] += 52
            await asyncio.sleep(0.05)

    async def lag_probe(self) -> None:
        """Lag for loops without metrics(): how late a 10 ms sleep wakes up."""
        while self.running():
            t0 = time.monotonic()
            await asyncio.sleep(0.01)
            self.probe_lags.append(max(0.0, time.monotonic() - t0 - 0.01))
            if len(self.probe_lags) > 2000:
                del self.probe_lags[:1000]

    async def sampler(self, start: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            metrics = loop.metrics() if hasattr(loop, "metrics") else None
            if metrics is not None and metrics.get("lag_p99") is not None:
                lag_p99 = metrics["lag_p99"]
            elif self.probe_lags:
                lag_p99 = statistics.quantiles(self.probe_lags, n=100)[98]
            else:
                lag_p99 = None
            self.samples.append(
                {
                    "t": round(time.monotonic() - start, 1),
                    "rss_mib": round(rss_mib(), 1),
                    "fds": open_fds(),
                    "lag_p99_ms": None if lag_p99 is None else round(lag_p99 * 1000, 3),
                    **dict(self.counts),
                }
            )
            if self.args.verbose:
                print(json.dumps(self.samples[-1]), flush=True)
            if not self.running():
                return
            await asyncio.sleep(min(self.args.sample, max(0.0, self.deadline - time.monotonic())))

    # -- main ------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if hasattr(loop, "set_metrics_timing"):
            loop.set_metrics_timing(True)
        tmp = tempfile.mkdtemp(prefix="soak")
        try:
            server_ctx, client_ctx = make_tls_contexts(tmp)
            tcp = await loop.create_server(EchoProtocol, "127.0.0.1", 0, backlog=1024)
            tls = await asyncio.start_server(tls_echo, "127.0.0.1", 0, ssl=server_ctx)
            udp, _ = await loop.create_datagram_endpoint(UdpEcho, local_addr=("127.0.0.1", 0))
            tcp_port = tcp.sockets[0].getsockname()[1]
            tls_port = tls.sockets[0].getsockname()[1]
            start = time.monotonic()
            self.deadline = start + self.args.duration
            workers = self.args.tcp_workers
            per_worker = self.args.tcp_rate / workers
            jobs = [self.tcp_worker(tcp_port, per_worker) for _ in range(workers)]
            jobs += [self.tls_worker(tls_port, client_ctx) for _ in range(2)]
            jobs += [
                self.udp_worker(udp.get_extra_info("sockname")),
                self.subprocess_worker(),
                self.timer_worker(),
                self.executor_worker(),
                self.cancel_worker(),
                self.lag_probe(),
                self.sampler(start),
            ]
            results = await asyncio.gather(*jobs, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    self.fail("worker", r)
            tcp.close()
            tls.close()
            udp.close()
            await tcp.wait_closed()
            await tls.wait_closed()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def verdict(self) -> tuple[bool, dict[str, Any]]:
        samples = self.samples
        n = len(samples)
        warm = [s for s in samples if s["t"] >= min(60.0, self.args.duration / 5)] or samples
        fifth = max(1, len(warm) // 5)
        first, last = warm[:fifth], warm[-fifth:]
        rss_first = statistics.mean(s["rss_mib"] for s in first)
        rss_last = statistics.mean(s["rss_mib"] for s in last)
        fds_first = max(s["fds"] for s in first)
        fds_last = max(s["fds"] for s in last)
        lags = [s["lag_p99_ms"] for s in samples if s["lag_p99_ms"] is not None]
        summary = {
            "loop": self.args.loop,
            "duration_s": self.args.duration,
            "samples": n,
            "totals": dict(self.counts),
            "rss_mib_first": round(rss_first, 1),
            "rss_mib_last": round(rss_last, 1),
            "rss_growth_mib": round(rss_last - rss_first, 1),
            "fds_first": fds_first,
            "fds_last": fds_last,
            "lag_p99_ms_median": round(statistics.median(lags), 3) if lags else None,
            "lag_p99_ms_max": max(lags) if lags else None,
            "errors": self.errors[:20],
            "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
        }
        ok = (
            not self.errors
            and rss_last - rss_first <= self.args.max_rss_growth
            and fds_last <= fds_first + self.args.fd_slack
        )
        return ok, summary


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "ferroloop":
        import ferroloop

        return ferroloop.new_event_loop()
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--loop", default="ferroloop", choices=["ferroloop", "asyncio", "uvloop"])
    parser.add_argument(
        "--tcp-rate", type=float, default=1700.0, help="TCP connections per second in total"
    )
    parser.add_argument("--tcp-workers", type=int, default=32)
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--max-rss-growth", type=float, default=16.0, help="MiB")
    parser.add_argument("--fd-slack", type=int, default=8)
    parser.add_argument("--json", help="write the samples and the summary here")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every sample")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))

    soak = Soak(args)
    loop = new_loop(args.loop)
    try:
        loop.run_until_complete(soak.run())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()
    ok, summary = soak.verdict()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "samples": soak.samples}, f, indent=1)
    print(json.dumps(summary, indent=1))
    print("soak: PASS" if ok else "soak: FAIL", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
