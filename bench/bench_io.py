"""ferroloop I/O rows that need no external load generator: subprocess spawn+wait, TLS echo.

    python bench/bench_io.py [--quick] [--loops asyncio,uvloop,rloop,ferroloop]

Same harness as bench_core.py (rounds interleaved, one fresh process per measurement).
The TLS row runs client and server on the loop under test (both sides cost loop time), with a
self-signed certificate made once per worker by the openssl command-line tool.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import tempfile
from time import perf_counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import main, measure, row  # noqa: E402


@row("spawn", "subprocess spawn+wait (/bin/true)", "procs/s")
def bench_spawn(loop: asyncio.AbstractEventLoop, quick: bool) -> float:
    """create_subprocess_exec('/bin/true') then wait(), 8 at a time."""

    async def batch(n: int) -> float:
        t0 = perf_counter()
        for _ in range(n // 8):
            procs = [await asyncio.create_subprocess_exec("/bin/true") for _ in range(8)]
            for p in procs:
                await p.wait()
        return perf_counter() - t0

    return measure(loop, batch, 64 if quick else 200, quick, warmup_n=8).rate


def _tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    d = tempfile.mkdtemp(prefix="ferroloop-bench-tls-")
    key, cert = os.path.join(d, "key.pem"), os.path.join(d, "cert.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", key, "-out", cert, "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cert)
    return server, client


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


TLS_CONNS = 8
TLS_SIZE = 1024


@row("tls_echo", f"TLS echo {TLS_SIZE} B x{TLS_CONNS} (client on the same loop)", "rt/s")
def bench_tls_echo(loop: asyncio.AbstractEventLoop, quick: bool) -> float:
    """Round trips of 1 KiB over TLS, 8 connections, server and clients on the loop."""
    server_ctx, client_ctx = _tls_contexts()
    payload = b"x" * TLS_SIZE
    state: dict[str, object] = {}

    async def setup() -> None:
        srv = await loop.create_server(_Echo, "127.0.0.1", 0, ssl=server_ctx)
        port = srv.sockets[0].getsockname()[1]
        conns = [
            await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
            )
            for _ in range(TLS_CONNS)
        ]
        state["srv"], state["conns"] = srv, conns

    loop.run_until_complete(setup())

    async def batch(n: int) -> float:
        conns = state["conns"]
        per = max(1, n // TLS_CONNS)

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for _ in range(per):
                writer.write(payload)
                await reader.readexactly(TLS_SIZE)

        t0 = perf_counter()
        await asyncio.gather(*(client(r, w) for r, w in conns))  # type: ignore[union-attr]
        return perf_counter() - t0

    return measure(loop, batch, 800 if quick else 4000, quick).rate


if __name__ == "__main__":
    sys.exit(main(description=__doc__.splitlines()[0]))
