"""Low-level socket coroutines: sock_recv*, sock_send*, sock_connect, sock_accept.

Every scenario runs on asyncio's loop (the reference) and on ferroloop.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from unittest import mock

import pytest
from net_support import (  # noqa: F401
    NET_MARKS,
    MiB,
    collect_garbage,
    frozen_heap,
    needs_ipv6,
    refused_addr,
    run,
    socket_pair,
    ssl_socket,
)

pytestmark = NET_MARKS


@pytest.fixture
def track() -> Iterator[Callable[[socket.socket], socket.socket]]:
    """Registers sockets to close at the end of the test, whatever happened."""
    socks: list[socket.socket] = []

    def add(sock: socket.socket) -> socket.socket:
        socks.append(sock)
        return sock

    yield add
    for sock in reversed(socks):
        sock.close()


def _pair(track) -> tuple[socket.socket, socket.socket]:
    a, b = socket_pair(track)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def _listener(track, host: str = "127.0.0.1", family: int = socket.AF_INET) -> socket.socket:
    lsock = track(socket.socket(family, socket.SOCK_STREAM))
    lsock.bind((host, 0))
    lsock.listen(8)
    lsock.setblocking(False)
    return lsock


def _udp(track, host: str = "127.0.0.1", family: int = socket.AF_INET) -> socket.socket:
    sock = track(socket.socket(family, socket.SOCK_DGRAM))
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


def _client(track, family: int = socket.AF_INET) -> socket.socket:
    sock = track(socket.socket(family, socket.SOCK_STREAM))
    sock.setblocking(False)
    return sock


async def _recv_exactly(loop, sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


# ---------------------------------------------------------------- sock_recv / sock_sendall


def test_sock_sendall_then_recv(loop, track):
    a, b = _pair(track)

    async def main():
        assert await loop.sock_sendall(a, b"hello world") is None
        data = await _recv_exactly(loop, b, 11)
        assert type(data) is bytes
        return data

    assert run(loop, main()) == b"hello world"


def test_sock_recv_waits_for_data(loop, track):
    a, b = _pair(track)

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(b, 100))
        await asyncio.sleep(0.02)
        assert not task.done()
        a.send(b"late")
        return await task

    assert run(loop, main()) == b"late"


def test_sock_recv_returns_at_most_n_bytes(loop, track):
    a, b = _pair(track)
    a.send(b"abcdef")

    async def main():
        first = await loop.sock_recv(b, 2)
        rest = await _recv_exactly(loop, b, 4)
        return first, rest

    assert run(loop, main()) == (b"ab", b"cdef")


def test_sock_recv_returns_empty_bytes_at_eof(loop, track):
    a, b = _pair(track)

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(b, 100))
        await asyncio.sleep(0.01)
        a.shutdown(socket.SHUT_WR)
        return await task

    assert run(loop, main()) == b""


def test_sock_recv_into(loop, track):
    a, b = _pair(track)
    buf = bytearray(16)

    async def main():
        task = asyncio.ensure_future(loop.sock_recv_into(b, buf))
        await asyncio.sleep(0.01)
        assert not task.done()
        a.send(b"abc")
        n = await task
        # A slice of a memoryview: only that window is written.
        a.send(b"WXYZ")
        view = memoryview(buf)[8:12]
        m = 0
        while m < 4:
            m += await loop.sock_recv_into(b, view[m:])
        return n, m

    assert run(loop, main()) == (3, 4)
    assert bytes(buf) == b"abc" + bytes(5) + b"WXYZ" + bytes(4)


def test_sock_recv_into_returns_zero_at_eof(loop, track):
    a, b = _pair(track)
    a.shutdown(socket.SHUT_WR)
    assert run(loop, loop.sock_recv_into(b, bytearray(8))) == 0


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview"])
def test_sock_sendall_accepts_bytes_like(loop, track, kind):
    a, b = _pair(track)
    payload = {
        "bytes": b"xyz",
        "bytearray": bytearray(b"xyz"),
        "memoryview": memoryview(b"_xyz_")[1:4],
    }[kind]

    async def main():
        await loop.sock_sendall(a, payload)
        return await _recv_exactly(loop, b, 3)

    assert run(loop, main()) == b"xyz"


def test_sock_sendall_large_payload_with_concurrent_reader(loop, track):
    """sock_sendall keeps going while the buffer is full and completes once all is sent."""
    a, b = _pair(track)
    data = os.urandom(4 * MiB)

    async def main():
        sender = asyncio.ensure_future(loop.sock_sendall(a, data))
        await asyncio.sleep(0.02)
        # Nobody reads yet: the kernel buffer is full and the send is pending.
        assert not sender.done()
        received = await _recv_exactly(loop, b, len(data))
        assert await sender is None
        return received

    assert run(loop, main()) == data


# ---------------------------------------------------------------- datagrams


def test_sock_sendto_and_recvfrom(loop, track):
    s1 = _udp(track)
    s2 = _udp(track)

    async def main():
        n = await loop.sock_sendto(s1, b"ping", s2.getsockname())
        data, addr = await loop.sock_recvfrom(s2, 100)
        return n, data, addr

    n, data, addr = run(loop, main())
    assert n == 4
    assert data == b"ping"
    assert addr == s1.getsockname()


def test_sock_recvfrom_waits_for_datagram(loop, track):
    s1 = _udp(track)
    s2 = _udp(track)

    async def main():
        task = asyncio.ensure_future(loop.sock_recvfrom(s2, 100))
        await asyncio.sleep(0.02)
        assert not task.done()
        s1.sendto(b"late", s2.getsockname())
        return await task

    assert run(loop, main()) == (b"late", s1.getsockname())


def test_sock_recvfrom_into(loop, track):
    s1 = _udp(track)
    s2 = _udp(track)
    buf = bytearray(10)

    async def main():
        task = asyncio.ensure_future(loop.sock_recvfrom_into(s2, buf))
        await asyncio.sleep(0.01)
        assert not task.done()
        s1.sendto(b"hello", s2.getsockname())
        return await task

    assert run(loop, main()) == (5, s1.getsockname())
    assert bytes(buf) == b"hello" + bytes(5)


def test_sock_recvfrom_into_with_nbytes_truncates_datagram(loop, track):
    s1 = _udp(track)
    s2 = _udp(track)
    buf = bytearray(10)

    async def main():
        await loop.sock_sendto(s1, b"0123456789", s2.getsockname())
        first = await loop.sock_recvfrom_into(s2, buf, 4)
        # The rest of that datagram is gone; the next one arrives whole.
        await loop.sock_sendto(s1, b"next", s2.getsockname())
        second = await loop.sock_recvfrom(s2, 100)
        return first, second

    first, second = run(loop, main())
    assert first == (4, s1.getsockname())
    assert bytes(buf[:4]) == b"0123"
    assert bytes(buf[4:]) == bytes(6)
    assert second == (b"next", s1.getsockname())


@needs_ipv6
def test_sock_sendto_recvfrom_ipv6(loop, track):
    s1 = _udp(track, "::1", socket.AF_INET6)
    s2 = _udp(track, "::1", socket.AF_INET6)

    async def main():
        await loop.sock_sendto(s1, b"six", s2.getsockname())
        return await loop.sock_recvfrom(s2, 100)

    assert run(loop, main()) == (b"six", s1.getsockname())


# ---------------------------------------------------------------- connect / accept


def test_sock_recv_and_sendall_while_socket_socket_is_patched(loop, track):
    # asyncssh's tun/tap tests replace socket.socket with a function and then pass real
    # sockets to sock_recv: asyncio's sock_* never look that name up.
    a, b = _pair(track)

    def not_a_type(*args, **kwargs):
        raise AssertionError("socket.socket called")

    async def main():
        with mock.patch("socket.socket", not_a_type):
            await loop.sock_sendall(a, b"hello")
            assert await _recv_exactly(loop, b, 5) == b"hello"
            await loop.sock_sendall(b, b"back")
            buf = bytearray(4)
            assert await loop.sock_recv_into(a, buf) == 4
            assert buf == b"back"

    run(loop, main())


def test_sock_connect_and_accept(loop, track):
    lsock = _listener(track)
    client = _client(track)

    async def main():
        accepted, connected = await asyncio.gather(
            loop.sock_accept(lsock), loop.sock_connect(client, lsock.getsockname())
        )
        assert connected is None
        conn, addr = accepted
        track(conn)
        assert isinstance(conn, socket.socket)
        assert conn.gettimeout() == 0.0  # the accepted socket is non-blocking
        assert addr == client.getsockname()
        assert conn.getpeername() == client.getsockname()
        assert client.getpeername() == lsock.getsockname()
        await loop.sock_sendall(client, b"to server")
        assert await _recv_exactly(loop, conn, 9) == b"to server"
        await loop.sock_sendall(conn, b"to client")
        assert await _recv_exactly(loop, client, 9) == b"to client"

    run(loop, main())


def test_sock_accept_waits_for_a_client(loop, track):
    lsock = _listener(track)
    client = _client(track)

    async def main():
        task = asyncio.ensure_future(loop.sock_accept(lsock))
        await asyncio.sleep(0.02)
        assert not task.done()
        await loop.sock_connect(client, lsock.getsockname())
        conn, addr = await task
        track(conn)
        assert addr == client.getsockname()

    run(loop, main())


def test_sock_connect_resolves_hostname(loop, track):
    lsock = _listener(track)
    client = _client(track)
    port = lsock.getsockname()[1]

    async def main():
        await loop.sock_connect(client, ("localhost", port))
        conn, _ = await loop.sock_accept(lsock)
        track(conn)
        return client.getpeername()

    assert run(loop, main()) == ("127.0.0.1", port)


@needs_ipv6
def test_sock_connect_ipv6(loop, track):
    lsock = _listener(track, "::1", socket.AF_INET6)
    client = _client(track, socket.AF_INET6)

    async def main():
        await loop.sock_connect(client, lsock.getsockname()[:2])
        conn, addr = await loop.sock_accept(lsock)
        track(conn)
        assert addr == client.getsockname()
        await loop.sock_sendall(conn, b"v6")
        return await _recv_exactly(loop, client, 2)

    assert run(loop, main()) == b"v6"


def test_sock_connect_unix(loop, track):
    with tempfile.TemporaryDirectory(prefix="fl") as d:
        path = os.path.join(d, "s")
        lsock = track(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        lsock.bind(path)
        lsock.listen(1)
        lsock.setblocking(False)
        client = _client(track, socket.AF_UNIX)

        async def main():
            await loop.sock_connect(client, path)
            conn, _ = await loop.sock_accept(lsock)
            track(conn)
            await loop.sock_sendall(client, b"unix")
            return await _recv_exactly(loop, conn, 4)

        assert run(loop, main()) == b"unix"


def test_sock_connect_refused(loop, track):
    addr = refused_addr(track)
    client = _client(track)

    with pytest.raises(ConnectionRefusedError) as info:
        run(loop, loop.sock_connect(client, addr))
    assert info.value.errno == errno.ECONNREFUSED


# ---------------------------------------------------------------- argument checks


def _call_sock_method(loop, name: str, sock: socket.socket, peer_addr):
    if name == "sock_recv":
        return loop.sock_recv(sock, 10)
    if name == "sock_recv_into":
        return loop.sock_recv_into(sock, bytearray(10))
    if name == "sock_recvfrom":
        return loop.sock_recvfrom(sock, 10)
    if name == "sock_recvfrom_into":
        return loop.sock_recvfrom_into(sock, bytearray(10))
    if name == "sock_sendall":
        return loop.sock_sendall(sock, b"x")
    if name == "sock_sendto":
        return loop.sock_sendto(sock, b"x", peer_addr)
    if name == "sock_connect":
        return loop.sock_connect(sock, peer_addr)
    if name == "sock_accept":
        return loop.sock_accept(sock)
    raise AssertionError(name)


SOCK_METHODS = [
    "sock_recv",
    "sock_recv_into",
    "sock_recvfrom",
    "sock_recvfrom_into",
    "sock_sendall",
    "sock_sendto",
    "sock_connect",
    "sock_accept",
]


@pytest.mark.parametrize("name", SOCK_METHODS)
def test_blocking_socket_is_refused_in_debug_mode(loop, track, name):
    loop.set_debug(True)
    lsock = _listener(track)
    sock = track(socket.socket())
    if name == "sock_accept":
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
    assert sock.gettimeout() is None  # blocking
    with pytest.raises(ValueError, match="the socket must be non-blocking"):
        run(loop, _call_sock_method(loop, name, sock, lsock.getsockname()))


@pytest.mark.parametrize("name", SOCK_METHODS)
def test_ssl_socket_is_refused(loop, track, name):
    lsock = _listener(track)
    ssl_sock = ssl_socket(track)
    with pytest.raises(TypeError, match="Socket cannot be of type SSLSocket"):
        run(loop, _call_sock_method(loop, name, ssl_sock, lsock.getsockname()))


# ---------------------------------------------------------------- cancellation


async def _cancel_while_pending(operation) -> None:
    """Runs operation as a task, cancels it while it waits and waits until it has ended."""
    task = asyncio.ensure_future(operation)
    await asyncio.sleep(0.01)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)


@pytest.mark.parametrize("method", ["sock_recv", "sock_recv_into"])
def test_cancelled_recv_leaves_socket_usable(loop, track, method):
    a, b = _pair(track)

    async def main():
        if method == "sock_recv":
            await _cancel_while_pending(loop.sock_recv(b, 100))
        else:
            await _cancel_while_pending(loop.sock_recv_into(b, bytearray(100)))
        # No reader left behind by the cancelled operation.
        assert loop.remove_reader(b) is False
        a.send(b"after cancel")
        return await _recv_exactly(loop, b, 12)

    assert run(loop, main()) == b"after cancel"


def test_recv_timeout_via_wait_for_leaves_socket_usable(loop, track):
    a, b = _pair(track)

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loop.sock_recv(b, 100), 0.02)
        a.send(b"ok")
        return await loop.sock_recv(b, 100)

    assert run(loop, main()) == b"ok"


def test_cancelled_accept_leaves_socket_usable(loop, track):
    lsock = _listener(track)
    client = _client(track)

    async def main():
        await _cancel_while_pending(loop.sock_accept(lsock))
        assert loop.remove_reader(lsock) is False
        await loop.sock_connect(client, lsock.getsockname())
        conn, addr = await loop.sock_accept(lsock)
        track(conn)
        assert addr == client.getsockname()
        await loop.sock_sendall(client, b"hi")
        return await _recv_exactly(loop, conn, 2)

    assert run(loop, main()) == b"hi"


def test_cancelled_recvfrom_leaves_socket_usable(loop, track):
    s1 = _udp(track)
    s2 = _udp(track)

    async def main():
        task = asyncio.ensure_future(loop.sock_recvfrom(s2, 100))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        s1.sendto(b"dgram", s2.getsockname())
        return await loop.sock_recvfrom(s2, 100)

    assert run(loop, main()) == (b"dgram", s1.getsockname())


def test_cancelled_sendall_stops_sending(loop, track):
    """A cancelled sock_sendall raises CancelledError and leaves no writer behind."""
    a, b = _pair(track)
    data = os.urandom(4 * MiB)

    async def main():
        await _cancel_while_pending(loop.sock_sendall(a, data))
        assert loop.remove_writer(a) is False

    run(loop, main())


@pytest.mark.parametrize("op", ["recv", "recv_into", "sendall", "accept"])
def test_socket_closed_under_a_waiting_operation(loop, op):
    """The user closes the socket while a sock_* call waits on it. The kernel drops a closed
    fd from epoll silently: asyncio's call waits for ever (here: still pending after 0.3 s).
    ferroloop notices before it blocks and fails the call with OSError(EBADF) (a deliberate
    difference, README)."""
    a, b = socket.socketpair()
    a.setblocking(False)
    if op == "accept":
        a.close()
        a = socket.socket()
        a.bind(("127.0.0.1", 0))
        a.listen()
        a.setblocking(False)

    async def main():
        if op == "recv":
            coro = loop.sock_recv(a, 10)
        elif op == "recv_into":
            coro = loop.sock_recv_into(a, bytearray(10))
        elif op == "sendall":
            coro = loop.sock_sendall(a, b"x" * 20_000_000)  # more than the buffers take
        else:
            coro = loop.sock_accept(a)
        task = asyncio.ensure_future(coro)
        await asyncio.sleep(0.05)
        assert not task.done()
        a.close()
        done, _ = await asyncio.wait([task], timeout=0.3)
        if not done:
            task.cancel()
            return "still waiting"
        exc = task.exception()
        return type(exc).__name__, getattr(exc, "errno", None)

    try:
        result = loop.run_until_complete(main())
    finally:
        b.close()
    if type(loop).__module__.startswith("ferroloop"):
        assert result == ("OSError", errno.EBADF)
    else:
        assert result == "still waiting"


def test_sock_connect_and_accept_still_work_after_the_native_wait(loop):
    """sock_connect/sock_accept wait through ferroloop's native waiter: the ordinary paths
    (accept waits for a client, a connection refused is reported) behave as asyncio's."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    lsock.setblocking(False)
    port = lsock.getsockname()[1]

    async def main():
        accepting = asyncio.ensure_future(loop.sock_accept(lsock))
        await asyncio.sleep(0.01)
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, ("127.0.0.1", port))
        conn, addr = await asyncio.wait_for(accepting, 5)
        assert addr == client.getsockname()
        assert conn.gettimeout() == 0
        await loop.sock_sendall(client, b"ping")
        assert await loop.sock_recv(conn, 4) == b"ping"
        conn.close()
        client.close()
        # A refused connection.
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        refused_port = probe.getsockname()[1]
        probe.close()
        s = socket.socket()
        s.setblocking(False)
        try:
            await loop.sock_connect(s, ("127.0.0.1", refused_port))
        except ConnectionRefusedError as exc:
            return exc.errno
        finally:
            s.close()

    try:
        assert loop.run_until_complete(main()) == errno.ECONNREFUSED
    finally:
        lsock.close()
