"""Faults: resets, vanishing peers, failing protocol callbacks, fd leaks, large transfers.

Every scenario runs on asyncio's loop (the reference) and on ferroloop.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import socket
import struct

import pytest
from net_support import (  # noqa: F401
    NET_MARKS,
    TIMEOUT,
    Closer,
    MiB,
    Recorder,
    accept,
    closer_fixture,
    collect_garbage,
    frozen_heap,
    handler_calls_fixture,
    in_thread,
    listener,
    recv_exactly,
    refused_addr,
    run,
    settle,
    tmpdir_short_fixture,
)

pytestmark = NET_MARKS


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def _tcp_pair(loop, closer: Closer, factory, *, small_buffers: bool = False):
    lsock = listener(closer, small_rcvbuf=small_buffers)
    tr, proto = await loop.create_connection(factory, *lsock.getsockname())
    closer(tr)
    peer = accept(closer, lsock)
    if small_buffers:
        tr.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return tr, proto, peer


def _open_fds() -> int:
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


# ---------------------------------------------------------------- reset by peer


def test_reset_by_peer_reported_to_connection_lost(loop, closer, handler_calls):
    async def main():
        tr, proto, peer = await _tcp_pair(loop, closer, lambda: Recorder(loop))
        peer.sendall(b"some data")
        await proto.wait_for_bytes(9)
        _reset(peer)
        exc = await proto.lost
        assert isinstance(exc, ConnectionResetError)
        assert tr.is_closing()
        assert proto.events == ["made", "data", "lost"]  # no eof_received on a reset
        await asyncio.sleep(0.01)
        assert proto.events.count("lost") == 1

    run(loop, main())
    assert handler_calls == []  # OSErrors are not reported to the exception handler


def test_write_after_unnoticed_reset_reports_connection_error(loop, closer, handler_calls):
    async def main():
        tr, proto, peer = await _tcp_pair(loop, closer, lambda: Recorder(loop))
        tr.pause_reading()  # the reset is not seen by a read
        _reset(peer)
        await asyncio.sleep(0.05)
        assert not proto.lost.done()
        tr.write(b"into the void")
        tr.write(b"again")
        exc = await proto.lost
        assert isinstance(exc, ConnectionError)
        tr.write(b"after lost: ignored")

    run(loop, main())
    assert handler_calls == []


def test_reset_by_peer_through_streams(loop, closer):
    lsock = listener(closer)

    async def main():
        reader, writer = await asyncio.open_connection(*lsock.getsockname())
        closer(writer)
        peer = accept(closer, lsock)
        peer.sendall(b"partial")
        assert await reader.readexactly(7) == b"partial"
        _reset(peer)
        with pytest.raises(ConnectionResetError):
            await reader.read(100)
        writer.close()
        # wait_closed re-raises the connection's error, like asyncio does
        with pytest.raises(ConnectionResetError):
            await writer.wait_closed()

    run(loop, main())


def test_sock_recv_reports_reset(loop, closer):
    lsock = listener(closer)
    client = closer(socket.socket())
    client.connect(lsock.getsockname())
    client.setblocking(False)
    peer = accept(closer, lsock)

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(client, 100))
        await asyncio.sleep(0.01)
        _reset(peer)
        with pytest.raises(ConnectionResetError):
            await task

    run(loop, main())


def test_sock_sendall_to_vanished_peer(loop, closer):
    lsock = listener(closer, small_rcvbuf=True)
    client = closer(socket.socket())
    client.connect(lsock.getsockname())
    client.setblocking(False)
    peer = accept(closer, lsock)

    async def main():
        task = asyncio.ensure_future(loop.sock_sendall(client, os.urandom(8 * MiB)))
        await asyncio.sleep(0.02)
        assert not task.done()
        _reset(peer)
        with pytest.raises(ConnectionError):
            await task

    run(loop, main())


# ---------------------------------------------------------------- peer vanishing mid-transfer


def test_peer_vanishes_while_we_write(loop, closer, handler_calls):
    data = os.urandom(8 * MiB)

    async def main():
        tr, proto, peer = await _tcp_pair(loop, closer, lambda: Recorder(loop), small_buffers=True)
        tr.write(data)
        assert tr.get_write_buffer_size() > 0
        assert await in_thread(recv_exactly, peer, 64 * 1024) == data[: 64 * 1024]
        _reset(peer)
        exc = await proto.lost
        assert isinstance(exc, ConnectionError)
        assert tr.get_write_buffer_size() == 0  # the pending data was dropped
        tr.write(b"ignored")

    run(loop, main())
    assert handler_calls == []


def test_peer_vanishes_while_we_read(loop, closer):
    data = os.urandom(4 * MiB)

    async def main():
        tr, proto, peer = await _tcp_pair(loop, closer, lambda: Recorder(loop))

        def send_half_then_reset():
            peer.sendall(data[: 2 * MiB])

        await in_thread(send_half_then_reset)
        await proto.wait_for_bytes(2 * MiB)
        _reset(peer)
        exc = await proto.lost
        assert isinstance(exc, ConnectionResetError)
        assert bytes(proto.data) == data[: 2 * MiB]

    run(loop, main())


def test_unix_peer_vanishes_while_we_write(loop, closer, handler_calls, tmpdir_short):
    path = os.path.join(tmpdir_short, "s")
    lsock = closer(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    lsock.bind(path)
    lsock.listen(1)
    lsock.settimeout(TIMEOUT)

    async def main():
        tr, proto = await loop.create_unix_connection(lambda: Recorder(loop), path)
        closer(tr)
        peer = accept(closer, lsock)
        tr.write(os.urandom(4 * MiB))
        assert tr.get_write_buffer_size() > 0
        await in_thread(recv_exactly, peer, 1024)
        peer.close()
        exc = await proto.lost
        assert isinstance(exc, ConnectionError)

    run(loop, main())
    assert handler_calls == []


def test_streams_drain_raises_when_peer_vanishes(loop, closer):
    lsock = listener(closer, small_rcvbuf=True)

    async def main():
        reader, writer = await asyncio.open_connection(*lsock.getsockname())
        closer(writer)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        peer = accept(closer, lsock)
        writer.write(os.urandom(4 * MiB))
        drain = asyncio.ensure_future(writer.drain())
        await asyncio.sleep(0.02)
        assert not drain.done()
        _reset(peer)
        with pytest.raises(ConnectionError):
            await drain
        writer.close()
        with pytest.raises(ConnectionError):
            await writer.wait_closed()

    run(loop, main())


def test_orderly_close_during_pending_write_delivers_everything(loop, closer):
    data = os.urandom(8 * MiB)

    async def main():
        tr, proto, peer = await _tcp_pair(loop, closer, lambda: Recorder(loop), small_buffers=True)
        for i in range(0, len(data), MiB):
            tr.write(data[i : i + MiB])
        assert tr.get_write_buffer_size() > 0
        tr.close()

        def read_all():
            buf = bytearray()
            while chunk := peer.recv(MiB):
                buf += chunk
            return bytes(buf)

        got = await in_thread(read_all)
        assert await proto.lost is None
        return got

    got = run(loop, main())
    assert len(got) == len(data)
    assert got == data


# ---------------------------------------------------------------- failing protocol callbacks


class FailingProtocol(Recorder):
    def __init__(self, loop, where: str) -> None:
        super().__init__(loop)
        self.where = where
        self.error = ZeroDivisionError(where)

    def data_received(self, data) -> None:
        super().data_received(data)
        if self.where == "data_received":
            raise self.error

    def eof_received(self):
        super().eof_received()
        if self.where == "eof_received":
            raise self.error


class FailingBufferedProtocol(asyncio.BufferedProtocol):
    def __init__(self, loop, where: str) -> None:
        self.where = where
        self.error = ZeroDivisionError(where)
        self.buf = bytearray(100)
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.made.set_result(None)

    def get_buffer(self, sizehint):
        if self.where == "get_buffer":
            raise self.error
        if self.where == "get_buffer-empty":
            return bytearray()
        return self.buf

    def buffer_updated(self, nbytes) -> None:
        if self.where == "buffer_updated":
            raise self.error

    def connection_lost(self, exc) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


@pytest.mark.parametrize(
    "where,message",
    [
        ("data_received", "Fatal error: protocol.data_received() call failed."),
        ("eof_received", "Fatal error: protocol.eof_received() call failed."),
        ("get_buffer", "Fatal error: protocol.get_buffer() call failed."),
        ("get_buffer-empty", "Fatal error: protocol.get_buffer() call failed."),
        ("buffer_updated", "Fatal error: protocol.buffer_updated() call failed."),
    ],
)
def test_failing_protocol_callback_is_a_fatal_error(loop, closer, handler_calls, where, message):
    if where in ("data_received", "eof_received"):

        def factory():
            return FailingProtocol(loop, where)
    else:

        def factory():
            return FailingBufferedProtocol(loop, where)

    async def main():
        tr, proto, peer = await _tcp_pair(loop, closer, factory)
        peer.sendall(b"payload")
        if where == "eof_received":
            peer.shutdown(socket.SHUT_WR)
        exc = await proto.lost
        assert tr.is_closing()
        return tr, proto, exc

    tr, proto, exc = run(loop, main())
    if where == "get_buffer-empty":
        assert isinstance(exc, RuntimeError)
        assert str(exc) == "get_buffer() returned an empty buffer"
    else:
        assert exc is proto.error
    assert len(handler_calls) == 1
    ctx = handler_calls[0]
    assert ctx["message"] == message
    assert ctx["exception"] is exc
    assert ctx["transport"] is tr
    assert ctx["protocol"] is proto


def test_failing_pause_writing_is_reported_and_transport_survives(loop, closer, handler_calls):
    class BadPause(Recorder):
        def pause_writing(self) -> None:
            raise ZeroDivisionError("pause")

    data = os.urandom(1 * MiB)

    async def main():
        tr, proto, peer = await _tcp_pair(loop, closer, lambda: BadPause(loop), small_buffers=True)
        tr.write(data)
        await asyncio.sleep(0.01)
        assert not proto.lost.done()
        assert await in_thread(recv_exactly, peer, len(data)) == data
        return tr, proto

    tr, proto = run(loop, main())
    messages = [ctx["message"] for ctx in handler_calls]
    assert messages == ["protocol.pause_writing() failed"]
    assert isinstance(handler_calls[0]["exception"], ZeroDivisionError)
    assert handler_calls[0]["transport"] is tr
    assert handler_calls[0]["protocol"] is proto


# ---------------------------------------------------------------- no leaked file descriptors


def _echo_server_scenario(loop, closer: Closer, n_clients: int) -> None:
    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        try:
            addr = server.sockets[0].getsockname()
            for _ in range(n_clients):
                tr, proto = await loop.create_connection(lambda: Recorder(loop), *addr)
                tr.write(b"echo me")
                await proto.wait_for_bytes(7)
                tr.close()
                await proto.lost
            reader, writer = await asyncio.open_connection(*addr)
            writer.write(b"streams")
            assert await reader.readexactly(7) == b"streams"
            writer.close()
            await writer.wait_closed()
        finally:
            server.close()
            await server.wait_closed()
        await settle()

    run(loop, main())


def test_no_fd_leak_after_connections_and_server(loop, closer):
    _echo_server_scenario(loop, closer, 2)  # warm-up: lazily created loop resources
    before = _open_fds()
    for _ in range(3):
        _echo_server_scenario(loop, closer, 5)
    assert _open_fds() == before


def test_no_fd_leak_after_refused_connections(loop, closer):
    host, port = refused_addr(closer)

    async def attempts(n: int) -> None:
        for i in range(n):
            kwargs = {"happy_eyeballs_delay": 0.01} if i % 2 else {}
            with pytest.raises(ConnectionRefusedError):
                await loop.create_connection(asyncio.Protocol, host, port, **kwargs)
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(host, port)

    run(loop, attempts(1))
    before = _open_fds()
    run(loop, attempts(10))
    assert _open_fds() == before


def test_no_fd_leak_after_resets_and_aborts(loop, closer):
    lsock = listener(closer)

    async def scenario() -> None:
        tr, proto = await loop.create_connection(lambda: Recorder(loop), *lsock.getsockname())
        peer, _ = lsock.accept()
        _reset(peer)
        assert isinstance(await proto.lost, ConnectionResetError)
        tr2, proto2 = await loop.create_connection(lambda: Recorder(loop), *lsock.getsockname())
        peer2, _ = lsock.accept()
        tr2.write(b"x")
        tr2.abort()
        await proto2.lost
        peer2.close()

    run(loop, scenario())
    before = _open_fds()
    for _ in range(5):
        run(loop, scenario())
    run(loop, settle())
    assert _open_fds() == before


def test_no_fd_leak_when_create_connection_is_cancelled(loop, closer):
    lsock = listener(closer)
    addr = lsock.getsockname()

    async def attempt(steps: int) -> None:
        task = asyncio.ensure_future(loop.create_connection(lambda: Recorder(loop), *addr))
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        try:
            tr, proto = await task
        except asyncio.CancelledError:
            pass
        else:
            tr.close()
            await proto.lost
        # drain the accept queue so the listener does not hold the connections
        lsock.setblocking(False)
        try:
            while True:
                conn, _ = lsock.accept()
                conn.close()
        except BlockingIOError:
            pass
        await settle()

    run(loop, attempt(0))
    before = _open_fds()

    async def main():
        for steps in range(8):
            await attempt(steps)

    run(loop, main())
    assert _open_fds() == before


def test_no_fd_leak_after_unix_server(loop, closer, tmpdir_short):
    path = os.path.join(tmpdir_short, "s")

    async def scenario() -> None:
        async def handler(reader, writer):
            writer.write(await reader.readexactly(3))
            await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(handler, path)
        async with server:
            for _ in range(3):
                reader, writer = await asyncio.open_unix_connection(path)
                writer.write(b"abc")
                assert await reader.read() == b"abc"
                writer.close()
                await writer.wait_closed()
        await settle()

    run(loop, scenario())
    before = _open_fds()
    for _ in range(3):
        run(loop, scenario())
    assert _open_fds() == before


# ---------------------------------------------------------------- large transfers


def test_large_echo_with_flow_control_on_both_sides(loop, closer):
    """16 MiB through a loop-run echo server that pauses reading while its writes are paused."""
    data = os.urandom(16 * MiB)

    class FlowEcho(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            transport.set_write_buffer_limits(high=256 * 1024)

        def data_received(self, chunk):
            self.transport.write(chunk)

        def pause_writing(self):
            self.transport.pause_reading()

        def resume_writing(self):
            self.transport.resume_reading()

        def eof_received(self):
            return None  # close once everything is echoed (close() flushes)

    class Client(Recorder):
        def __init__(self, loop):
            super().__init__(loop)
            self.digest = hashlib.sha256()
            self.count = 0
            self.paused = 0

        def data_received(self, chunk):
            self.digest.update(chunk)
            self.count += len(chunk)
            self._wake()

        def pause_writing(self):
            self.paused += 1

    async def main():
        server = closer(await loop.create_server(FlowEcho, "127.0.0.1", 0))
        tr, proto = await loop.create_connection(
            lambda: Client(loop), *server.sockets[0].getsockname()
        )
        closer(tr)
        for i in range(0, len(data), 512 * 1024):
            tr.write(data[i : i + 512 * 1024])
        tr.write_eof()
        await proto.eof
        assert await proto.lost is None
        return proto

    proto = run(loop, main(), timeout=8)
    assert proto.count == len(data)
    assert proto.digest.hexdigest() == hashlib.sha256(data).hexdigest()


def test_reset_while_flushing_on_close_reports_the_error(loop, closer, handler_calls):
    data = os.urandom(8 * MiB)

    async def main():
        tr, proto, peer = await _tcp_pair(loop, closer, lambda: Recorder(loop), small_buffers=True)
        tr.write(data)
        tr.close()
        assert tr.get_write_buffer_size() > 0
        await in_thread(recv_exactly, peer, 16 * 1024)
        _reset(peer)
        exc = await proto.lost
        assert isinstance(exc, ConnectionError)
        assert proto.events.count("lost") == 1

    run(loop, main())
    assert handler_calls == []


def test_is_reading_false_after_reset(loop, closer):
    async def main():
        tr, proto, peer = await _tcp_pair(loop, closer, lambda: Recorder(loop))
        _reset(peer)
        await proto.lost
        assert tr.is_reading() is False
        assert tr.is_closing() is True

    run(loop, main())


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_system_exit_from_a_protocol_callback_propagates(loop, closer, exc_type):
    class Raiser(Recorder):
        def data_received(self, data):
            super().data_received(data)
            raise exc_type()

    async def main():
        tr, proto, peer = await _tcp_pair(loop, closer, lambda: Raiser(loop))
        peer.sendall(b"boom")
        await asyncio.sleep(0.3)  # interrupted by the exception well before this ends
        return proto

    task = loop.create_task(main())
    with pytest.raises(exc_type):
        loop.run_until_complete(task)
    # The loop stays usable: the task finishes when run again.
    proto = loop.run_until_complete(task)
    assert proto.events[:2] == ["made", "data"]
