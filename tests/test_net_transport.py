"""Stream transports (TCP and Unix) driven through Protocol and BufferedProtocol.

The far end of every connection is a plain blocking socket served from a worker thread, so
these tests exercise the loop's transports only. Every scenario runs on asyncio's loop (the
reference) and on ferroloop, over TCP and over a Unix socket.
"""

from __future__ import annotations

import array
import asyncio
import hashlib
import logging
import os
import random
import socket
import sys
from unittest import mock

import pytest
from net_support import (  # noqa: F401
    NET_MARKS,
    TIMEOUT,
    Closer,
    MiB,
    Recorder,
    Waitable,
    closer_fixture,
    collect_garbage,
    frozen_heap,
    handler_calls_fixture,
    in_thread,
    kind_fixture,
    recv_exactly,
    run,
    settle,
    socket_pair,
    tmpdir_short_fixture,
)

pytestmark = NET_MARKS


class BufferedRecorder(Waitable, asyncio.BufferedProtocol):
    def __init__(self, loop, *, size: int = 1000, view: bool = False) -> None:
        self.loop = loop
        self.buf = bytearray(size)
        self.view = view
        self.transport = None
        self.events: list[str] = []
        self.data = bytearray()
        self.made = loop.create_future()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self._waiters: list[asyncio.Future] = []

    def connection_made(self, transport) -> None:
        self.events.append("made")
        self.transport = transport
        self.made.set_result(transport)

    def get_buffer(self, sizehint):
        assert isinstance(sizehint, int)
        return memoryview(self.buf) if self.view else self.buf

    def buffer_updated(self, nbytes) -> None:
        assert 0 < nbytes <= len(self.buf)
        self.events.append("buffer_updated")
        self.data += self.buf[:nbytes]
        self._wake()

    def eof_received(self):
        self.events.append("eof")
        self.eof.set_result(None)
        self._wake()
        return None

    def connection_lost(self, exc) -> None:
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)
        self._wake()


# ---------------------------------------------------------------- the far end (threads)


def _recv_until_eof(sock: socket.socket) -> bytes:
    buf = bytearray()
    while True:
        try:
            chunk = sock.recv(MiB)
        except ConnectionResetError:
            break
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


async def open_pair(loop, closer: Closer, kind: str, tmpdir: str, factory, *, small_buffers=False):
    """Connects a transport (built by the loop) to a plain blocking socket (the peer)."""
    if kind == "tcp":
        lsock = closer(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        if small_buffers:
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        transport, protocol = await loop.create_connection(factory, *lsock.getsockname())
    else:
        path = os.path.join(tmpdir, "s")
        lsock = closer(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        lsock.bind(path)
        lsock.listen(1)
        transport, protocol = await loop.create_unix_connection(factory, path)
    closer(transport)
    lsock.settimeout(TIMEOUT)
    peer, _ = lsock.accept()
    closer(peer)
    peer.settimeout(TIMEOUT)
    if small_buffers:
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return transport, protocol, peer


@pytest.fixture
def connect(loop, closer, kind, tmpdir_short):
    """``await connect(factory=None, *, small_buffers=False)``: open_pair() for this test.

    The default factory builds a Recorder.
    """

    async def connect(factory=None, *, small_buffers=False):
        factory = factory or (lambda: Recorder(loop))
        return await open_pair(
            loop, closer, kind, tmpdir_short, factory, small_buffers=small_buffers
        )

    return connect


def _payload(n: int) -> bytes:
    return os.urandom(n)


# ---------------------------------------------------------------- basics


def test_connection_made_then_data_both_ways(loop, connect):
    async def main():
        tr, proto, peer = await connect()
        assert proto.made.done()
        assert proto.transport is tr
        assert tr.get_protocol() is proto
        assert proto.events == ["made"]
        tr.write(b"hello ")
        tr.write(bytearray(b"from "))
        tr.write(memoryview(b"[transport]")[1:-1])
        assert await in_thread(recv_exactly, peer, 20) == b"hello from transport"
        peer.sendall(b"and back")
        assert await proto.wait_for_bytes(8) == b"and back"
        assert proto.chunk_types == {bytes}

    run(loop, main())


def test_writelines(loop, connect):
    async def main():
        tr, proto, peer = await connect()
        tr.writelines([b"a", bytearray(b"bc"), memoryview(b"def")])
        tr.writelines(x for x in (b"gh", b"i"))
        tr.writelines([])
        assert await in_thread(recv_exactly, peer, 9) == b"abcdefghi"

    run(loop, main())


def test_write_empty_bytes_is_a_noop(loop, connect):
    async def main():
        tr, proto, peer = await connect()
        tr.write(b"")
        assert tr.get_write_buffer_size() == 0
        tr.write(b"x")
        assert await in_thread(recv_exactly, peer, 1) == b"x"

    run(loop, main())


# asyncio's message for write(non-bytes) changed in 3.14.
WRITE_EXPECTS = (
    "a bytes, bytearray, or memoryview object"
    if sys.version_info >= (3, 14)
    else "a bytes-like object"
)


@pytest.mark.parametrize(
    "bad",
    ["text", 123, None, [b"a"], array.array("b", [1, 2])],
    ids=["str", "int", "None", "list", "array"],
)
def test_write_non_bytes_raises_type_error(loop, connect, bad):
    async def main():
        tr, proto, peer = await connect()
        with pytest.raises(TypeError, match=f"data argument must be {WRITE_EXPECTS}, not "):
            tr.write(bad)
        # The transport is still fine.
        tr.write(b"ok")
        assert await in_thread(recv_exactly, peer, 2) == b"ok"

    run(loop, main())


def test_writelines_with_non_bytes_item_raises_type_error(loop, connect):
    async def main():
        tr, proto, peer = await connect()
        with pytest.raises(TypeError):
            tr.writelines([b"a", "b"])

    run(loop, main())


def test_get_extra_info(loop, connect, kind):
    async def main():
        tr, proto, peer = await connect()
        sock = tr.get_extra_info("socket")
        assert sock is not None
        family = socket.AF_INET if kind == "tcp" else socket.AF_UNIX
        assert sock.family == family
        assert sock.type == socket.SOCK_STREAM
        assert sock.fileno() >= 0
        assert sock.getsockname() == tr.get_extra_info("sockname")
        assert tr.get_extra_info("sockname") == peer.getpeername()
        assert tr.get_extra_info("peername") == peer.getsockname()
        assert tr.get_extra_info("no-such-key") is None
        assert tr.get_extra_info("no-such-key", "default") == "default"
        assert tr.get_extra_info("peercert") is None
        assert tr.get_extra_info("sslcontext") is None

    run(loop, main())


def test_get_extra_info_arguments_and_replaced_extra(loop, connect):
    # The call forms asyncio's get_extra_info(name, default=None) takes, the errors it gives,
    # and what it reads: `transport._extra`, whatever a program has put there.
    class Extra(dict):
        def get(self, key, default=None):
            return ("custom", key, default)

    async def main():
        tr, proto, peer = await connect()
        assert tr.get_extra_info(name="no-such-key", default=1) == 1
        assert tr.get_extra_info("no-such-key", default=2) == 2
        assert tr.get_extra_info("peername") == tr.get_extra_info("peername", 3)
        assert tr.get_extra_info("socket") is tr.get_extra_info("socket")
        assert tr.get_extra_info("socket") is tr._extra["socket"]
        for args, kwargs in [
            ((), {}),
            (("a", 1, 2), {}),
            (("a",), {"name": "b"}),
            (("a",), {"other": 1}),
            ((), {"default": 1}),
        ]:
            with pytest.raises(TypeError):
                tr.get_extra_info(*args, **kwargs)
        saved = tr._extra
        try:
            tr._extra = {"peername": "replaced"}
            assert tr.get_extra_info("peername") == "replaced"
            assert tr.get_extra_info("socket", "absent") == "absent"
            tr._extra = Extra(peername="replaced")
            assert tr.get_extra_info("peername") == ("custom", "peername", None)
            assert tr.get_extra_info("x", 5) == ("custom", "x", 5)
        finally:
            tr._extra = saved

    run(loop, main())


@pytest.mark.parametrize("patched", ["BaseTransport", "Transport"])
def test_get_extra_info_patched_on_asyncio_base_class(loop, connect, patched):
    # asyncio's socket transports inherit get_extra_info from asyncio's base classes, so a
    # patch there (websockets' tests patch BaseTransport.get_extra_info) reaches them.
    async def main():
        tr, proto, peer = await connect()
        base = getattr(asyncio, patched)
        with mock.patch.object(base, "get_extra_info", return_value=("patched", 1)):
            assert tr.get_extra_info("peername") == ("patched", 1)
        assert tr.get_extra_info("peername") == peer.getsockname()
        assert tr._extra.get("sockname") == peer.getpeername()
        assert tr._extra.get("socket") is tr.get_extra_info("socket")
        assert tr._extra.get("no-such-key", 7) == 7
        with pytest.raises(TypeError):
            tr._extra.get(key="no-such-key")
        with pytest.raises(TypeError):
            tr._extra.get()
        with pytest.raises(TypeError):
            tr._extra.get("a", 1, 2)

    run(loop, main())


def test_tcp_nodelay_is_set(loop, closer, tmpdir_short):
    async def main():
        tr, proto, peer = await open_pair(loop, closer, "tcp", tmpdir_short, lambda: Recorder(loop))
        sock = tr.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0

    run(loop, main())


def test_is_closing_and_close_is_idempotent(loop, connect):
    async def main():
        tr, proto, peer = await connect()
        assert tr.is_closing() is False
        tr.close()
        assert tr.is_closing() is True
        tr.close()
        assert await proto.lost is None
        tr.close()
        tr.abort()
        await settle()
        assert tr.is_closing() is True
        assert proto.events == ["made", "lost"]
        assert await in_thread(_recv_until_eof, peer) == b""

    run(loop, main())


@pytest.mark.parametrize("how", ["close", "abort"])
def test_connection_lost_called_once_in_a_later_iteration(loop, connect, how):
    async def main():
        tr, proto, peer = await connect()
        getattr(tr, how)()
        # Never from inside close()/abort() itself.
        assert "lost" not in proto.events
        assert await proto.lost is None
        for _ in range(3):
            tr.close()
            tr.abort()
            await asyncio.sleep(0.01)
        assert proto.events.count("lost") == 1
        assert proto.events[-1] == "lost"

    run(loop, main())


@pytest.mark.parametrize("how", ["close", "abort"])
def test_pending_data_on_close_and_abort(loop, connect, how):
    """close() flushes the queued data before connection_lost(); abort() drops it."""
    data = _payload(4 * MiB)

    async def main():
        tr, proto, peer = await connect(small_buffers=True)
        tr.write(data)
        assert tr.get_write_buffer_size() > 0
        getattr(tr, how)()
        assert tr.is_closing()
        if how == "close":
            await asyncio.sleep(0.01)
            assert not proto.lost.done()  # still flushing: the peer has not read anything
            received = await in_thread(_recv_until_eof, peer)
            assert len(received) == len(data)
            assert received == data
            assert await proto.lost is None
        else:
            assert await proto.lost is None
            received = await in_thread(_recv_until_eof, peer)
            assert len(received) < len(data)
            assert received == data[: len(received)]
        assert proto.events.count("lost") == 1

    run(loop, main())


def test_write_after_close_is_ignored(loop, connect, loop_name, request):
    if loop_name == "asyncio" and (3, 12) <= sys.version_info < (3, 14):
        # asyncio 3.12 and 3.13: writelines() after close() fails inside the transport
        # (TypeError: 'NoneType' object is not callable); ferroloop ignores it as 3.11 and
        # 3.14 do.
        request.applymarker(pytest.mark.xfail(raises=TypeError, strict=True))

    async def main():
        tr, proto, peer = await connect()
        tr.write(b"before")
        assert await in_thread(recv_exactly, peer, 6) == b"before"
        tr.close()
        tr.write(b"after close")  # no exception, nothing sent
        tr.writelines([b"more"])
        await proto.lost
        tr.write(b"after lost")
        assert tr.get_write_buffer_size() == 0
        assert await in_thread(_recv_until_eof, peer) == b""

    run(loop, main())


def test_many_writes_after_close_log_a_warning(loop, connect, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")

    async def main():
        tr, proto, peer = await connect()
        tr.close()
        await proto.lost
        tr.write(b"x")
        first = [r for r in caplog.records if r.name == "asyncio"]
        for _ in range(10):
            tr.write(b"x")
        return first

    first = run(loop, main())
    assert first == []
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert "socket.send() raised exception." in messages
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "asyncio")


def test_write_after_abort_is_ignored(loop, connect):
    async def main():
        tr, proto, peer = await connect()
        tr.abort()
        tr.write(b"after abort")
        await proto.lost
        tr.write(b"after lost")

    run(loop, main())


# ---------------------------------------------------------------- write_eof / half close


def test_write_eof(loop, connect):
    async def main():
        tr, proto, peer = await connect()
        assert tr.can_write_eof() is True
        tr.write(b"last words")
        tr.write_eof()
        tr.write_eof()  # a second call is a no-op
        assert tr.is_closing() is False
        assert await in_thread(_recv_until_eof, peer) == b"last words"
        # Still open for reading.
        peer.sendall(b"reply")
        assert await proto.wait_for_bytes(5) == b"reply"
        assert not proto.lost.done()
        tr.close()
        assert await proto.lost is None

    run(loop, main())


def test_write_eof_with_pending_data_flushes_first(loop, connect):
    data = _payload(2 * MiB)

    async def main():
        tr, proto, peer = await connect(small_buffers=True)
        tr.write(data)
        assert tr.get_write_buffer_size() > 0
        tr.write_eof()
        received = await in_thread(_recv_until_eof, peer)
        assert received == data
        peer.sendall(b"still readable")
        assert await proto.wait_for_bytes(14) == b"still readable"

    run(loop, main())


def test_write_after_write_eof_raises_runtime_error(loop, connect):
    async def main():
        tr, proto, peer = await connect()
        tr.write_eof()
        with pytest.raises(RuntimeError, match=r"Cannot call write\(\) after write_eof\(\)"):
            tr.write(b"x")
        with pytest.raises(RuntimeError):
            tr.writelines([b"x"])
        assert await in_thread(_recv_until_eof, peer) == b""

    run(loop, main())


def test_eof_received_true_keeps_transport_open_for_writing(loop, connect):
    async def main():
        tr, proto, peer = await connect(lambda: Recorder(loop, eof_result=True))
        peer.sendall(b"question")
        peer.shutdown(socket.SHUT_WR)
        await proto.eof
        await asyncio.sleep(0.02)
        assert not proto.lost.done()
        assert tr.is_closing() is False
        assert bytes(proto.data) == b"question"
        tr.write(b"answer")
        assert await in_thread(recv_exactly, peer, 6) == b"answer"
        tr.close()
        assert await in_thread(_recv_until_eof, peer) == b""
        assert await proto.lost is None
        assert proto.events[0] == "made"
        assert proto.events[-2:] == ["eof", "lost"]

    run(loop, main())


@pytest.mark.parametrize("eof_result", [None, False])
def test_eof_received_false_closes_transport(loop, connect, eof_result):
    async def main():
        tr, proto, peer = await connect(lambda: Recorder(loop, eof_result=eof_result))
        peer.sendall(b"bye")
        peer.shutdown(socket.SHUT_WR)
        assert await proto.lost is None
        assert tr.is_closing() is True
        assert bytes(proto.data) == b"bye"
        assert proto.events[-2:] == ["eof", "lost"]
        assert proto.events.count("eof") == 1
        assert await in_thread(_recv_until_eof, peer) == b""

    run(loop, main())


# ---------------------------------------------------------------- reading flow control


def test_pause_and_resume_reading(loop, connect):
    async def main():
        tr, proto, peer = await connect()
        assert tr.is_reading() is True
        tr.pause_reading()
        assert tr.is_reading() is False
        tr.pause_reading()  # idempotent
        assert tr.is_reading() is False
        peer.sendall(b"while paused")
        peer.shutdown(socket.SHUT_WR)
        await asyncio.sleep(0.05)
        assert proto.events == ["made"]  # neither data nor EOF while paused
        tr.resume_reading()
        assert tr.is_reading() is True
        tr.resume_reading()  # idempotent
        await proto.eof
        assert bytes(proto.data) == b"while paused"

    run(loop, main())


def test_is_reading_false_after_close(loop, connect):
    async def main():
        tr, proto, peer = await connect()
        tr.close()
        assert tr.is_reading() is False
        tr.pause_reading()  # no-ops on a closing transport
        tr.resume_reading()
        assert tr.is_reading() is False
        await proto.lost

    run(loop, main())


# ---------------------------------------------------------------- writing flow control


def test_write_buffer_limits(loop, connect):
    async def main():
        tr, proto, peer = await connect()
        assert tr.get_write_buffer_limits() == (16384, 65536)
        assert tr.get_write_buffer_size() == 0
        tr.set_write_buffer_limits(high=100)
        assert tr.get_write_buffer_limits() == (25, 100)
        tr.set_write_buffer_limits(low=10)
        assert tr.get_write_buffer_limits() == (10, 40)
        tr.set_write_buffer_limits(high=50, low=20)
        assert tr.get_write_buffer_limits() == (20, 50)
        tr.set_write_buffer_limits(high=7, low=7)
        assert tr.get_write_buffer_limits() == (7, 7)
        tr.set_write_buffer_limits()
        assert tr.get_write_buffer_limits() == (16384, 65536)
        with pytest.raises(ValueError, match=r"high \(10\) must be >= low \(20\) must be >= 0"):
            tr.set_write_buffer_limits(high=10, low=20)
        with pytest.raises(ValueError):
            tr.set_write_buffer_limits(high=-4)
        with pytest.raises(ValueError):
            tr.set_write_buffer_limits(high=10, low=-1)
        assert tr.get_write_buffer_limits() == (16384, 65536)

    run(loop, main())


def test_pause_and_resume_writing_at_water_marks(loop, connect):
    data = _payload(1 * MiB)

    async def main():
        tr, proto, peer = await connect(small_buffers=True)
        tr.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
        tr.write(data)
        await proto.wait_until(lambda: "pause_writing" in proto.events)
        assert tr.get_write_buffer_size() > 64 * 1024
        tr.write(data)  # more while paused: no second pause_writing
        await asyncio.sleep(0.01)
        assert proto.events == ["made", "pause_writing"]
        reader = asyncio.ensure_future(in_thread(recv_exactly, peer, 2 * len(data)))
        await proto.wait_until(lambda: "resume_writing" in proto.events)
        assert await reader == data + data
        await settle()
        assert proto.events == ["made", "pause_writing", "resume_writing"]
        assert proto.paused_sizes[0] > 64 * 1024
        assert proto.resumed_sizes[0] <= 16 * 1024
        assert tr.get_write_buffer_size() == 0

    run(loop, main())


def test_lowering_the_high_water_mark_pauses_writing(loop, connect):
    data = _payload(1 * MiB)

    async def main():
        tr, proto, peer = await connect(small_buffers=True)
        tr.set_write_buffer_limits(high=16 * MiB)
        tr.write(data)
        await asyncio.sleep(0.01)
        assert tr.get_write_buffer_size() > 1024
        assert "pause_writing" not in proto.events
        tr.set_write_buffer_limits(high=1024)
        await proto.wait_until(lambda: "pause_writing" in proto.events)
        assert await in_thread(recv_exactly, peer, len(data)) == data
        await proto.wait_until(lambda: "resume_writing" in proto.events)
        assert proto.events == ["made", "pause_writing", "resume_writing"]

    run(loop, main())


# ---------------------------------------------------------------- protocols


def test_set_protocol_switches_mid_stream(loop, connect):
    async def main():
        tr, first, peer = await connect()
        peer.sendall(b"one")
        await first.wait_for_bytes(3)
        second = Recorder(loop)
        tr.set_protocol(second)
        assert tr.get_protocol() is second
        peer.sendall(b"two")
        assert await second.wait_for_bytes(3) == b"two"
        assert bytes(first.data) == b"one"
        assert second.events == ["data"]  # no connection_made for the new protocol
        tr.close()
        assert await second.lost is None
        assert "lost" not in first.events

    run(loop, main())


def test_set_protocol_to_buffered_protocol_mid_stream(loop, connect):
    async def main():
        tr, first, peer = await connect()
        peer.sendall(b"plain")
        await first.wait_for_bytes(5)
        buffered = BufferedRecorder(loop, size=3)
        tr.set_protocol(buffered)
        peer.sendall(b"buffered")
        await buffered.wait_until(lambda: len(buffered.data) >= 8)
        assert bytes(buffered.data) == b"buffered"
        assert bytes(first.data) == b"plain"
        peer.shutdown(socket.SHUT_WR)
        await buffered.eof
        assert await buffered.lost is None

    run(loop, main())


@pytest.mark.parametrize("view", [False, True], ids=["bytearray", "memoryview"])
def test_buffered_protocol_receives_everything(loop, connect, view):
    data = _payload(2 * MiB)

    async def main():
        tr, proto, peer = await connect(lambda: BufferedRecorder(loop, size=4096, view=view))
        assert proto.events == ["made"]
        await in_thread(peer.sendall, data)
        peer.shutdown(socket.SHUT_WR)
        await proto.eof
        assert len(proto.data) == len(data)
        assert proto.data == data
        assert await proto.lost is None
        assert proto.events[-2:] == ["eof", "lost"]

    run(loop, main())


def test_buffered_protocol_write_path(loop, connect):
    async def main():
        tr, proto, peer = await connect(lambda: BufferedRecorder(loop))
        tr.write(b"from a buffered protocol")
        assert await in_thread(recv_exactly, peer, 24) == b"from a buffered protocol"

    run(loop, main())


def test_large_transfer_both_directions(loop, connect):
    out_data = _payload(8 * MiB)
    in_data = _payload(8 * MiB)

    async def main():
        tr, proto, peer = await connect()
        for i in range(0, len(out_data), 256 * 1024):
            tr.write(out_data[i : i + 256 * 1024])
        reader = asyncio.ensure_future(in_thread(recv_exactly, peer, len(out_data)))
        await in_thread(peer.sendall, in_data)
        assert await proto.wait_for_bytes(len(in_data)) == in_data
        received = await reader
        assert len(received) == len(out_data)
        assert received == out_data

    run(loop, main())


# ---------------------------------------------------------------- data integrity and reentrancy


def test_mutating_a_buffer_after_write_does_not_change_what_is_sent(
    loop, connect, loop_name, request
):
    if loop_name == "asyncio" and sys.version_info >= (3, 12):
        # asyncio 3.12+ queues the caller's buffer itself for writelines(), so what is sent
        # changes with it; ferroloop copies what it has to queue, as 3.11 did.
        request.applymarker(pytest.mark.xfail(raises=AssertionError, strict=True))
    size = 2 * MiB

    async def main():
        tr, proto, peer = await connect(small_buffers=True)
        first = bytearray(b"a" * size)
        tr.write(first)
        assert tr.get_write_buffer_size() > 0  # part of it is still queued ...
        first[:] = b"X" * size  # ... and the caller reuses its buffer
        second = bytearray(b"b" * 1000)
        tr.write(memoryview(second))
        second[:] = b"Y" * 1000
        third = bytearray(b"c" * 10)
        tr.writelines([third])
        third[:] = b"Z" * 10
        got = await in_thread(recv_exactly, peer, size + 1010)
        expected = b"a" * size + b"b" * 1000 + b"c" * 10
        # Compared without pytest's diff: explaining a 2 MiB mismatch takes minutes.
        if got != expected:
            pairs = enumerate(zip(got, expected, strict=False))
            at = next((i for i, (a, b) in pairs if a != b), min(len(got), len(expected)))
            raise AssertionError(f"{len(got)} bytes received, first difference at byte {at}")

    run(loop, main())


def test_write_from_connection_made(loop, connect):
    class Greeter(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.write(b"greetings")

    async def main():
        tr, proto, peer = await connect(lambda: Greeter(loop))
        assert await in_thread(recv_exactly, peer, 9) == b"greetings"

    run(loop, main())


def test_close_from_data_received_stops_delivery(loop, connect):
    class CloseOnFirst(Recorder):
        def data_received(self, data):
            super().data_received(data)
            self.transport.close()

    async def main():
        tr, proto, peer = await connect(lambda: CloseOnFirst(loop))
        peer.sendall(b"first")
        await proto.lost
        try:
            peer.sendall(b"second")
        except OSError:
            pass
        await asyncio.sleep(0.02)
        assert proto.events == ["made", "data", "lost"]

    run(loop, main())


def test_pause_reading_from_data_received(loop, connect):
    class PauseOnFirst(Recorder):
        def data_received(self, data):
            super().data_received(data)
            if self.events.count("data") == 1:
                self.transport.pause_reading()

    async def main():
        tr, proto, peer = await connect(lambda: PauseOnFirst(loop))
        peer.sendall(b"one")
        await proto.wait_for_bytes(3)
        peer.sendall(b"two")
        peer.shutdown(socket.SHUT_WR)
        await asyncio.sleep(0.05)
        assert proto.events == ["made", "data"]
        assert tr.is_reading() is False
        tr.resume_reading()
        await proto.eof
        assert bytes(proto.data) == b"onetwo"

    run(loop, main())


@pytest.mark.parametrize("how", ["close", "abort"])
def test_close_while_reading_is_paused(loop, connect, how):
    async def main():
        tr, proto, peer = await connect()
        tr.pause_reading()
        peer.sendall(b"unread")
        getattr(tr, how)()
        assert await proto.lost is None
        assert proto.events == ["made", "lost"]

    run(loop, main())


def test_transport_fd_is_reserved(loop, connect):
    """add_reader/add_writer on a transport's fd is refused while the transport lives."""

    async def main():
        tr, proto, peer = await connect()
        fd = tr.get_extra_info("socket").fileno()
        with pytest.raises(RuntimeError, match=f"File descriptor {fd} is used by transport"):
            loop.add_reader(fd, lambda: None)
        with pytest.raises(RuntimeError, match=f"File descriptor {fd} is used by transport"):
            loop.add_writer(fd, lambda: None)
        # The transport still works.
        peer.sendall(b"fine")
        assert await proto.wait_for_bytes(4) == b"fine"

    run(loop, main())


def test_transport_socket_is_non_blocking(loop, connect):
    async def main():
        tr, proto, peer = await connect()
        assert tr.get_extra_info("socket").gettimeout() == 0.0

    run(loop, main())


# ---------------------------------------------------------------- sendfile


def test_loop_sendfile_over_transport(loop, connect, tmpdir_short):
    content = os.urandom(3 * MiB + 17)
    fname = os.path.join(tmpdir_short, "payload.bin")
    with open(fname, "wb") as f:
        f.write(content)

    async def main():
        tr, proto, peer = await connect()
        reader = asyncio.ensure_future(in_thread(recv_exactly, peer, 2 * MiB + 2))
        tr.write(b"<")
        with open(fname, "rb") as f:
            sent = await loop.sendfile(tr, f, offset=5, count=2 * MiB)
            assert f.tell() == 5 + 2 * MiB
        assert sent == 2 * MiB
        tr.write(b">")
        got = await reader
        assert got == b"<" + content[5 : 5 + 2 * MiB] + b">"
        # The transport keeps reading after sendfile.
        peer.sendall(b"ack")
        assert await proto.wait_for_bytes(3) == b"ack"

    run(loop, main())


def test_loop_sock_sendfile(loop, closer, tmpdir_short):
    content = os.urandom(2 * MiB)
    fname = os.path.join(tmpdir_short, "payload.bin")
    with open(fname, "wb") as f:
        f.write(content)
    a, b = socket_pair(closer)
    a.setblocking(False)
    b.settimeout(TIMEOUT)

    async def main():
        reader = asyncio.ensure_future(in_thread(recv_exactly, b, len(content)))
        with open(fname, "rb") as f:
            sent = await loop.sock_sendfile(a, f)
        assert sent == len(content)
        return await reader

    assert run(loop, main()) == content


# ---------------------------------------------------------------- producers and callbacks


def test_producer_driven_by_pause_and_resume_writing(loop, connect):
    """The classic producer: write until paused, continue from resume_writing()."""
    total = 4 * MiB
    chunk = 64 * 1024

    class Producer(Recorder):
        def __init__(self, loop):
            super().__init__(loop)
            self.sent = 0
            self.paused = False
            self.hasher = hashlib.sha256()

        def connection_made(self, transport):
            super().connection_made(transport)
            transport.set_write_buffer_limits(high=128 * 1024)
            self.produce()

        def produce(self):
            while not self.paused and self.sent < total:
                block = bytes([self.sent // chunk % 251]) * chunk
                self.hasher.update(block)
                self.sent += chunk
                self.transport.write(block)  # may call pause_writing() synchronously
            if self.sent >= total and not self.transport.is_closing():
                self.transport.write_eof()

        def pause_writing(self):
            super().pause_writing()
            self.paused = True

        def resume_writing(self):
            super().resume_writing()
            self.paused = False
            self.produce()  # writing from inside resume_writing()

    def read_all_hash(sock):
        h = hashlib.sha256()
        n = 0
        while chunk_ := sock.recv(MiB):
            h.update(chunk_)
            n += len(chunk_)
        return n, h.hexdigest()

    async def main():
        tr, proto, peer = await connect(lambda: Producer(loop), small_buffers=True)
        n, digest = await in_thread(read_all_hash, peer)
        assert n == total
        assert digest == proto.hasher.hexdigest()
        assert proto.events.count("pause_writing") >= 1
        assert proto.events.count("pause_writing") == proto.events.count("resume_writing")

    run(loop, main())


@pytest.mark.parametrize("how", ["close", "abort"])
def test_flow_control_callbacks_when_closing_while_paused(loop, connect, how):
    data = _payload(1 * MiB)

    async def main():
        tr, proto, peer = await connect(small_buffers=True)
        tr.write(data)
        assert proto.events == ["made", "pause_writing"]
        getattr(tr, how)()
        reader = asyncio.ensure_future(in_thread(_recv_until_eof, peer))
        assert await proto.lost is None
        got = await reader
        if how == "close":
            # The buffer drains before the connection is closed: resume_writing() first.
            assert got == data
            assert proto.events == ["made", "pause_writing", "resume_writing", "lost"]
        else:
            assert len(got) < len(data)
            assert proto.events == ["made", "pause_writing", "lost"]
        assert tr.get_write_buffer_size() == 0

    run(loop, main())


def test_write_eof_then_peer_closes(loop, connect):
    async def main():
        tr, proto, peer = await connect()
        tr.write(b"request")
        tr.write_eof()
        assert await in_thread(_recv_until_eof, peer) == b"request"
        peer.sendall(b"response")
        peer.close()
        assert await proto.lost is None
        assert bytes(proto.data) == b"response"
        assert proto.events[-2:] == ["eof", "lost"]
        tr.write_eof()  # no-op on a closed transport

    run(loop, main())


def test_exception_in_connection_lost_is_reported_and_socket_closed(loop, connect, handler_calls):

    class BadLost(Recorder):
        def connection_lost(self, exc):
            super().connection_lost(exc)
            raise ZeroDivisionError("in connection_lost")

    async def main():
        tr, proto, peer = await connect(lambda: BadLost(loop))
        sock = tr.get_extra_info("socket")
        tr.close()
        await proto.lost
        await settle()
        assert sock.fileno() == -1  # closed despite the exception
        assert await in_thread(_recv_until_eof, peer) == b""

    run(loop, main())
    assert len(handler_calls) == 1
    assert isinstance(handler_calls[0]["exception"], ZeroDivisionError)
    assert "message" in handler_calls[0]


def test_exception_in_connection_made_is_reported(loop, connect, handler_calls):

    class BadMade(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            raise ZeroDivisionError("in connection_made")

    async def main():
        # asyncio reports the error to the exception handler; the connection is still made.
        tr, proto, peer = await connect(lambda: BadMade(loop))
        assert proto.transport is tr
        peer.sendall(b"still works")
        assert await proto.wait_for_bytes(11) == b"still works"

    run(loop, main())
    assert len(handler_calls) == 1
    assert isinstance(handler_calls[0]["exception"], ZeroDivisionError)


def test_exception_in_resume_writing_is_reported(loop, connect, handler_calls):

    class BadResume(Recorder):
        def resume_writing(self):
            super().resume_writing()
            raise ZeroDivisionError("in resume_writing")

    data = _payload(1 * MiB)

    async def main():
        tr, proto, peer = await connect(lambda: BadResume(loop), small_buffers=True)
        tr.write(data)
        assert await in_thread(recv_exactly, peer, len(data)) == data
        await proto.wait_until(lambda: "resume_writing" in proto.events)
        await settle()
        assert not proto.lost.done()
        tr.write(b"more")
        assert await in_thread(recv_exactly, peer, 4) == b"more"
        return tr, proto

    tr, proto = run(loop, main())
    assert [c["message"] for c in handler_calls] == ["protocol.resume_writing() failed"]
    assert isinstance(handler_calls[0]["exception"], ZeroDivisionError)
    assert handler_calls[0]["transport"] is tr
    assert handler_calls[0]["protocol"] is proto


def test_close_from_connection_made(loop, connect):
    class CloseAtOnce(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.close()

    async def main():
        tr, proto, peer = await connect(lambda: CloseAtOnce(loop))
        assert tr.is_closing()
        assert await proto.lost is None
        assert proto.events == ["made", "lost"]
        assert await in_thread(_recv_until_eof, peer) == b""

    run(loop, main())


def test_pause_reading_from_connection_made(loop, connect):
    class PauseAtOnce(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.pause_reading()

    async def main():
        tr, proto, peer = await connect(lambda: PauseAtOnce(loop))
        assert tr.is_reading() is False
        peer.sendall(b"early")
        await asyncio.sleep(0.05)
        assert proto.events == ["made"]
        tr.resume_reading()
        assert await proto.wait_for_bytes(5) == b"early"

    run(loop, main())


def test_abort_from_data_received(loop, connect):
    class AbortOnFirst(Recorder):
        def data_received(self, data):
            super().data_received(data)
            self.transport.abort()

    async def main():
        tr, proto, peer = await connect(lambda: AbortOnFirst(loop))
        peer.sendall(b"x")
        assert await proto.lost is None
        await asyncio.sleep(0.02)
        assert proto.events == ["made", "data", "lost"]

    run(loop, main())


def test_write_from_eof_received_is_flushed_before_close(loop, connect):
    reply = _payload(2 * MiB)

    class ReplyOnEof(Recorder):
        def eof_received(self):
            super().eof_received()
            self.transport.write(reply)
            return False  # close, after flushing the reply

    async def main():
        tr, proto, peer = await connect(lambda: ReplyOnEof(loop))
        peer.shutdown(socket.SHUT_WR)
        got = await in_thread(_recv_until_eof, peer)
        assert got == reply
        assert await proto.lost is None

    run(loop, main())


def test_write_non_contiguous_memoryview(loop, connect, handler_calls):
    """asyncio accepts the object in write(); the send then fails: a fatal write error."""

    async def main():
        tr, proto, peer = await connect()
        tr.write(memoryview(b"abcdef")[::2])
        exc = await proto.lost
        assert isinstance(exc, BufferError)
        return exc

    exc = run(loop, main())
    assert [c["message"] for c in handler_calls] == ["Fatal write error on socket transport"]
    assert handler_calls[0]["exception"] is exc


def test_buffered_protocol_read_only_buffer_is_a_fatal_read_error(loop, connect, handler_calls):

    class ReadOnly(BufferedRecorder):
        def get_buffer(self, sizehint):
            return b"read-only bytes"

    async def main():
        tr, proto, peer = await connect(lambda: ReadOnly(loop))
        peer.sendall(b"data")
        return await proto.lost

    exc = run(loop, main())
    # socket.recv_into() refuses a read-only buffer with TypeError.
    assert isinstance(exc, TypeError)
    assert [c["message"] for c in handler_calls] == ["Fatal read error on socket transport"]
    assert handler_calls[0]["exception"] is exc


def test_many_small_writes_and_writelines_arrive_in_order(loop, connect):
    """Thousands of odd-sized pieces, queued while the socket is full (partial sends)."""
    rng = random.Random(1234)
    pieces = [rng.randbytes(rng.randint(1, 3000)) for _ in range(3000)]
    expected = b"".join(pieces)

    async def main():
        tr, proto, peer = await connect(small_buffers=True)
        reader = asyncio.ensure_future(in_thread(recv_exactly, peer, len(expected)))
        i = 0
        while i < len(pieces):
            step = rng.randint(1, 40)
            group = pieces[i : i + step]
            if step % 3 == 0:
                for p in group:
                    tr.write(p)
            elif step % 3 == 1:
                tr.writelines(group)
            else:
                tr.writelines(bytearray(p) for p in group)
            i += step
            if rng.random() < 0.1:
                await asyncio.sleep(0)
        got = await reader
        assert len(got) == len(expected)
        assert got == expected

    run(loop, main())
