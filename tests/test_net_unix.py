"""create_unix_server / create_unix_connection: paths, sock=, abstract namespace.

Every scenario runs on asyncio's loop (the reference) and on ferroloop.
"""

from __future__ import annotations

import asyncio
import errno
import os
import pathlib
import socket
import sys
import uuid
from collections.abc import Iterator

import pytest
from net_support import (  # noqa: F401
    NET_MARKS,
    TIMEOUT,
    Closer,
    Recorder,
    ServerSide,
    closer_fixture,
    collect_garbage,
    frozen_heap,
    named_cases,
    run,
    short_tmpdir,
)

pytestmark = NET_MARKS

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="abstract namespace is Linux-only"
)


@pytest.fixture
def sock_path() -> Iterator[str]:
    with short_tmpdir() as d:
        yield os.path.join(d, "s")


def _abstract_name() -> str:
    return f"\0ferroloop-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"


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
        tr.close()  # from 3.12 on wait_closed() also waits for the connections to end
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
        gone = FileNotFoundError if sys.version_info >= (3, 13) else ConnectionRefusedError
        with pytest.raises(gone):
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
        tr.close()  # from 3.12 on wait_closed() also waits for the connections to end
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


# Rejected alike by create_unix_connection and create_unix_server.
PATH_AND_SOCK = (
    "path-and-sock",
    lambda c, p: {"path": p, "sock": _unix_sock(c)},
    ValueError,
    "path and sock can not be specified at the same time",
)
TCP_SOCK = (
    "tcp-sock",
    lambda c, p: {"sock": c(socket.socket())},
    ValueError,
    "A UNIX Domain Stream Socket was expected, got",
)
HANDSHAKE_TIMEOUT_WITHOUT_SSL = (
    "handshake-timeout-without-ssl",
    lambda c, p: {"path": p, "ssl_handshake_timeout": 1.0},
    ValueError,
    "ssl_handshake_timeout is only meaningful with ssl",
)

UNIX_CONNECTION_BAD_ARGS = [
    PATH_AND_SOCK,
    ("nothing", lambda c, p: {}, ValueError, "no path and sock were specified"),
    TCP_SOCK,
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
    HANDSHAKE_TIMEOUT_WITHOUT_SSL,
]


@pytest.mark.parametrize("make_kwargs,exc_type,message", named_cases(UNIX_CONNECTION_BAD_ARGS))
def test_unix_connection_invalid_arguments(loop, closer, sock_path, make_kwargs, exc_type, message):
    kwargs = make_kwargs(closer, sock_path)
    with pytest.raises(exc_type, match=message):
        run(loop, loop.create_unix_connection(lambda: Recorder(loop), **kwargs))


UNIX_SERVER_BAD_ARGS = [
    PATH_AND_SOCK,
    ("nothing", lambda c, p: {}, ValueError, "path was not specified, and no sock specified"),
    TCP_SOCK,
    (
        "ssl-true",
        lambda c, p: {"path": p, "ssl": True},
        TypeError,
        "ssl argument must be an SSLContext or None",
    ),
    HANDSHAKE_TIMEOUT_WITHOUT_SSL,
]


@pytest.mark.parametrize("make_kwargs,exc_type,message", named_cases(UNIX_SERVER_BAD_ARGS))
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
