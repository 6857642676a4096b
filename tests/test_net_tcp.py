"""create_connection, create_server, Server and connect_accepted_socket over TCP.

Every scenario runs on asyncio's loop (the reference) and on ferroloop. Only 127.0.0.0/8 and
::1 are used.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import gc
import socket
import warnings

import pytest
from net_support import (  # noqa: F401
    NET_MARKS,
    TIMEOUT,
    Closer,
    Recorder,
    ServerSide,
    accept,
    blocking_client,
    closer_fixture,
    collect_garbage,
    frozen_heap,
    in_thread,
    listener,
    named_cases,
    needs_ipv6,
    recv_exactly,
    refused_addr,
    run,
    socket_pair,
    ssl_socket,
)

pytestmark = NET_MARKS


# ---------------------------------------------------------------- create_connection


def test_create_connection_host_port(loop, closer):
    lsock = listener(closer)
    host, port = lsock.getsockname()

    async def main():
        tr, proto = await loop.create_connection(lambda: Recorder(loop), host, port)
        closer(tr)
        assert isinstance(proto, Recorder)
        assert proto.transport is tr
        assert proto.events == ["made"]  # connection_made ran before the coroutine returned
        assert tr.get_extra_info("peername") == (host, port)
        assert tr.get_extra_info("sockname")[0] == "127.0.0.1"
        peer = accept(closer, lsock)
        assert peer.getpeername() == tr.get_extra_info("sockname")
        tr.write(b"ping")
        assert await in_thread(recv_exactly, peer, 4) == b"ping"
        peer.sendall(b"pong")
        assert await proto.wait_for_bytes(4) == b"pong"
        tr.close()
        assert await proto.lost is None

    run(loop, main())


def test_create_connection_by_name_localhost(loop, closer):
    lsock = listener(closer)
    port = lsock.getsockname()[1]

    async def main():
        tr, proto = await loop.create_connection(lambda: Recorder(loop), "localhost", port)
        closer(tr)
        assert tr.get_extra_info("peername") == ("127.0.0.1", port)

    run(loop, main())


@needs_ipv6
def test_create_connection_ipv6(loop, closer):
    lsock = listener(closer, "::1", socket.AF_INET6)
    port = lsock.getsockname()[1]

    async def main():
        tr, proto = await loop.create_connection(lambda: Recorder(loop), "::1", port)
        closer(tr)
        assert tr.get_extra_info("socket").family == socket.AF_INET6
        assert tr.get_extra_info("peername")[:2] == ("::1", port)
        peer = accept(closer, lsock)
        peer.sendall(b"six")
        assert await proto.wait_for_bytes(3) == b"six"

    run(loop, main())


def test_create_connection_with_connected_sock(loop, closer):
    lsock = listener(closer)
    sock = blocking_client(closer, lsock.getsockname())  # blocking, already connected
    peer = accept(closer, lsock)

    async def main():
        tr, proto = await loop.create_connection(lambda: Recorder(loop), sock=sock)
        closer(tr)
        assert sock.gettimeout() == 0.0  # the loop made it non-blocking
        assert tr.get_extra_info("socket").fileno() == sock.fileno()
        assert tr.get_extra_info("peername") == lsock.getsockname()
        tr.write(b"via sock=")
        assert await in_thread(recv_exactly, peer, 9) == b"via sock="
        tr.close()
        await proto.lost
        # The transport owned the socket: closing it closed the caller's socket object.
        assert sock.fileno() == -1

    run(loop, main())


def test_create_connection_local_addr(loop, closer):
    lsock = listener(closer)

    async def main():
        tr, proto = await loop.create_connection(
            lambda: Recorder(loop), *lsock.getsockname(), local_addr=("127.0.0.2", 0)
        )
        closer(tr)
        assert tr.get_extra_info("sockname")[0] == "127.0.0.2"
        peer = accept(closer, lsock)
        assert peer.getpeername() == tr.get_extra_info("sockname")

    run(loop, main())


def test_create_connection_local_addr_in_use(loop, closer):
    lsock = listener(closer)

    async def main():
        await loop.create_connection(
            lambda: Recorder(loop), *lsock.getsockname(), local_addr=lsock.getsockname()
        )

    with pytest.raises(OSError) as info:
        run(loop, main())
    assert info.value.errno == errno.EADDRINUSE
    assert "error while attempting to bind on address" in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"family": socket.AF_INET},
        {"proto": socket.IPPROTO_TCP},
        {"flags": socket.AI_NUMERICHOST},
        {"family": socket.AF_INET, "proto": socket.IPPROTO_TCP, "flags": socket.AI_NUMERICHOST},
        {"happy_eyeballs_delay": 0.05},
        {"happy_eyeballs_delay": 0.05, "interleave": 2},
        {"interleave": 1},
    ],
    ids=repr,
)
def test_create_connection_resolution_options(loop, closer, kwargs):
    lsock = listener(closer)
    host, port = lsock.getsockname()

    async def main():
        tr, proto = await loop.create_connection(lambda: Recorder(loop), host, port, **kwargs)
        closer(tr)
        assert tr.get_extra_info("peername") == (host, port)
        assert tr.get_extra_info("socket").family == socket.AF_INET
        peer = accept(closer, lsock)
        peer.sendall(b"k")
        assert await proto.wait_for_bytes(1) == b"k"

    run(loop, main())


def test_create_connection_family_filters_localhost(loop, closer):
    lsock = listener(closer)
    port = lsock.getsockname()[1]

    async def main():
        tr, proto = await loop.create_connection(
            lambda: Recorder(loop), "localhost", port, family=socket.AF_INET
        )
        closer(tr)
        assert tr.get_extra_info("socket").family == socket.AF_INET

    run(loop, main())


def test_create_connection_numerichost_flag_rejects_a_name(loop, closer):
    lsock = listener(closer)
    port = lsock.getsockname()[1]
    with pytest.raises(socket.gaierror) as info:
        run(
            loop,
            loop.create_connection(
                lambda: Recorder(loop), "localhost", port, flags=socket.AI_NUMERICHOST
            ),
        )
    assert info.value.errno == socket.EAI_NONAME


def test_create_connection_family_mismatch_is_a_gaierror(loop, closer):
    lsock = listener(closer)
    port = lsock.getsockname()[1]
    with pytest.raises(socket.gaierror):
        run(
            loop,
            loop.create_connection(
                lambda: Recorder(loop), "127.0.0.1", port, family=socket.AF_INET6
            ),
        )


@pytest.mark.parametrize(
    "kwargs", [{}, {"happy_eyeballs_delay": 0.05}, {"interleave": 1}], ids=repr
)
def test_create_connection_refused(loop, closer, kwargs):
    host, port = refused_addr(closer)
    made = []
    with pytest.raises(ConnectionRefusedError) as info:
        run(loop, loop.create_connection(lambda: made.append(1), host, port, **kwargs))
    assert info.value.errno == errno.ECONNREFUSED
    assert made == []  # the protocol factory is not called for a failed connection


@needs_ipv6
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"happy_eyeballs_delay": 0.05}, {"happy_eyeballs_delay": 0.05, "interleave": 2}],
    ids=repr,
)
def test_create_connection_falls_back_to_the_next_address(loop, closer, kwargs):
    # host=None resolves to the loopback addresses: ::1 first (refused), then 127.0.0.1.
    lsock = listener(closer)
    port = lsock.getsockname()[1]

    async def main():
        infos = await loop.getaddrinfo(None, port, type=socket.SOCK_STREAM)
        assert [i[0] for i in infos] == [socket.AF_INET6, socket.AF_INET]
        tr, proto = await loop.create_connection(lambda: Recorder(loop), None, port, **kwargs)
        closer(tr)
        assert tr.get_extra_info("peername") == ("127.0.0.1", port)
        peer = accept(closer, lsock)
        peer.sendall(b"v4")
        assert await proto.wait_for_bytes(2) == b"v4"

    run(loop, main())


@needs_ipv6
@pytest.mark.parametrize("kwargs", [{}, {"happy_eyeballs_delay": 0.05}], ids=repr)
def test_create_connection_every_address_refused(loop, closer, kwargs):
    host, port = refused_addr(closer)
    with pytest.raises(OSError) as info:
        run(loop, loop.create_connection(lambda: Recorder(loop), None, port, **kwargs))
    message = str(info.value)
    if message.startswith("Multiple exceptions: "):
        # Different messages per address: asyncio combines them.
        assert type(info.value) is OSError
        assert f"('::1', {port}, 0, 0)" in message
        assert f"('127.0.0.1', {port})" in message
    else:
        # Identical messages (the kernel refused synchronously): the first one is raised.
        assert isinstance(info.value, ConnectionRefusedError)


def test_create_connection_then_a_working_one(loop, closer):
    """A refused attempt leaves the loop in a good state for the next connection."""
    refused = refused_addr(closer)
    lsock = listener(closer)

    async def main():
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(lambda: Recorder(loop), *refused)
        tr, proto = await loop.create_connection(lambda: Recorder(loop), *lsock.getsockname())
        closer(tr)
        assert proto.events == ["made"]

    run(loop, main())


def _connected_pair(closer: Closer) -> socket.socket:
    return socket_pair(closer)[0]


def _udp_sock(closer: Closer) -> socket.socket:
    return closer(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))


def _timeouts_without_ssl(target) -> list:
    """ssl_handshake_timeout= and ssl_shutdown_timeout= without ssl=, next to target(closer)."""
    return [
        (
            "handshake-timeout-without-ssl",
            lambda c: {**target(c), "ssl_handshake_timeout": 1.0},
            ValueError,
            "ssl_handshake_timeout is only meaningful with ssl",
        ),
        (
            "shutdown-timeout-without-ssl",
            lambda c: {**target(c), "ssl_shutdown_timeout": 1.0},
            ValueError,
            "ssl_shutdown_timeout is only meaningful with ssl",
        ),
    ]


DATAGRAM_SOCK = (
    "datagram-sock",
    lambda c: {"sock": _udp_sock(c)},
    ValueError,
    "A Stream Socket was expected, got",
)
SSL_SOCKET = (
    "ssl-socket",
    lambda c: {"sock": ssl_socket(c)},
    TypeError,
    "Socket cannot be of type SSLSocket",
)

CREATE_CONNECTION_BAD_ARGS = [
    (
        "host-and-sock",
        lambda c: {"host": "127.0.0.1", "port": 1, "sock": _connected_pair(c)},
        ValueError,
        "host/port and sock can not be specified at the same time",
    ),
    (
        "port-and-sock",
        lambda c: {"port": 1, "sock": _connected_pair(c)},
        ValueError,
        "host/port and sock can not be specified at the same time",
    ),
    (
        "nothing",
        lambda c: {},
        ValueError,
        "host and port was not specified and no sock specified",
    ),
    *_timeouts_without_ssl(lambda c: {"host": "127.0.0.1", "port": 1}),
    (
        "server-hostname-without-ssl",
        lambda c: {"host": "127.0.0.1", "port": 1, "server_hostname": "x"},
        ValueError,
        "server_hostname is only meaningful with ssl",
    ),
    (
        "ssl-without-host",
        lambda c: {"sock": _connected_pair(c), "ssl": True},
        ValueError,
        "You must set server_hostname when using ssl without a host",
    ),
    DATAGRAM_SOCK,
    SSL_SOCKET,
]


@pytest.mark.parametrize("make_kwargs,exc_type,message", named_cases(CREATE_CONNECTION_BAD_ARGS))
def test_create_connection_invalid_arguments(loop, closer, make_kwargs, exc_type, message):
    kwargs = make_kwargs(closer)
    with pytest.raises(exc_type, match=message):
        run(loop, loop.create_connection(lambda: Recorder(loop), **kwargs))


# ---------------------------------------------------------------- create_server


def test_create_server_port_zero(loop, closer):
    factory = ServerSide(loop)

    async def main():
        server = closer(await loop.create_server(factory, "127.0.0.1", 0))
        assert server.get_loop() is loop
        assert server.is_serving() is True
        socks = server.sockets
        assert isinstance(socks, tuple)
        assert len(socks) == 1
        assert socks[0].family == socket.AF_INET
        assert socks[0].type == socket.SOCK_STREAM
        host, port = socks[0].getsockname()
        assert host == "127.0.0.1"
        assert port != 0
        client = blocking_client(closer, (host, port))
        proto = await factory.next_connection()
        assert proto.transport.get_extra_info("peername") == client.getsockname()
        assert proto.transport.get_extra_info("sockname") == (host, port)
        client.sendall(b"hello server")
        assert await proto.wait_for_bytes(12) == b"hello server"
        proto.transport.write(b"hello client")
        assert await in_thread(recv_exactly, client, 12) == b"hello client"
        client.close()
        await proto.eof
        assert await proto.lost is None
        assert proto.events == ["made", "data", "eof", "lost"]

    run(loop, main())


def test_create_server_by_name_localhost(loop, closer):
    async def main():
        server = closer(await loop.create_server(lambda: Recorder(loop), "localhost", 0))
        assert [s.getsockname()[0] for s in server.sockets] == ["127.0.0.1"]

    run(loop, main())


def test_create_server_several_hosts(loop, closer):
    factory = ServerSide(loop)

    async def main():
        server = closer(await loop.create_server(factory, ["127.0.0.1", "127.0.0.2"], 0))
        names = [s.getsockname() for s in server.sockets]
        assert sorted(h for h, _ in names) == ["127.0.0.1", "127.0.0.2"]
        assert all(port != 0 for _, port in names)
        for addr in names:
            client = blocking_client(closer, addr)
            proto = await factory.next_connection()
            assert proto.transport.get_extra_info("sockname") == addr
            client.sendall(b"x")
            await proto.wait_for_bytes(1)
        assert len(factory.protocols) == 2

    run(loop, main())


@needs_ipv6
def test_create_server_ipv4_and_ipv6(loop, closer):
    factory = ServerSide(loop)

    async def main():
        server = closer(await loop.create_server(factory, ["127.0.0.1", "::1"], 0))
        by_family = {s.family: s for s in server.sockets}
        assert set(by_family) == {socket.AF_INET, socket.AF_INET6}
        v6 = by_family[socket.AF_INET6]
        assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) != 0
        for s in server.sockets:
            blocking_client(closer, s.getsockname()[:2])
            await factory.next_connection()

    run(loop, main())


def test_create_server_duplicate_hosts_bind_once(loop, closer):
    async def main():
        server = closer(
            await loop.create_server(lambda: Recorder(loop), ["127.0.0.1", "127.0.0.1"], 0)
        )
        assert len(server.sockets) == 1

    run(loop, main())


def test_create_server_address_in_use(loop, closer):
    async def main():
        first = closer(await loop.create_server(lambda: Recorder(loop), "127.0.0.1", 0))
        port = first.sockets[0].getsockname()[1]
        with pytest.raises(OSError) as info:
            closer(await loop.create_server(lambda: Recorder(loop), "127.0.0.1", port))
        assert info.value.errno == errno.EADDRINUSE
        assert str(info.value).startswith(
            f"[Errno {errno.EADDRINUSE}] error while attempting to bind on address "
            f"('127.0.0.1', {port})"
        )

    run(loop, main())


def test_create_server_reuse_address(loop, closer):
    async def main():
        default = closer(await loop.create_server(lambda: Recorder(loop), "127.0.0.1", 0))
        off = closer(
            await loop.create_server(lambda: Recorder(loop), "127.0.0.1", 0, reuse_address=False)
        )
        on = closer(
            await loop.create_server(lambda: Recorder(loop), "127.0.0.1", 0, reuse_address=True)
        )
        opt = (socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert default.sockets[0].getsockopt(*opt) != 0  # on by default on POSIX
        assert off.sockets[0].getsockopt(*opt) == 0
        assert on.sockets[0].getsockopt(*opt) != 0

    run(loop, main())


def test_create_server_reuse_port(loop, closer):
    factory = ServerSide(loop)

    async def main():
        first = closer(await loop.create_server(factory, "127.0.0.1", 0, reuse_port=True))
        port = first.sockets[0].getsockname()[1]
        second = closer(await loop.create_server(factory, "127.0.0.1", port, reuse_port=True))
        opt = (socket.SOL_SOCKET, socket.SO_REUSEPORT)
        assert first.sockets[0].getsockopt(*opt) != 0
        assert second.sockets[0].getsockopt(*opt) != 0
        plain = closer(await loop.create_server(factory, "127.0.0.1", 0))
        assert plain.sockets[0].getsockopt(*opt) == 0
        blocking_client(closer, ("127.0.0.1", port))
        await factory.next_connection()

    run(loop, main())


def test_create_server_backlog(loop, closer):
    factory = ServerSide(loop)

    async def main():
        server = closer(await loop.create_server(factory, "127.0.0.1", 0, backlog=1))
        addr = server.sockets[0].getsockname()
        for _ in range(3):
            blocking_client(closer, addr)
            await factory.next_connection()
        assert len(factory.protocols) == 3

    run(loop, main())


def test_create_server_with_sock(loop, closer):
    factory = ServerSide(loop)
    sock = closer(socket.socket())
    sock.bind(("127.0.0.1", 0))  # bound, not listening yet: the server calls listen()

    async def main():
        server = closer(await loop.create_server(factory, sock=sock))
        assert len(server.sockets) == 1
        assert server.sockets[0].fileno() == sock.fileno()
        assert server.sockets[0].getsockname() == sock.getsockname()
        assert sock.gettimeout() == 0.0
        client = blocking_client(closer, sock.getsockname())
        proto = await factory.next_connection()
        client.sendall(b"s")
        await proto.wait_for_bytes(1)
        server.close()
        # The server owns its listening sockets: close() closed the caller's socket object.
        assert sock.fileno() == -1
        client.close()  # from 3.12 on wait_closed() also waits for the connections to end
        await server.wait_closed()

    run(loop, main())


def test_create_server_start_serving_false(loop, closer):
    factory = ServerSide(loop)

    async def main():
        server = closer(await loop.create_server(factory, "127.0.0.1", 0, start_serving=False))
        assert server.is_serving() is False
        assert len(server.sockets) == 1
        await asyncio.sleep(0.01)
        assert factory.protocols == []
        await server.start_serving()
        assert server.is_serving() is True
        await server.start_serving()  # a second call is harmless
        client = blocking_client(closer, server.sockets[0].getsockname())
        proto = await factory.next_connection()
        client.sendall(b"now")
        assert await proto.wait_for_bytes(3) == b"now"

    run(loop, main())


CREATE_SERVER_BAD_ARGS = [
    (
        "host-and-sock",
        lambda c: {"host": "127.0.0.1", "port": 0, "sock": c(socket.socket())},
        ValueError,
        "host/port and sock can not be specified at the same time",
    ),
    (
        "nothing",
        lambda c: {},
        ValueError,
        "Neither host/port nor sock were specified",
    ),
    (
        "ssl-true",
        lambda c: {"host": "127.0.0.1", "port": 0, "ssl": True},
        TypeError,
        "ssl argument must be an SSLContext or None",
    ),
    *_timeouts_without_ssl(lambda c: {"host": "127.0.0.1", "port": 0}),
    DATAGRAM_SOCK,
    SSL_SOCKET,
]


@pytest.mark.parametrize("make_kwargs,exc_type,message", named_cases(CREATE_SERVER_BAD_ARGS))
def test_create_server_invalid_arguments(loop, closer, make_kwargs, exc_type, message):
    kwargs = make_kwargs(closer)
    with pytest.raises(exc_type, match=message):
        run(loop, loop.create_server(lambda: Recorder(loop), **kwargs))


# ---------------------------------------------------------------- Server


def test_server_close_and_wait_closed(loop, closer):
    async def main():
        server = closer(await loop.create_server(lambda: Recorder(loop), "127.0.0.1", 0))
        addr = server.sockets[0].getsockname()
        server.close()
        assert server.is_serving() is False
        assert server.sockets == ()
        await server.wait_closed()
        server.close()  # idempotent
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            blocking_client(closer, addr)

    run(loop, main())


def test_server_close_keeps_accepted_connections(loop, closer):
    factory = ServerSide(loop)

    async def main():
        server = closer(await loop.create_server(factory, "127.0.0.1", 0))
        client = blocking_client(closer, server.sockets[0].getsockname())
        proto = await factory.next_connection()
        waiter = asyncio.ensure_future(server.wait_closed())
        await asyncio.sleep(0)
        server.close()
        await asyncio.sleep(0.02)
        # The accepted connection outlives the listening socket ...
        client.sendall(b"still here")
        assert await proto.wait_for_bytes(10) == b"still here"
        proto.transport.write(b"me too")
        assert await in_thread(recv_exactly, client, 6) == b"me too"
        # ... and wait_closed() (called before close()) waits for it.
        assert not waiter.done()
        proto.transport.close()
        await proto.lost
        await waiter

    run(loop, main())


def test_serve_forever_cancelled(loop, closer):
    async def main():
        server = closer(
            await loop.create_server(lambda: Recorder(loop), "127.0.0.1", 0, start_serving=False)
        )
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0.01)
        assert server.is_serving() is True
        assert not task.done()
        with pytest.raises(RuntimeError, match="is already being awaited on serve_forever"):
            await server.serve_forever()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert server.is_serving() is False
        assert server.sockets == ()
        with pytest.raises(RuntimeError, match="is closed"):
            await server.serve_forever()

    run(loop, main())


def test_server_close_ends_serve_forever(loop, closer):
    async def main():
        server = closer(await loop.create_server(lambda: Recorder(loop), "127.0.0.1", 0))
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0.01)
        server.close()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        assert server.is_serving() is False

    run(loop, main())


def test_server_async_with(loop, closer):
    factory = ServerSide(loop)

    async def main():
        server = closer(await loop.create_server(factory, "127.0.0.1", 0, start_serving=False))
        async with server as entered:
            assert entered is server
            await server.start_serving()
            blocking_client(closer, server.sockets[0].getsockname())
            proto = await factory.next_connection()
            proto.transport.close()
            await proto.lost
        assert server.is_serving() is False
        assert server.sockets == ()

    run(loop, main())


def test_server_handles_many_clients(loop, closer):
    async def handle_echo(reader, writer):
        writer.write(await reader.readexactly(5))
        await writer.drain()
        writer.close()

    async def main():
        server = closer(await asyncio.start_server(handle_echo, "127.0.0.1", 0))
        addr = server.sockets[0].getsockname()

        async def one(i: int) -> bytes:
            tr, proto = await loop.create_connection(lambda: Recorder(loop), *addr)
            closer(tr)
            tr.write(b"%05d" % i)
            await proto.eof
            return bytes(proto.data)

        results = await asyncio.gather(*(one(i) for i in range(20)))
        assert results == [b"%05d" % i for i in range(20)]

    run(loop, main())


def test_server_side_protocol_callbacks_once_each(loop, closer):
    factory = ServerSide(loop)

    async def main():
        server = closer(await loop.create_server(factory, "127.0.0.1", 0))
        client = blocking_client(closer, server.sockets[0].getsockname())
        proto = await factory.next_connection()
        client.sendall(b"abc")
        await proto.wait_for_bytes(3)
        client.shutdown(socket.SHUT_WR)
        await proto.lost
        await asyncio.sleep(0.01)
        assert proto.events.count("made") == 1
        assert proto.events.count("eof") == 1
        assert proto.events.count("lost") == 1
        assert proto.events[0] == "made" and proto.events[-1] == "lost"

    run(loop, main())


# ---------------------------------------------------------------- connect_accepted_socket


def test_connect_accepted_socket(loop, closer):
    lsock = listener(closer)
    client = blocking_client(closer, lsock.getsockname())
    conn = accept(closer, lsock)

    async def main():
        tr, proto = await loop.connect_accepted_socket(lambda: Recorder(loop), conn)
        closer(tr)
        assert proto.events == ["made"]
        assert conn.gettimeout() == 0.0
        assert tr.get_extra_info("peername") == client.getsockname()
        assert tr.get_extra_info("socket").fileno() == conn.fileno()
        client.sendall(b"accepted")
        assert await proto.wait_for_bytes(8) == b"accepted"
        tr.write(b"reply")
        assert await in_thread(recv_exactly, client, 5) == b"reply"
        client.close()
        await proto.eof
        assert await proto.lost is None

    run(loop, main())


def test_connect_accepted_socket_from_socketpair(loop, closer):
    a, b = socket_pair(closer)
    b.settimeout(TIMEOUT)

    async def main():
        tr, proto = await loop.connect_accepted_socket(lambda: Recorder(loop), a)
        closer(tr)
        tr.write(b"pair")
        assert await in_thread(recv_exactly, b, 4) == b"pair"

    run(loop, main())


CONNECT_ACCEPTED_SOCKET_BAD_ARGS = [
    DATAGRAM_SOCK,
    *_timeouts_without_ssl(lambda c: {"sock": _connected_pair(c)}),
]


@pytest.mark.parametrize(
    "make_kwargs,exc_type,message", named_cases(CONNECT_ACCEPTED_SOCKET_BAD_ARGS)
)
def test_connect_accepted_socket_invalid_arguments(loop, closer, make_kwargs, exc_type, message):
    kwargs = make_kwargs(closer)
    with pytest.raises(exc_type, match=message):
        run(loop, loop.connect_accepted_socket(lambda: Recorder(loop), **kwargs))


# ---------------------------------------------------------------- contextvars

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


class ContextSpy(asyncio.Protocol):
    """Records the value of ``request_id`` seen by every callback."""

    def __init__(self, loop, *, echo: bool = False) -> None:
        self.seen: dict[str, str] = {}
        self.echo = echo
        self.lost = loop.create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.seen["connection_made"] = request_id.get()

    def data_received(self, data) -> None:
        self.seen["data_received"] = request_id.get()
        if self.echo:
            self.transport.write(data)

    def eof_received(self):
        self.seen["eof_received"] = request_id.get()
        return None  # close from inside the read callback

    def connection_lost(self, exc) -> None:
        self.seen["connection_lost"] = request_id.get()
        self.lost.set_result(exc)


def test_protocol_callbacks_run_in_the_context_of_the_setup_call(loop, closer):
    """Callbacks see the contextvars of the task that created the connection or server."""
    servers: list[ContextSpy] = []

    def server_factory() -> ContextSpy:
        servers.append(ContextSpy(loop, echo=True))
        return servers[-1]

    async def start_server():
        request_id.set("server")
        return await loop.create_server(server_factory, "127.0.0.1", 0)

    async def client(addr):
        request_id.set("client")
        tr, proto = await loop.create_connection(lambda: ContextSpy(loop), *addr)
        closer(tr)
        request_id.set("changed later")  # does not affect the connection's callbacks
        tr.write(b"ping")
        await asyncio.sleep(0.05)
        tr.write_eof()  # the server closes on EOF; then the client sees EOF and closes
        await proto.lost
        return proto

    async def main():
        server = closer(await asyncio.create_task(start_server()))
        proto = await asyncio.create_task(client(server.sockets[0].getsockname()))
        await servers[0].lost
        return proto

    proto = run(loop, main())
    assert proto.seen == dict.fromkeys(
        ["connection_made", "data_received", "eof_received", "connection_lost"], "client"
    )
    assert servers[0].seen == dict.fromkeys(
        ["connection_made", "data_received", "eof_received", "connection_lost"], "server"
    )


def test_unclosed_transport_warns_when_collected(loop, closer):
    lsock = listener(closer)

    async def main():
        return await loop.create_connection(asyncio.Protocol, *lsock.getsockname())

    tr, proto = run(loop, main())
    accept(closer, lsock)
    loop.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del tr, proto
        gc.collect()
    messages = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert any(m.startswith("unclosed transport") for m in messages), messages
