"""Fork safety: ``os.fork()`` while a loop runs, in a process whose loop has already resolved
host names and used its default executor (the resolver pool and the executor then have
threads, which a forked child does not get). The child starts a new loop and uses every
process-wide facility: name resolution, the default executor, a subprocess, and a TLS
connection (to a server on the parent's loop, which keeps running and serving meanwhile).
Pre-fork servers resolve in the master and serve in the children; this is that shape.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys

import pytest


def _contexts(certs):
    cert, key = certs
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cert)
    return server, client


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _child_work(port: int, client_ctx: ssl.SSLContext) -> dict:
    loop = asyncio.get_running_loop()
    out: dict = {"loop": type(loop).__module__}
    infos = await asyncio.wait_for(loop.getaddrinfo("localhost", 80), 5)
    out["resolved"] = sorted({info[4][0] for info in infos})
    out["executor"] = await asyncio.wait_for(loop.run_in_executor(None, sum, [1, 2, 3]), 5)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "print('from the grandchild')", stdout=subprocess.PIPE
    )
    stdout, _ = await asyncio.wait_for(proc.communicate(), 10)
    out["subprocess"] = [stdout.decode().strip(), proc.returncode]
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("localhost", port, ssl=client_ctx), 5
    )
    writer.write(b"hello over tls")
    out["tls"] = (await asyncio.wait_for(reader.readexactly(14), 5)).decode()
    writer.close()
    await writer.wait_closed()
    return out


def _run_child(loop_factory, port: int, client_ctx: ssl.SSLContext, wfd: int) -> None:
    """In the forked child: never returns (os._exit)."""
    code = 1
    try:
        lp = loop_factory()
        try:
            result = lp.run_until_complete(_child_work(port, client_ctx))
        finally:
            lp.close()
        os.write(wfd, json.dumps(result).encode())
        code = 0
    except BaseException as exc:  # report anything, then leave without running pytest's code
        try:
            os.write(wfd, json.dumps({"error": repr(exc)}).encode())
        except BaseException:
            pass
    finally:
        os._exit(code)


@pytest.mark.timeout(60)
def test_fork_while_the_loop_runs(loop, loop_factory, certs):
    server_ctx, client_ctx = _contexts(certs)

    async def main() -> tuple[int, dict]:
        # Before the fork: a name resolved, the default executor used, a TLS server and an
        # open TLS connection on this loop.
        await loop.getaddrinfo("localhost", 80)
        await loop.run_in_executor(None, sum, [1])
        server = await asyncio.start_server(_echo, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("localhost", port, ssl=client_ctx)
        writer.write(b"before")
        assert await reader.readexactly(6) == b"before"

        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            _run_child(loop_factory, port, client_ctx, wfd)
        os.close(wfd)
        # The parent keeps serving (the child's TLS connection lands here) while a thread
        # waits for the child.
        _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
        with os.fdopen(rfd, "rb") as f:
            report = json.loads(f.read() or b"{}")
        # The parent's connection still works after the fork.
        writer.write(b"after")
        assert await reader.readexactly(5) == b"after"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return os.waitstatus_to_exitcode(status), report

    code, report = loop.run_until_complete(main())
    assert code == 0, report
    assert report["loop"] == type(loop).__module__
    assert "127.0.0.1" in report["resolved"]
    assert report["executor"] == 6
    assert report["subprocess"] == ["from the grandchild", 0]
    assert report["tls"] == "hello over tls"
