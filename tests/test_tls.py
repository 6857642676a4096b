"""TLS over ferroloop's transports: handshake, data, extra info, start_tls, failures."""

from __future__ import annotations

import asyncio
import ssl
import subprocess

import pytest


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A self-signed certificate for 'localhost' / 127.0.0.1, made with the openssl CLI."""
    d = tmp_path_factory.mktemp("tls")
    key, cert = d / "key.pem", d / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


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
