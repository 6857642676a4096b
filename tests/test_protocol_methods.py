"""Protocol methods are looked up when the transport needs them, as asyncio does.

A protocol may lack the methods it never needs (a write-only protocol has no
``data_received``), and may replace them on the instance while connected. A transport that
required them up front would refuse such protocols (``create_connection`` failing at once, an
accepted connection never announced and never closed). What happens when data does arrive for
a protocol without ``data_received`` (a fatal error through the exception handler, then the
transport closes) is asyncio's too.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import sys

from net_support import (  # noqa: F401
    NET_MARKS,
    closer_fixture,
    handler_calls_fixture,
    in_thread,
    listener,
    recv_exactly,
    run,
    settle,
)

pytestmark = NET_MARKS


class WriteOnly(asyncio.BaseProtocol):
    """Writes a greeting and closes in connection_made; has no data_received at all."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.lost = loop.create_future()

    def connection_made(self, transport) -> None:
        transport.write(b"hello from a write-only protocol")
        transport.close()

    def connection_lost(self, exc) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    out = bytearray()
    while chunk := sock.recv(4096):
        out += chunk
    return bytes(out)


def test_server_with_write_only_protocol_serves_and_closes(loop, closer):
    protocols: list[WriteOnly] = []

    def factory() -> WriteOnly:
        protocols.append(WriteOnly(loop))
        return protocols[-1]

    async def main():
        server = await loop.create_server(factory, "127.0.0.1", 0)
        closer(server)
        port = server.sockets[0].getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        closer(client)
        received = await in_thread(_read_all, client)
        assert await protocols[0].lost is None
        return received

    assert run(loop, main()) == b"hello from a write-only protocol"


def test_create_connection_with_write_only_protocol(loop, closer):
    lsock = listener(closer)

    async def main():
        tr, proto = await loop.create_connection(lambda: WriteOnly(loop), *lsock.getsockname())
        peer, _ = await in_thread(lsock.accept)
        closer(peer)
        assert isinstance(proto, WriteOnly)
        assert await in_thread(_read_all, peer) == b"hello from a write-only protocol"
        assert await proto.lost is None

    run(loop, main())


class Silent(asyncio.BaseProtocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = None
        self.lost = loop.create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


def test_data_for_a_protocol_without_data_received_is_a_fatal_error(loop, closer, handler_calls):
    lsock = listener(closer)

    async def main():
        tr, proto = await loop.create_connection(lambda: Silent(loop), *lsock.getsockname())
        closer(tr)
        peer, _ = await in_thread(lsock.accept)
        closer(peer)
        peer.sendall(b"unexpected")
        exc = await asyncio.wait_for(proto.lost, 5)
        assert tr.is_closing()
        # The peer sees the connection closed.
        assert await in_thread(recv_exactly, peer, 1) == b""
        return exc

    exc = run(loop, main())
    assert isinstance(exc, AttributeError)
    assert [c["message"] for c in handler_calls] == [
        "Fatal error: protocol.data_received() call failed."
    ]
    assert isinstance(handler_calls[0]["exception"], AttributeError)


def test_data_received_replaced_on_the_instance_is_honoured(loop, closer):
    lsock = listener(closer)

    class Switching(asyncio.Protocol):
        def __init__(self) -> None:
            self.first: list[bytes] = []
            self.later: list[bytes] = []
            self.got_later = loop.create_future()

        def data_received(self, data) -> None:
            self.first.append(data)
            # Later data goes to another method (a pattern of protocol state machines).
            self.data_received = self._after

        def _after(self, data) -> None:
            self.later.append(data)
            if not self.got_later.done():
                self.got_later.set_result(None)

    async def main():
        tr, proto = await loop.create_connection(Switching, *lsock.getsockname())
        closer(tr)
        peer, _ = await in_thread(lsock.accept)
        closer(peer)
        peer.sendall(b"one")
        while not proto.first:
            await asyncio.sleep(0.01)
        peer.sendall(b"two")
        await asyncio.wait_for(proto.got_later, 5)
        return proto.first, proto.later

    first, later = run(loop, main())
    assert b"".join(first) == b"one"
    assert b"".join(later) == b"two"


def test_buffered_protocol_methods_replaced_on_the_instance(loop, closer):
    lsock = listener(closer)

    class Buffered(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buf = bytearray(64)
            self.calls: list[str] = []
            self.done = loop.create_future()

        def get_buffer(self, sizehint):
            self.calls.append("class get_buffer")
            self.get_buffer = self._get_buffer2
            return self.buf

        def _get_buffer2(self, sizehint):
            self.calls.append("instance get_buffer")
            return self.buf

        def buffer_updated(self, nbytes) -> None:
            self.calls.append(f"updated {bytes(self.buf[:nbytes])!r}")
            if len(self.calls) >= 4 and not self.done.done():
                self.done.set_result(None)

    async def main():
        tr, proto = await loop.create_connection(Buffered, *lsock.getsockname())
        closer(tr)
        peer, _ = await in_thread(lsock.accept)
        closer(peer)
        peer.sendall(b"a")
        while len(proto.calls) < 2:
            await asyncio.sleep(0.01)
        peer.sendall(b"b")
        await asyncio.wait_for(proto.done, 5)
        return proto.calls

    assert run(loop, main()) == [
        "class get_buffer",
        "updated b'a'",
        "instance get_buffer",
        "updated b'b'",
    ]


def test_datagram_protocol_method_replaced_on_the_instance(loop, closer):
    class Switching(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.got: list[tuple[str, bytes]] = []
            self.done = loop.create_future()

        def datagram_received(self, data, addr) -> None:
            self.got.append(("class", data))
            self.datagram_received = self._after

        def _after(self, data, addr) -> None:
            self.got.append(("instance", data))
            if not self.done.done():
                self.done.set_result(None)

    async def main():
        tr, proto = await loop.create_datagram_endpoint(Switching, local_addr=("127.0.0.1", 0))
        closer(tr)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closer(sender)
        addr = tr.get_extra_info("sockname")
        sender.sendto(b"1", addr)
        while not proto.got:
            await asyncio.sleep(0.01)
        sender.sendto(b"2", addr)
        await asyncio.wait_for(proto.done, 5)
        await settle()
        return proto.got

    assert run(loop, main()) == [("class", b"1"), ("instance", b"2")]


def test_failed_transport_creation_for_accepted_socket_closes_it(loop, closer, handler_calls):
    """A protocol factory that raises: the accepted socket is closed (the client sees EOF)."""

    def factory():
        raise RuntimeError("no protocol today")

    async def main():
        server = await loop.create_server(factory, "127.0.0.1", 0)
        closer(server)
        port = server.sockets[0].getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        closer(client)
        return await in_thread(_read_all, client)

    unraisable: list[str] = []
    saved_hook = sys.unraisablehook
    sys.unraisablehook = lambda u: unraisable.append(repr(u.exc_value))
    try:
        assert run(loop, main()) == b""
        gc.collect()
    finally:
        sys.unraisablehook = saved_hook
    if type(loop).__module__.startswith("asyncio"):
        # asyncio leaves the socket to the garbage collector, which warns about it.
        assert all("ResourceWarning" in u for u in unraisable), unraisable
    else:
        assert unraisable == []
    if type(loop).__module__.startswith("ferroloop"):
        # ferroloop also reports it in every mode (asyncio: in debug mode only; README).
        assert [c["message"] for c in handler_calls] == [
            "Error on transport creation for incoming connection"
        ]
        assert isinstance(handler_calls[0]["exception"], RuntimeError)
