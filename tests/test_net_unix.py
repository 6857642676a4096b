"""create_unix_server / create_unix_connection: paths, sock=, abstract namespace.

Every scenario runs on asyncio's loop (the reference) and on ferroloop.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import pathlib
import shutil
import socket
import sys
import tempfile
import uuid
import warnings
from collections.abc import Iterator

import pytest

pytestmark = [
    pytest.mark.timeout(10),
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

TIMEOUT = 5.0

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="abstract namespace is Linux-only"
)


def run(loop: asyncio.AbstractEventLoop, coro, timeout: float = TIMEOUT):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


@pytest.fixture(scope="module", autouse=True)
def _frozen_heap() -> Iterator[None]:
    # Objects from before this module are moved out of the collector's sight so that the
    # per-test gc.collect() below stays cheap. Garbage left by other modules is collected
    # first, silently: it is not this module's leak.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    # Torn down after the loop fixture: unclosed sockets/transports surface here as errors.
    yield
    gc.collect()


class Closer:
    """Closes sockets, transports and servers at the end of a test, whatever happened."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: list = []

    def __call__(self, obj):
        self.items.append(obj)
        return obj

    def close_all(self) -> None:
        for obj in reversed(self.items):
            if isinstance(obj, socket.socket):
                obj.close()
            elif hasattr(obj, "abort"):
                # Not after a completed flush-on-close: asyncio's abort() would then fail.
                if not obj.is_closing() or obj.get_write_buffer_size():
                    obj.abort()
            elif hasattr(obj, "close"):
                obj.close()
        if not self.loop.is_closed() and not self.loop.is_running():
            self.loop.run_until_complete(_settle())


async def _settle(rounds: int = 5) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


@pytest.fixture
def closer(loop) -> Iterator[Closer]:
    c = Closer(loop)
    yield c
    c.close_all()


@pytest.fixture
def sock_path() -> Iterator[str]:
    # AF_UNIX paths are limited to ~108 bytes: keep them short.
    d = tempfile.mkdtemp(prefix="fl")
    yield os.path.join(d, "s")
    shutil.rmtree(d, ignore_errors=True)


def _abstract_name() -> str:
    return f"\0ferroloop-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"


class Recorder(asyncio.Protocol):
    def __init__(self, loop) -> None:
        self.loop = loop
        self.transport = None
        self.events: list[str] = []
        self.data = bytearray()
        self.made = loop.create_future()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self._waiters: list[asyncio.Future] = []

    def _wake(self) -> None:
        for w in self._waiters:
            if not w.done():
                w.set_result(None)
        self._waiters.clear()

    async def wait_for_bytes(self, n: int) -> bytes:
        while len(self.data) < n and not self.lost.done():
            w = self.loop.create_future()
            self._waiters.append(w)
            await w
        assert len(self.data) >= n, (len(self.data), n, self.events)
        return bytes(self.data)

    def connection_made(self, transport) -> None:
        self.events.append("made")
        self.transport = transport
        self.made.set_result(transport)

    def data_received(self, data) -> None:
        self.events.append("data")
        self.data += data
        self._wake()

    def eof_received(self):
        self.events.append("eof")
        self.eof.set_result(None)
        self._wake()

    def connection_lost(self, exc) -> None:
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)
        self._wake()


class ServerSide:
    def __init__(self, loop) -> None:
        self.loop = loop
        self.protocols: list[Recorder] = []
        self._new = asyncio.Queue()

    def __call__(self) -> Recorder:
        proto = Recorder(self.loop)
        self.protocols.append(proto)
        self._new.put_nowait(proto)
        return proto

    async def next_connection(self) -> Recorder:
        proto = await self._new.get()
        await proto.made
        return proto


async def _exchange(client: Recorder, server: Recorder) -> None:
    client.transport.write(b"to server")
    assert await server.wait_for_bytes(9) == b"to server"
    server.transport.write(b"to client")
    assert await client.wait_for_bytes(9) == b"to client"


# ---------------------------------------------------------------- paths


def test_unix_server_and_connection_by_path(loop, closer, sock_path):
    factory = ServerSide(loop)

    async def main():
        server = closer(await loop.create_unix_server(factory, sock_path))
        assert server.is_serving() is True
        assert server.get_loop() is loop
        assert len(server.sockets) == 1
        assert server.sockets[0].family == socket.AF_UNIX
        assert server.sockets[0].getsockname() == sock_path
        assert os.path.exists(sock_path)
        tr, client = await loop.create_unix_connection(lambda: Recorder(loop), sock_path)
        closer(tr)
        assert client.events == ["made"]
        assert tr.get_extra_info("socket").family == socket.AF_UNIX
        assert tr.get_extra_info("peername") == sock_path
        assert tr.get_extra_info("sockname") == tr.get_extra_info("socket").getsockname()
        server_proto = await factory.next_connection()
        assert server_proto.transport.get_extra_info("sockname") == sock_path
        await _exchange(client, server_proto)
        tr.close()
        await server_proto.eof
        assert await server_proto.lost is None
        assert await client.lost is None

    run(loop, main())


def test_unix_paths_may_be_path_like(loop, closer, sock_path):
    factory = ServerSide(loop)
    path = pathlib.Path(sock_path)

    async def main():
        server = closer(await loop.create_unix_server(factory, path))
        assert server.sockets[0].getsockname() == sock_path
        tr, client = await loop.create_unix_connection(lambda: Recorder(loop), path)
        closer(tr)
        await _exchange(client, await factory.next_connection())

    run(loop, main())


def test_unix_server_replaces_a_stale_socket_file(loop, closer, sock_path):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()  # the file stays behind
    assert os.path.exists(sock_path)
    factory = ServerSide(loop)

    async def main():
        server = closer(await loop.create_unix_server(factory, sock_path))
        tr, client = await loop.create_unix_connection(lambda: Recorder(loop), sock_path)
        closer(tr)
        await _exchange(client, await factory.next_connection())
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_unix_server_refuses_to_replace_a_regular_file(loop, closer, sock_path):
    with open(sock_path, "w") as f:
        f.write("not a socket")

    with pytest.raises(OSError) as info:
        closer(run(loop, loop.create_unix_server(lambda: Recorder(loop), sock_path)))
    assert info.value.errno == errno.EADDRINUSE
    assert str(info.value) == f"[Errno {errno.EADDRINUSE}] Address {sock_path!r} is already in use"
    with open(sock_path) as f:
        assert f.read() == "not a socket"


def test_unix_server_path_in_use_by_a_live_server(loop, closer, sock_path):
    async def main():
        closer(await loop.create_unix_server(lambda: Recorder(loop), sock_path))
        # A live server's socket file counts as stale too (asyncio removes any socket file).
        second = closer(await loop.create_unix_server(lambda: Recorder(loop), sock_path))
        assert second.sockets[0].getsockname() == sock_path

    run(loop, main())


def test_unix_server_close_and_socket_file(loop, closer, sock_path):
    async def main():
        server = closer(await loop.create_unix_server(lambda: Recorder(loop), sock_path))
        server.close()
        await server.wait_closed()
        assert server.is_serving() is False
        assert server.sockets == ()
        # Python 3.13 removes the socket file on close; earlier versions leave it.
        assert os.path.exists(sock_path) == (sys.version_info < (3, 13))
        with pytest.raises(ConnectionRefusedError):
            await loop.create_unix_connection(lambda: Recorder(loop), sock_path)

    run(loop, main())


def test_unix_connection_to_missing_path(loop, closer, sock_path):
    with pytest.raises(FileNotFoundError):
        run(loop, loop.create_unix_connection(lambda: Recorder(loop), sock_path))


def test_unix_connection_refused_by_stale_socket_file(loop, closer, sock_path):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()
    with pytest.raises(ConnectionRefusedError):
        run(loop, loop.create_unix_connection(lambda: Recorder(loop), sock_path))


# ---------------------------------------------------------------- sock=


def test_unix_server_and_connection_with_sock(loop, closer, sock_path):
    factory = ServerSide(loop)
    lsock = closer(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    lsock.bind(sock_path)
    csock = closer(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))

    async def main():
        server = closer(await loop.create_unix_server(factory, sock=lsock))
        assert server.sockets[0].fileno() == lsock.fileno()
        csock.connect(sock_path)  # blocking connect to a listening socket: immediate
        tr, client = await loop.create_unix_connection(lambda: Recorder(loop), sock=csock)
        closer(tr)
        assert csock.gettimeout() == 0.0
        assert tr.get_extra_info("socket").fileno() == csock.fileno()
        await _exchange(client, await factory.next_connection())
        server.close()
        assert lsock.fileno() == -1
        tr.close()
        await client.lost
        assert csock.fileno() == -1

    run(loop, main())


def test_unix_server_start_serving_false(loop, closer, sock_path):
    factory = ServerSide(loop)

    async def main():
        server = closer(await loop.create_unix_server(factory, sock_path, start_serving=False))
        assert server.is_serving() is False
        await server.start_serving()
        assert server.is_serving() is True
        tr, client = await loop.create_unix_connection(lambda: Recorder(loop), sock_path)
        closer(tr)
        await _exchange(client, await factory.next_connection())

    run(loop, main())


def test_unix_serve_forever_cancelled(loop, closer, sock_path):
    async def main():
        server = closer(await loop.create_unix_server(lambda: Recorder(loop), sock_path))
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert server.is_serving() is False

    run(loop, main())


# ---------------------------------------------------------------- abstract namespace


@linux_only
def test_unix_abstract_namespace(loop, closer):
    name = _abstract_name()
    factory = ServerSide(loop)

    async def main():
        server = closer(await loop.create_unix_server(factory, name))
        assert server.sockets[0].getsockname() == name.encode()
        tr, client = await loop.create_unix_connection(lambda: Recorder(loop), name)
        closer(tr)
        assert tr.get_extra_info("peername") == name.encode()
        await _exchange(client, await factory.next_connection())
        server.close()
        await server.wait_closed()

    run(loop, main())


@linux_only
def test_unix_abstract_namespace_as_bytes(loop, closer):
    name = _abstract_name().encode()
    factory = ServerSide(loop)

    async def main():
        server = closer(await loop.create_unix_server(factory, name))
        assert server.sockets[0].getsockname() == name
        tr, client = await loop.create_unix_connection(lambda: Recorder(loop), name)
        closer(tr)
        await _exchange(client, await factory.next_connection())

    run(loop, main())


@linux_only
def test_unix_abstract_name_in_use(loop, closer):
    name = _abstract_name()

    async def main():
        closer(await loop.create_unix_server(lambda: Recorder(loop), name))
        with pytest.raises(OSError) as info:
            closer(await loop.create_unix_server(lambda: Recorder(loop), name))
        assert info.value.errno == errno.EADDRINUSE
        assert "is already in use" in str(info.value)

    run(loop, main())


# ---------------------------------------------------------------- argument checks


def _unix_sock(closer: Closer) -> socket.socket:
    return closer(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))


UNIX_CONNECTION_BAD_ARGS = [
    (
        "path-and-sock",
        lambda c, p: {"path": p, "sock": _unix_sock(c)},
        ValueError,
        "path and sock can not be specified at the same time",
    ),
    ("nothing", lambda c, p: {}, ValueError, "no path and sock were specified"),
    (
        "tcp-sock",
        lambda c, p: {"sock": c(socket.socket())},
        ValueError,
        "A UNIX Domain Stream Socket was expected, got",
    ),
    (
        "datagram-sock",
        lambda c, p: {"sock": c(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))},
        ValueError,
        "A UNIX Domain Stream Socket was expected, got",
    ),
    (
        "server-hostname-without-ssl",
        lambda c, p: {"path": p, "server_hostname": "x"},
        ValueError,
        "server_hostname is only meaningful with ssl",
    ),
    (
        "handshake-timeout-without-ssl",
        lambda c, p: {"path": p, "ssl_handshake_timeout": 1.0},
        ValueError,
        "ssl_handshake_timeout is only meaningful with ssl",
    ),
]


@pytest.mark.parametrize(
    "make_kwargs,exc_type,message",
    [case[1:] for case in UNIX_CONNECTION_BAD_ARGS],
    ids=[case[0] for case in UNIX_CONNECTION_BAD_ARGS],
)
def test_unix_connection_invalid_arguments(loop, closer, sock_path, make_kwargs, exc_type, message):
    kwargs = make_kwargs(closer, sock_path)
    with pytest.raises(exc_type, match=message):
        run(loop, loop.create_unix_connection(lambda: Recorder(loop), **kwargs))


UNIX_SERVER_BAD_ARGS = [
    (
        "path-and-sock",
        lambda c, p: {"path": p, "sock": _unix_sock(c)},
        ValueError,
        "path and sock can not be specified at the same time",
    ),
    ("nothing", lambda c, p: {}, ValueError, "path was not specified, and no sock specified"),
    (
        "tcp-sock",
        lambda c, p: {"sock": c(socket.socket())},
        ValueError,
        "A UNIX Domain Stream Socket was expected, got",
    ),
    (
        "ssl-true",
        lambda c, p: {"path": p, "ssl": True},
        TypeError,
        "ssl argument must be an SSLContext or None",
    ),
    (
        "handshake-timeout-without-ssl",
        lambda c, p: {"path": p, "ssl_handshake_timeout": 1.0},
        ValueError,
        "ssl_handshake_timeout is only meaningful with ssl",
    ),
]


@pytest.mark.parametrize(
    "make_kwargs,exc_type,message",
    [case[1:] for case in UNIX_SERVER_BAD_ARGS],
    ids=[case[0] for case in UNIX_SERVER_BAD_ARGS],
)
def test_unix_server_invalid_arguments(loop, closer, sock_path, make_kwargs, exc_type, message):
    kwargs = make_kwargs(closer, sock_path)
    with pytest.raises(exc_type, match=message):
        closer(run(loop, loop.create_unix_server(lambda: Recorder(loop), **kwargs)))
    assert not os.path.exists(sock_path)


# ---------------------------------------------------------------- connect_accepted_socket


def test_connect_accepted_unix_socket(loop, closer, sock_path):
    lsock = closer(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    lsock.bind(sock_path)
    lsock.listen(1)
    client = closer(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    client.settimeout(TIMEOUT)
    client.connect(sock_path)
    conn, _ = lsock.accept()
    closer(conn)

    async def main():
        tr, proto = await loop.connect_accepted_socket(lambda: Recorder(loop), conn)
        closer(tr)
        assert tr.get_extra_info("sockname") == sock_path
        client.sendall(b"over unix")
        assert await proto.wait_for_bytes(9) == b"over unix"
        tr.write(b"back")
        assert await loop.run_in_executor(None, client.recv, 4) == b"back"
        client.close()
        await proto.eof
        assert await proto.lost is None

    run(loop, main())
