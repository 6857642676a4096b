"""aiohttp's server and client on asyncio's loop and on ferroloop.

Keep-alive (one connection reused), bounded connection pools, chunked request and response
bodies, large bodies (flow control), websockets, TLS with a certificate from a throwaway CA
(trustme), Unix sockets, client timeouts.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import tempfile
from typing import Any

import pytest
from _support import import_or_skip

aiohttp = import_or_skip("aiohttp")
import_or_skip("trustme")

from _apps import PEERS, SLOW_CANCELLED, loop_module, pattern, serve_aiohttp, sha256, tls_contexts  # noqa: E402


def test_keep_alive_and_pool(run: Any, loop_name: str) -> None:
    async def scenario() -> dict[str, Any]:
        async with serve_aiohttp() as (base, app):
            # One connection, reused by 30 requests in a row.
            connector = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(connector=connector) as session:
                names = []
                for i in range(30):
                    async with session.get(f"{base}/hello", params={"name": f"n{i}"}) as resp:
                        body = await resp.json()
                        assert body["loop"].startswith(loop_name)
                        assert body["keep_alive"] is True
                        names.append(body["hello"])
            sequential_connections = len(app[PEERS])
            app[PEERS].clear()

            # 60 concurrent requests through a pool of at most 4 connections.
            connector = aiohttp.TCPConnector(limit=4)
            async with aiohttp.ClientSession(connector=connector) as session:

                async def one(i: int) -> str:
                    async with session.get(f"{base}/hello", params={"name": str(i)}) as resp:
                        return (await resp.json())["hello"]

                concurrent = await asyncio.gather(*(one(i) for i in range(60)))
            pooled_connections = len(app[PEERS])
        assert concurrent == [str(i) for i in range(60)]
        assert 1 <= pooled_connections <= 4
        return {
            "names": names,
            "sequential_connections": sequential_connections,
            "concurrent": concurrent,
        }

    result = run(scenario)
    assert result["sequential_connections"] == 1
    assert result["names"] == [f"n{i}" for i in range(30)]


def test_chunked_bodies(run: Any) -> None:
    async def scenario() -> dict[str, Any]:
        async with serve_aiohttp() as (base, _app), aiohttp.ClientSession() as session:
            # Chunked response: 16 x 64 KiB pieces with pauses, read as it arrives.
            async with session.get(f"{base}/stream", params={"count": 16}) as resp:
                assert resp.headers.get("Transfer-Encoding", "").lower() == "chunked"
                received = bytearray()
                pieces = 0
                async for chunk in resp.content.iter_chunked(10_000):
                    received += chunk
                    pieces += 1
                stream_loop = resp.headers["X-Loop"]
            expected = b"".join(pattern(65536, seed=i) for i in range(16))
            assert bytes(received) == expected and pieces > 1

            # Chunked request: the body comes from an async generator, size unknown up front.
            async def body() -> Any:
                for i in range(32):
                    yield pattern(50_000, seed=i)
                    await asyncio.sleep(0)

            async with session.post(f"{base}/upload", data=body()) as resp:
                chunked_upload = await resp.json()
            sent = b"".join(pattern(50_000, seed=i) for i in range(32))

            # A large body with a Content-Length each way (exercises flow control).
            big = pattern(8 * 1024 * 1024, seed=7)
            async with session.post(f"{base}/upload", data=io.BytesIO(big)) as resp:
                sized_upload = await resp.json()
            async with session.get(f"{base}/blob", params={"size": 6_000_000}) as resp:
                downloaded = await resp.read()
        assert stream_loop == loop_module()
        assert chunked_upload["loop"] == loop_module()
        return {
            "stream_sha256": sha256(bytes(received)),
            "chunked_upload": {k: v for k, v in chunked_upload.items() if k != "loop"},
            "chunked_upload_expected": {"size": len(sent), "sha256": sha256(sent)},
            "sized_upload": {k: v for k, v in sized_upload.items() if k != "loop"},
            "sized_expected": {"size": len(big), "sha256": sha256(big)},
            "download": (len(downloaded), sha256(downloaded) == sha256(pattern(6_000_000))),
        }

    result = run(scenario)
    assert result["chunked_upload"]["chunked"] is True
    assert result["sized_upload"]["chunked"] is False
    for kind in ("chunked_upload", "sized_upload"):
        expected = result[
            "chunked_upload_expected" if kind == "chunked_upload" else "sized_expected"
        ]
        assert {k: result[kind][k] for k in ("size", "sha256")} == expected
    assert result["download"] == (6_000_000, True)


async def _websocket_session(base: str, session: Any, loop_name: str) -> dict[str, Any]:
    ws_url = base.replace("http", "ws", 1) + "/ws"
    async with session.ws_connect(ws_url, autoping=True, max_msg_size=16 * 1024 * 1024) as ws:
        hello = await ws.receive_json()
        assert hello["loop"].startswith(loop_name)
        texts = []
        for word in ("alpha", "beta", "gamma"):
            await ws.send_str(word)
            texts.append(await ws.receive_str())
        payload = pattern(2 * 1024 * 1024, seed=3)
        await ws.send_bytes(payload)
        binary = (await ws.receive_bytes()).decode()
        await ws.ping(b"are you there")
        await ws.send_str("close-me")
        closing = await ws.receive()
        await ws.close()
        return {
            "secure": hello["secure"],
            "texts": texts,
            "binary_ok": binary == f"{sha256(payload)}:{len(payload)}",
            "close_type": closing.type.name,
            "close_code": ws.close_code,
        }


def test_websockets(run: Any, loop_name: str) -> None:
    async def scenario() -> dict[str, Any]:
        async with serve_aiohttp() as (base, _app), aiohttp.ClientSession() as session:
            first = await _websocket_session(base, session, loop_name)
            # Ten websocket conversations at once.
            many = await asyncio.gather(
                *(_websocket_session(base, session, loop_name) for _ in range(10))
            )
        assert all(item == first for item in many)
        return first

    result = run(scenario)
    assert result == {
        "secure": False,
        "texts": ["ALPHA", "BETA", "GAMMA"],
        "binary_ok": True,
        "close_type": "CLOSE",
        "close_code": 4001,
    }


def test_tls(run: Any, loop_name: str) -> None:
    server_ctx, client_ctx = tls_contexts()

    async def scenario() -> dict[str, Any]:
        async with serve_aiohttp(ssl_context=server_ctx) as (base, app):
            connector = aiohttp.TCPConnector(ssl=client_ctx, limit=1)
            async with aiohttp.ClientSession(connector=connector) as session:
                hellos = []
                for i in range(5):
                    async with session.get(f"{base}/hello", params={"name": f"tls{i}"}) as resp:
                        hello = await resp.json()
                        hellos.append(hello["hello"])
                        assert hello["secure"] is True
                        assert hello["loop"].startswith(loop_name)
                big = pattern(3 * 1024 * 1024, seed=11)
                async with session.post(f"{base}/upload", data=io.BytesIO(big)) as resp:
                    upload = await resp.json()
                async with session.get(f"{base}/stream", params={"count": 8}) as resp:
                    streamed = await resp.read()
                wss = await _websocket_session(base, session, loop_name)
            connections = len(app[PEERS])

            # The certificate the server presents, seen through a plain asyncio TLS stream.
            host, port = base.removeprefix("https://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port), ssl=client_ctx)
            peercert = writer.get_extra_info("peercert")
            tls_version = writer.get_extra_info("ssl_object").version()
            writer.write(b"GET /hello?name=raw HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            raw = await reader.read()
            writer.close()
            await writer.wait_closed()

            # A client that does not trust the throwaway CA must refuse the server.
            async with aiohttp.ClientSession() as untrusting:
                try:
                    async with untrusting.get(f"{base}/hello") as resp:
                        refused = f"accepted: {resp.status}"
                except aiohttp.ClientConnectorCertificateError as exc:
                    refused = f"refused: {type(exc.certificate_error).__name__}"
        return {
            "hellos": hellos,
            "subject_alt_names": sorted(peercert["subjectAltName"]),
            "tls_version": tls_version,
            "raw": raw.startswith(b"HTTP/1.1 200") and b'"hello": "raw"' in raw,
            "upload": (upload["size"], upload["sha256"] == sha256(big)),
            "streamed": sha256(streamed)
            == sha256(b"".join(pattern(65536, seed=i) for i in range(8))),
            "wss": wss,
            "refused": refused,
            "connections": connections,
        }

    result = run(scenario)
    assert result["hellos"] == [f"tls{i}" for i in range(5)]
    assert ("IP Address", "127.0.0.1") in result["subject_alt_names"]
    assert result["upload"] == (3 * 1024 * 1024, True)
    assert result["streamed"] is True
    assert result["wss"]["secure"] is True and result["wss"]["binary_ok"] is True
    assert result["refused"] == "refused: SSLCertVerificationError"
    assert result["raw"] is True and result["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert result["connections"] == 1  # keep-alive over TLS


def test_unix_socket(run: Any) -> None:
    async def scenario(path: str) -> list[Any]:
        async with serve_aiohttp(unix_path=path) as (base, _app):
            connector = aiohttp.UnixConnector(path=path)
            async with aiohttp.ClientSession(connector=connector) as session:
                out = []
                for i in range(5):
                    async with session.get(f"{base}/hello", params={"name": f"u{i}"}) as resp:
                        out.append((await resp.json())["hello"])
                async with session.post(f"{base}/upload", data=pattern(1_000_000)) as resp:
                    out.append((await resp.json())["size"])
        return out

    with tempfile.TemporaryDirectory() as tmp:
        result = run(scenario, os.path.join(tmp, "aiohttp.sock"))
    assert result == ["u0", "u1", "u2", "u3", "u4", 1_000_000]


def test_client_timeout_and_server_cancellation(run: Any) -> None:
    async def scenario() -> list[str]:
        async with (
            serve_aiohttp(handler_cancellation=True) as (base, app),
            aiohttp.ClientSession() as session,
        ):
            out = []
            try:
                timeout = aiohttp.ClientTimeout(total=0.2)
                async with session.get(f"{base}/slow", params={"delay": 5}, timeout=timeout):
                    out.append("no timeout")
            except TimeoutError:
                out.append("client timed out")
            # The client closed its connection: the server must notice and cancel the handler.
            await asyncio.wait_for(app[SLOW_CANCELLED].wait(), 3)
            out.append("server handler cancelled")
            async with session.get(f"{base}/slow", params={"delay": 0.01}) as resp:
                out.append(await resp.text())
            async with session.get(f"{base}/hello") as resp:
                out.append((await resp.json())["hello"])
        return out

    assert run(scenario) == ["client timed out", "server handler cancelled", "late", "world"]


@pytest.mark.parametrize("n_clients", [50])
def test_many_concurrent_clients(run: Any, n_clients: int) -> None:
    async def scenario() -> list[int]:
        async with serve_aiohttp() as (base, _app):

            async def client(i: int) -> int:
                async with aiohttp.ClientSession() as session:
                    total = 0
                    for _ in range(4):
                        async with session.post(f"{base}/upload", data=pattern(20_000 + i)) as r:
                            total += (await r.json())["size"]
                    return total

            return await asyncio.gather(*(client(i) for i in range(n_clients)))

    assert run(scenario) == [4 * (20_000 + i) for i in range(n_clients)]


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_static_files_sendfile(run: Any, tls: bool) -> None:
    from _apps import aiohttp_app

    server_ctx, client_ctx = tls_contexts() if tls else (None, None)
    content = pattern(7_000_000, seed=4)

    async def scenario(static_dir: str) -> dict[str, Any]:
        app = aiohttp_app(static_dir=static_dir)
        async with serve_aiohttp(app, ssl_context=server_ctx) as (base, _app):
            connector = aiohttp.TCPConnector(ssl=client_ctx if tls else False, limit=2)
            async with aiohttp.ClientSession(connector=connector) as session:
                async with session.get(f"{base}/static/big.bin") as resp:
                    whole = await resp.read()
                    length = resp.headers["Content-Length"]
                headers = {"Range": "bytes=1000000-1000099"}
                async with session.get(f"{base}/static/big.bin", headers=headers) as resp:
                    part = (resp.status, await resp.read())

                # Several downloads at once over a pool of two connections.
                async def one() -> str:
                    async with session.get(f"{base}/static/big.bin") as resp:
                        return sha256(await resp.read())

                many = await asyncio.gather(*(one() for _ in range(4)))
                async with session.get(f"{base}/static/missing.bin") as resp:
                    missing = resp.status
        return {
            "whole": (len(whole), sha256(whole) == sha256(content), length),
            "range": (part[0], part[1] == content[1_000_000:1_000_100]),
            "many": set(many) == {sha256(content)},
            "missing": missing,
        }

    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "big.bin"), "wb") as f:
            f.write(content)
        result = run(scenario, tmp)
    assert result == {
        "whole": (7_000_000, True, "7000000"),
        "range": (206, True),
        "many": True,
        "missing": 404,
    }


def test_hostname_resolution(run: Any, loop_name: str) -> None:
    """The client resolves "localhost" through the loop's getaddrinfo (aiohttp's resolver)."""

    async def scenario() -> list[Any]:
        async with serve_aiohttp() as (base, _app):
            port = base.rsplit(":", 1)[1]
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://localhost:{port}/hello") as resp:
                    hello = await resp.json()
            infos = await asyncio.get_running_loop().getaddrinfo(
                "localhost", int(port), type=socket.SOCK_STREAM
            )
        assert hello["loop"].startswith(loop_name)
        return [hello["hello"], ("127.0.0.1", int(port)) in [info[4][:2] for info in infos]]

    assert run(scenario) == ["world", True]
