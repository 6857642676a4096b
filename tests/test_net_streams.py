"""asyncio streams (pure Python, unchanged) running on top of the loop's transports.

open_connection / start_server / open_unix_connection / start_unix_server. Every scenario
runs on asyncio's loop (the reference) and on ferroloop, over TCP and Unix sockets.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest
from net_support import (  # noqa: F401
    NET_MARKS,
    Closer,
    MiB,
    closer_fixture,
    collect_garbage,
    frozen_heap,
    kind_fixture,
    refused_addr,
    run,
    tmpdir_short_fixture,
)

pytestmark = NET_MARKS


class Streams:
    """start_server + open_connection of the chosen kind; handler writers are tracked."""

    def __init__(self, closer: Closer, kind: str, tmpdir: str) -> None:
        self.closer = closer
        self.kind = kind
        self.path = os.path.join(tmpdir, "s")
        self.server = None
        self.addr = None

    async def serve(self, handler, *, small_buffers=False, **kwargs):
        async def wrapped(reader, writer):
            self.closer(writer)
            await handler(reader, writer)

        if self.kind == "tcp" and small_buffers:
            # Accepted sockets inherit the listener's small receive buffer.
            lsock = socket.socket()
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            lsock.bind(("127.0.0.1", 0))
            self.server = await asyncio.start_server(wrapped, sock=lsock, **kwargs)
            self.addr = self.server.sockets[0].getsockname()
        elif self.kind == "tcp":
            self.server = await asyncio.start_server(wrapped, "127.0.0.1", 0, **kwargs)
            self.addr = self.server.sockets[0].getsockname()
        else:
            self.server = await asyncio.start_unix_server(wrapped, self.path, **kwargs)
            self.addr = self.path
        self.closer(self.server)
        return self.server

    async def connect(self, **kwargs):
        if self.kind == "tcp":
            reader, writer = await asyncio.open_connection(*self.addr, **kwargs)
        else:
            reader, writer = await asyncio.open_unix_connection(self.path, **kwargs)
        self.closer(writer)
        return reader, writer


@pytest.fixture
def streams(closer, kind, tmpdir_short) -> Streams:
    return Streams(closer, kind, tmpdir_short)


# ---------------------------------------------------------------- reading


def test_echo_readline(loop, streams):
    async def echo(reader, writer):
        while line := await reader.readline():
            writer.write(line.upper())
            await writer.drain()
        writer.close()

    async def main():
        await streams.serve(echo)
        reader, writer = await streams.connect()
        for word in (b"alpha", b"beta", b"gamma"):
            writer.write(word + b"\n")
            assert await reader.readline() == word.upper() + b"\n"
        writer.write(b"no newline")
        writer.write_eof()
        assert await reader.readline() == b"NO NEWLINE"  # partial line at EOF
        assert await reader.readline() == b""
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()

    run(loop, main())


def test_readexactly_readuntil_read(loop, streams):
    async def handler(reader, writer):
        writer.write(b"HEAD" + b"key: value\r\n\r\n" + b"body-one|body-two|" + b"rest of it")
        await writer.drain()
        writer.close()

    async def main():
        await streams.serve(handler)
        reader, writer = await streams.connect()
        assert await reader.readexactly(4) == b"HEAD"
        assert await reader.readuntil(b"\r\n\r\n") == b"key: value\r\n\r\n"
        assert await reader.readuntil(b"|") == b"body-one|"
        assert await reader.readuntil(b"|") == b"body-two|"
        assert await reader.read(4) == b"rest"
        assert await reader.read(-1) == b" of it"
        assert await reader.read(-1) == b""
        assert await reader.read(10) == b""
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()

    run(loop, main())


def test_read_until_eof_large(loop, streams):
    data = os.urandom(4 * MiB)

    async def handler(reader, writer):
        for i in range(0, len(data), 100_000):
            writer.write(data[i : i + 100_000])
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        await streams.serve(handler)
        reader, writer = await streams.connect()
        got = await reader.read()
        writer.close()
        await writer.wait_closed()
        return got

    got = run(loop, main())
    assert len(got) == len(data)
    assert got == data


def test_incomplete_read_on_early_eof(loop, streams):
    async def handler(reader, writer):
        writer.write(b"abc")
        await writer.drain()
        writer.close()

    async def main():
        await streams.serve(handler)
        reader, writer = await streams.connect()
        with pytest.raises(asyncio.IncompleteReadError) as info:
            await reader.readexactly(10)
        assert info.value.partial == b"abc"
        assert info.value.expected == 10
        writer.close()
        await writer.wait_closed()

    run(loop, main())


def test_readuntil_incomplete_at_eof(loop, streams):
    async def handler(reader, writer):
        writer.write(b"no separator here")
        writer.close()

    async def main():
        await streams.serve(handler)
        reader, writer = await streams.connect()
        with pytest.raises(asyncio.IncompleteReadError) as info:
            await reader.readuntil(b"\n")
        assert info.value.partial == b"no separator here"
        assert info.value.expected is None
        writer.close()
        await writer.wait_closed()

    run(loop, main())


def test_stream_limit_overrun(loop, streams):
    async def handler(reader, writer):
        writer.write(b"x" * 100 + b"\n" + b"y" * 100 + b"\n")
        await writer.drain()
        writer.close()

    async def main():
        await streams.serve(handler)
        reader, writer = await streams.connect(limit=16)
        with pytest.raises(asyncio.LimitOverrunError):
            await reader.readuntil(b"\n")
        # readline turns the overrun into ValueError
        with pytest.raises(ValueError):
            await reader.readline()
        writer.close()
        await writer.wait_closed()

    run(loop, main())


# ---------------------------------------------------------------- writing


def test_drain_waits_for_a_slow_reader(loop, streams):
    chunk = os.urandom(256 * 1024)
    release = None

    async def slow_reader(reader, writer):
        await release.wait()
        got = 0
        h = hashlib.sha256()
        while True:
            data = await reader.read(64 * 1024)
            if not data:
                break
            got += len(data)
            h.update(data)
            await asyncio.sleep(0)
        writer.write(h.hexdigest().encode())
        await writer.drain()
        writer.close()

    async def main():
        nonlocal release
        release = asyncio.Event()
        await streams.serve(slow_reader, small_buffers=True)
        reader, writer = await streams.connect()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        writer.transport.set_write_buffer_limits(high=64 * 1024)
        expected = hashlib.sha256()
        for _ in range(16):
            writer.write(chunk)
            expected.update(chunk)
        drain = asyncio.ensure_future(writer.drain())
        await asyncio.sleep(0.05)
        assert not drain.done()  # nobody reads: drain is blocked by the high-water mark
        assert writer.transport.get_write_buffer_size() > 64 * 1024
        release.set()
        await drain
        assert writer.transport.get_write_buffer_size() <= 16 * 1024
        writer.write_eof()
        digest = await reader.read()
        assert digest == expected.hexdigest().encode()
        writer.close()
        await writer.wait_closed()

    run(loop, main())


def test_writer_api(loop, streams):
    async def handler(reader, writer):
        data = await reader.read()  # until the client's write_eof
        writer.write(b"got %d" % len(data))  # half-closed: the server can still answer
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await streams.serve(handler)
        assert server.is_serving()
        reader, writer = await streams.connect()
        assert writer.can_write_eof() is True
        assert writer.get_extra_info("peername") == streams.addr
        assert writer.get_extra_info("socket") is not None
        assert writer.get_extra_info("no-such-key", 7) == 7
        writer.writelines([b"a", b"bc", b"def"])
        writer.write_eof()
        assert await reader.read() == b"got 6"
        assert writer.is_closing() is False
        writer.close()
        assert writer.is_closing() is True
        await writer.wait_closed()
        await writer.wait_closed()  # again: still fine

    run(loop, main())


def test_close_with_pending_data_delivers_everything(loop, streams):
    data = os.urandom(4 * MiB)
    done = None

    async def handler(reader, writer):
        done.set_result(await reader.read())
        writer.close()

    async def main():
        nonlocal done
        done = loop.create_future()
        await streams.serve(handler)
        reader, writer = await streams.connect()
        writer.write(data)
        writer.close()  # no drain: the transport flushes before closing
        await writer.wait_closed()
        return await done

    got = run(loop, main())
    assert len(got) == len(data)
    assert got == data


def test_many_concurrent_clients(loop, streams):
    async def handler(reader, writer):
        n = int(await reader.readline())
        writer.write(b"%d\n" % (n * n))
        await writer.drain()
        writer.close()

    async def client(i: int) -> int:
        reader, writer = await streams.connect()
        writer.write(b"%d\n" % i)
        result = int(await reader.readline())
        writer.close()
        await writer.wait_closed()
        return result

    async def main():
        await streams.serve(handler)
        return await asyncio.gather(*(client(i) for i in range(30)))

    assert run(loop, main()) == [i * i for i in range(30)]


def test_server_async_with_and_serve_forever(loop, streams):
    async def handler(reader, writer):
        writer.write(b"hi")
        await writer.drain()
        writer.close()

    async def main():
        server = await streams.serve(handler, start_serving=False)
        async with server:
            task = asyncio.ensure_future(server.serve_forever())
            await asyncio.sleep(0)
            reader, writer = await streams.connect()
            assert await reader.read() == b"hi"
            writer.close()
            await writer.wait_closed()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert not server.is_serving()

    run(loop, main())


def test_open_connection_refused(loop, closer, kind, tmpdir_short):
    async def main():
        if kind == "tcp":
            await asyncio.open_connection(*refused_addr(closer))
        else:
            path = os.path.join(tmpdir_short, "s")
            stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stale.bind(path)
            stale.close()
            await asyncio.open_unix_connection(path)

    with pytest.raises(ConnectionRefusedError):
        run(loop, main())
