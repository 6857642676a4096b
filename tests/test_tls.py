"""TLS over ferroloop's transports: handshake, data, extra info, start_tls, failures."""

from __future__ import annotations

import asyncio
import ssl

import pytest


def _contexts(certs):
    cert, key = certs
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cert)
    return server, client


async def _echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def test_tls_echo_and_extra_info(loop, certs):
    server_ctx, client_ctx = _contexts(certs)

    async def main():
        srv = await asyncio.start_server(_echo, "127.0.0.1", 0, ssl=server_ctx)
        port = srv.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        payload = bytes(range(256)) * 4096  # 1 MiB through TLS
        writer.write(payload)
        await writer.drain()
        echoed = await reader.readexactly(len(payload))
        t = writer.transport
        info = (
            t.get_extra_info("ssl_object") is not None,
            t.get_extra_info("peercert")["subject"],
            t.get_extra_info("cipher") is not None,
            t.get_extra_info("sslcontext") is client_ctx,
            "compression" in dir(t.get_extra_info("ssl_object")),
        )
        writer.close()
        await writer.wait_closed()
        srv.close()
        await srv.wait_closed()
        return echoed == payload, info

    ok, info = loop.run_until_complete(main())
    assert ok
    assert info[0] and info[2] and info[3] and info[4]
    assert info[1] == ((("commonName", "localhost"),),)


def test_tls_bad_certificate_fails_handshake(loop, certs):
    server_ctx, _ = _contexts(certs)
    untrusting = ssl.create_default_context()  # system CAs: our self-signed cert is unknown

    async def main():
        srv = await asyncio.start_server(_echo, "127.0.0.1", 0, ssl=server_ctx)
        port = srv.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncio.open_connection(
                    "127.0.0.1", port, ssl=untrusting, server_hostname="localhost"
                )
        finally:
            srv.close()
            await srv.wait_closed()

    loop.run_until_complete(main())


def test_tls_wrong_hostname(loop, certs):
    server_ctx, client_ctx = _contexts(certs)

    async def main():
        srv = await asyncio.start_server(_echo, "127.0.0.1", 0, ssl=server_ctx)
        port = srv.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncio.open_connection(
                    "127.0.0.1", port, ssl=client_ctx, server_hostname="example.org"
                )
        finally:
            srv.close()
            await srv.wait_closed()

    loop.run_until_complete(main())


def test_tls_peer_drops_mid_handshake(loop, certs):
    _, client_ctx = _contexts(certs)

    async def silent_then_close(reader, writer):
        await reader.read(10)  # read part of the ClientHello, then vanish
        writer.transport.abort()

    async def main():
        srv = await asyncio.start_server(silent_then_close, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        try:
            with pytest.raises((ConnectionResetError, ssl.SSLError, OSError)):
                await asyncio.open_connection(
                    "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
                )
        finally:
            srv.close()
            await srv.wait_closed()

    loop.run_until_complete(main())


def test_tls_handshake_timeout(loop, certs):
    _, client_ctx = _contexts(certs)

    async def never_answer(reader, writer):
        # Read (and ignore) until the client gives up on the handshake, then close.
        while await reader.read(4096):
            pass
        writer.close()
        await writer.wait_closed()

    async def main():
        srv = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        try:
            with pytest.raises((TimeoutError, ConnectionAbortedError)):
                await asyncio.open_connection(
                    "127.0.0.1",
                    port,
                    ssl=client_ctx,
                    server_hostname="localhost",
                    ssl_handshake_timeout=0.2,
                )
        finally:
            srv.close()
            await srv.wait_closed()

    loop.run_until_complete(main())


def test_start_tls_upgrade(loop, certs):
    server_ctx, client_ctx = _contexts(certs)

    async def server(reader, writer):
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"OK\n")
        await writer.drain()
        await writer.start_tls(server_ctx)
        line = await reader.readline()
        writer.write(b"secure:" + line)
        await writer.drain()
        writer.close()

    async def main():
        srv = await asyncio.start_server(server, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"OK\n"
        await writer.start_tls(client_ctx, server_hostname="localhost")
        writer.write(b"hello\n")
        reply = await reader.readline()
        tls = writer.get_extra_info("ssl_object") is not None
        writer.close()
        await writer.wait_closed()
        srv.close()
        await srv.wait_closed()
        return reply, tls

    assert loop.run_until_complete(main()) == (b"secure:hello\n", True)


def test_tls_unix_socket(loop, certs, tmp_path):
    server_ctx, client_ctx = _contexts(certs)
    path = str(tmp_path / "tls.sock")

    async def main():
        srv = await asyncio.start_unix_server(_echo, path, ssl=server_ctx)
        reader, writer = await asyncio.open_unix_connection(
            path, ssl=client_ctx, server_hostname="localhost"
        )
        writer.write(b"over unix")
        data = await reader.readexactly(9)
        writer.close()
        await writer.wait_closed()
        srv.close()
        await srv.wait_closed()
        return data

    assert loop.run_until_complete(main()) == b"over unix"


def test_tls_many_small_records_then_close_notify(loop, certs):
    # Several TLS records arrive in one read and the stream ends with the peer's close_notify:
    # every byte reaches the protocol in order, then EOF (ferroloop stops decrypting as soon as
    # nothing is left, see _tls.py; the records here exercise both exits of that loop).
    server_ctx, client_ctx = _contexts(certs)
    pieces = [bytes([i]) * (i + 1) for i in range(200)]

    async def burst(reader, writer):
        for piece in pieces:
            writer.write(piece)  # one TLS record each
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        srv = await asyncio.start_server(burst, "127.0.0.1", 0, ssl=server_ctx)
        port = srv.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        await asyncio.sleep(0.05)  # let the records pile up before the first read
        received = await reader.read()  # until EOF
        at_eof = reader.at_eof()
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass
        srv.close()
        await srv.wait_closed()
        return received, at_eof

    received, at_eof = loop.run_until_complete(main())
    assert received == b"".join(pieces)
    assert at_eof


# ---------------------------------------------------------------- the record path (src/tls.rs)


async def _tls_pair(loop, certs, server_factory, client_factory=None, **client_kw):
    """A TLS server with ``server_factory`` and one client connection to it."""
    server_ctx, client_ctx = _contexts(certs)
    srv = await loop.create_server(server_factory, "127.0.0.1", 0, ssl=server_ctx)
    port = srv.sockets[0].getsockname()[1]
    tr, proto = await loop.create_connection(
        client_factory or asyncio.Protocol,
        "127.0.0.1",
        port,
        ssl=client_kw.pop("ssl", client_ctx),
        server_hostname="localhost",
        **client_kw,
    )
    return srv, tr, proto


class _Collect(asyncio.Protocol):
    def __init__(self):
        self.data = bytearray()
        self.events = []
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.data += data

    def eof_received(self):
        self.events.append("eof")

    def pause_writing(self):
        self.events.append("pause_writing")

    def resume_writing(self):
        self.events.append("resume_writing")

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(exc)


def _collecting_server():
    """A server protocol factory making `_Collect`s, and the list of those it made."""
    made: list[_Collect] = []

    def factory():
        p = _Collect()
        made.append(p)
        return p

    return factory, made


class _Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def _until(condition, timeout=2.0):
    """Wait (polling) until ``condition()`` holds or ``timeout`` seconds passed."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)


async def _close(tr, proto, srv):
    """Close the client's TLS transport, wait for its connection_lost, close the server."""
    tr.close()
    await proto.done
    srv.close()
    await srv.wait_closed()


def test_tls_app_write_flow_control(loop, certs):
    # The peer does not read: the application's writes pile up above the TLS layer's high
    # water mark, pause_writing() is called once; when the peer reads, resume_writing() follows
    # and every byte arrives in order.
    make_server, server_side = _collecting_server()

    async def main():
        srv, tr, proto = await _tls_pair(loop, certs, make_server, _Collect)
        await asyncio.sleep(0.05)
        peer = server_side[0]
        peer.transport.pause_reading()
        tr.set_write_buffer_limits(high=64 * 1024)
        chunk = bytes(range(256)) * 256  # 64 KiB
        sent = bytearray()
        for _ in range(1024):  # up to 64 MiB: the kernel's buffers take several first
            tr.write(chunk)
            sent += chunk
            if "pause_writing" in proto.events:
                break
        paused = list(proto.events)
        size_when_paused = tr.get_write_buffer_size()
        peer.transport.resume_reading()
        await _until(lambda: len(peer.data) >= len(sent), timeout=10)
        await _close(tr, proto, srv)
        return paused, size_when_paused, proto.events, bytes(peer.data) == bytes(sent)

    paused, size, events, intact = loop.run_until_complete(main())
    assert paused == ["pause_writing"]
    assert size > 0
    assert events[:2] == ["pause_writing", "resume_writing"]
    assert intact


def test_tls_app_transport_write_arguments(loop, certs):
    received = []

    class Server(_Collect):
        def data_received(self, data):
            super().data_received(data)
            received.append(bytes(self.data))

    async def main():
        srv, tr, proto = await _tls_pair(loop, certs, Server, _Collect)
        errors = []
        for bad in ("text", 12, None, [b"x"]):
            try:
                tr.write(bad)
            except TypeError as exc:
                errors.append(str(exc))
        tr.write(b"")
        tr.write(bytearray(b"ab"))
        tr.write(memoryview(b"xcdx")[1:3])
        tr.writelines([b"ef", bytearray(b"gh"), memoryview(b"ij")])
        await _until(lambda: received and received[-1] == b"abcdefghij")
        tr.close()
        tr.write(b"after close")  # ignored, as asyncio does
        tr.close()  # a second close forgets the protocol: writing fails as asyncio's does
        try:
            tr.write(b"after the second close")
        except AttributeError as exc:
            errors.append(str(exc))
        await proto.done
        srv.close()
        await srv.wait_closed()
        return errors, received[-1]

    errors, data = loop.run_until_complete(main())
    assert errors == [
        "data: expecting a bytes-like instance, got str",
        "data: expecting a bytes-like instance, got int",
        "data: expecting a bytes-like instance, got NoneType",
        "data: expecting a bytes-like instance, got list",
        "'NoneType' object has no attribute '_write_appdata'",
    ]
    assert data == b"abcdefghij"


def test_tls_pause_reading_holds_data_back(loop, certs):
    make_server, server_side = _collecting_server()

    async def main():
        srv, tr, proto = await _tls_pair(loop, certs, make_server, _Collect)
        await asyncio.sleep(0.05)
        tr.pause_reading()
        reading = tr.is_reading()
        server_side[0].transport.write(b"held back")
        await asyncio.sleep(0.1)
        while_paused = bytes(proto.data)
        tr.resume_reading()
        await _until(lambda: proto.data)
        await _close(tr, proto, srv)
        return reading, while_paused, bytes(proto.data)

    assert loop.run_until_complete(main()) == (False, b"", b"held back")


def _buffered_transfer(loop, certs, buffer):
    """100 KiB over TLS into a BufferedProtocol whose get_buffer() returns ``buffer``."""

    class Buffered(asyncio.BufferedProtocol):
        def __init__(self):
            self.data = bytearray()
            self.done = asyncio.get_running_loop().create_future()

        def get_buffer(self, sizehint):
            return buffer

        def buffer_updated(self, nbytes):
            self.data += buffer[:nbytes]

        def eof_received(self):
            self.done.set_result(bytes(self.data))

    class Sender(asyncio.Protocol):
        def connection_made(self, transport):
            transport.write(bytes(range(256)) * 400)  # 100 KiB, many times the buffer
            transport.close()

    async def main():
        srv, tr, proto = await _tls_pair(loop, certs, Sender, Buffered)
        data = await asyncio.wait_for(proto.done, 10)
        tr.close()
        srv.close()
        await srv.wait_closed()
        return data

    return loop.run_until_complete(main())


def test_tls_buffered_app_protocol(loop, certs):
    # A memoryview: asyncio slices the buffer between reads, which a memoryview survives.
    assert _buffered_transfer(loop, certs, memoryview(bytearray(1000))) == bytes(range(256)) * 400


def test_tls_buffered_app_protocol_with_a_bytearray(ferroloop_loop, certs):
    # ferroloop only: a bytearray buffer is filled in place on every read. asyncio slices the
    # buffer itself between reads (a copy, for a bytearray), so it loses those bytes.
    data = _buffered_transfer(ferroloop_loop, certs, bytearray(1000))
    assert data == bytes(range(256)) * 400


def test_tls_data_received_error_reaches_the_handler(loop, certs):
    class Failing(_Collect):
        def data_received(self, data):
            raise ZeroDivisionError("app bug")

    class Greeter(asyncio.Protocol):
        def connection_made(self, transport):
            transport.write(b"hello")

    async def main():
        contexts = []
        loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
        srv, tr, proto = await _tls_pair(loop, certs, Greeter, Failing)
        exc = await asyncio.wait_for(proto.done, 10)
        srv.close()
        await srv.wait_closed()
        return contexts, exc

    contexts, exc = loop.run_until_complete(main())
    assert [c["message"] for c in contexts] == ["Fatal error on SSL protocol"]
    assert isinstance(contexts[0]["exception"], ZeroDivisionError)
    assert isinstance(exc, ZeroDivisionError)


def test_tls_custom_sslobject_class_is_used(loop, certs):
    # SSLContext.sslobject_class lets users substitute the SSLObject: its methods must be
    # the ones called for every record.
    calls = {"read": 0, "write": 0}

    class CountingSSLObject(ssl.SSLObject):
        def read(self, *args):
            calls["read"] += 1
            return super().read(*args)

        def write(self, data):
            calls["write"] += 1
            return super().write(data)

    async def main():
        _, client_ctx = _contexts(certs)
        client_ctx.sslobject_class = CountingSSLObject
        srv, tr, proto = await _tls_pair(loop, certs, _Echo, _Collect, ssl=client_ctx)
        tr.write(b"ping")
        await _until(lambda: proto.data == b"ping")
        await _close(tr, proto, srv)
        return bytes(proto.data)

    assert loop.run_until_complete(main()) == b"ping"
    assert calls["read"] >= 1 and calls["write"] >= 1


def test_tls_connections_use_the_native_record_path(ferroloop_loop, certs):
    # ferroloop only: the protocol under a TLS connection is ferroloop's (its record path in
    # Rust) and the application transport's write is the native method.
    from ferroloop import _tls

    async def main():
        srv, tr, proto = await _tls_pair(ferroloop_loop, certs, asyncio.Protocol, _Collect)
        kinds = (type(tr._ssl_protocol), type(tr.write).__name__, isinstance(tr, asyncio.Transport))
        await _close(tr, proto, srv)
        return kinds

    kinds = ferroloop_loop.run_until_complete(main())
    assert kinds == (_tls.SSLProtocol, "builtin_function_or_method", True)


def test_start_tls_uses_the_native_record_path(ferroloop_loop, certs):
    # ferroloop only: start_tls (asyncio's code, borrowed) builds ferroloop's TLS protocol.
    from ferroloop import _tls

    server_ctx, client_ctx = _contexts(certs)

    async def main():
        accepted = ferroloop_loop.create_future()

        def make_server():
            p = _Collect()
            accepted.set_result(p)
            return p

        srv = await ferroloop_loop.create_server(make_server, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        tr, proto = await ferroloop_loop.create_connection(_Collect, "127.0.0.1", port)
        server_proto = await asyncio.wait_for(accepted, 5)
        await asyncio.sleep(0.01)  # its connection_made has run
        upgraded = await asyncio.gather(
            ferroloop_loop.start_tls(tr, proto, client_ctx, server_hostname="localhost"),
            ferroloop_loop.start_tls(
                server_proto.transport, server_proto, server_ctx, server_side=True
            ),
        )
        kinds = [type(t._ssl_protocol) for t in upgraded]
        upgraded[1].write(b"over start_tls")
        await _until(lambda: proto.data)
        for t in upgraded:
            t.close()
        srv.close()
        await srv.wait_closed()
        return kinds, bytes(proto.data)

    assert ferroloop_loop.run_until_complete(main()) == (
        [_tls.SSLProtocol, _tls.SSLProtocol],
        b"over start_tls",
    )


def test_tls_garbage_after_handshake_fails_the_connection(loop, certs):
    # The peer's TCP stream carries bytes that are not a TLS record once the connection is up:
    # decryption fails, the connection is closed and connection_lost() gets the SSLError (an
    # OSError: asyncio logs it only in debug mode, the exception handler is not called).
    make_server, accepted = _collecting_server()

    async def main():
        handled = []
        loop.set_exception_handler(lambda lp, ctx: handled.append(ctx))
        srv, tr, proto = await _tls_pair(loop, certs, make_server, _Collect)
        for _ in range(100):
            if accepted and hasattr(accepted[0], "transport"):
                break
            await asyncio.sleep(0.01)
        raw = accepted[0].transport._ssl_protocol._transport  # the TCP transport below TLS
        raw.write(b"\x17\x03\x03\x00\x10" + b"not a record" * 4)
        exc = await asyncio.wait_for(proto.done, 10)
        srv.close()
        await srv.wait_closed()
        return exc, handled

    exc, handled = loop.run_until_complete(main())
    assert isinstance(exc, ssl.SSLError)
    assert handled == []


def test_tls_peer_aborts_mid_stream(loop, certs):
    # The peer drops the TCP connection without close_notify while data flows.
    make_server, accepted = _collecting_server()

    async def main():
        srv, tr, proto = await _tls_pair(loop, certs, make_server, _Collect)
        for _ in range(100):
            if accepted and hasattr(accepted[0], "transport"):
                break
            await asyncio.sleep(0.01)
        accepted[0].transport.write(b"x" * 100_000)
        accepted[0].transport.abort()
        exc = await asyncio.wait_for(proto.done, 10)
        srv.close()
        await srv.wait_closed()
        return exc, len(proto.data) <= 100_000

    exc, bounded = loop.run_until_complete(main())
    assert exc is None  # what asyncio's SSLProtocol reports for a dropped peer
    assert bounded


def test_tls_protocols_are_freed(ferroloop_loop, certs):
    # ferroloop only: the native base of the TLS protocol takes part in garbage collection, so
    # closed connections leave no protocol behind.
    import gc

    from ferroloop._ferroloop import TlsCore

    async def main():
        for _ in range(20):
            srv, tr, proto = await _tls_pair(ferroloop_loop, certs, _Echo, _Collect)
            tr.write(b"ping")
            await _until(lambda p=proto: p.data)
            await _close(tr, proto, srv)

    ferroloop_loop.run_until_complete(main())
    ferroloop_loop.run_until_complete(asyncio.sleep(0.05))
    gc.collect()
    assert [o for o in gc.get_objects() if isinstance(o, TlsCore)] == []


def test_tls_abort_after_connection_lost(loop, certs):
    # connection_lost() leaves the protocol's transport set to None; aborting the application
    # transport afterwards is harmless (websockets does this when closing).
    class Closer(asyncio.Protocol):
        def connection_made(self, transport):
            transport.close()

    async def main():
        srv, tr, proto = await _tls_pair(loop, certs, Closer, _Collect)
        await asyncio.wait_for(proto.done, 10)
        tr.abort()
        tr.close()
        srv.close()
        await srv.wait_closed()
        return tr.is_closing()

    assert loop.run_until_complete(main()) is True


def test_tls_native_attributes_behave_like_instance_attributes():
    # ferroloop only: TlsCore's attributes (src/tls.rs) as plain instance attributes behave.
    from ferroloop._ferroloop import TlsCore

    class Proto(TlsCore):
        pass

    p = Proto()
    with pytest.raises(AttributeError, match="'Proto' object has no attribute '_transport'"):
        p._transport  # noqa: B018
    p._transport = None
    assert p._transport is None
    marker = object()
    p._state = marker
    assert p._state is marker
    with pytest.raises(AttributeError):
        del p._state


def test_tls_loops_in_several_threads_keep_their_data_apart(loop_factory, certs):
    # Three threads, each with its own loop and TLS connections, echo distinct payloads at
    # the same time (the ssl module releases the GIL while it decrypts): every byte comes back
    # to the connection that sent it.
    import threading

    results: dict[int, bool] = {}

    def worker(n: int) -> None:
        lp = loop_factory()

        async def main() -> bool:
            srv, tr, proto = await _tls_pair(lp, certs, _Echo, _Collect)
            expected = bytearray()
            for i in range(200):
                chunk = bytes([n]) * (100 + i * 37)
                tr.write(chunk)
                expected += chunk
                while len(proto.data) < len(expected):
                    await asyncio.sleep(0)
            await _close(tr, proto, srv)
            return bytes(proto.data) == bytes(expected)

        try:
            results[n] = lp.run_until_complete(asyncio.wait_for(main(), 20))
        finally:
            lp.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {1: True, 2: True, 3: True}
