"""httpx's async client (httpcore on anyio) on asyncio's loop and on ferroloop.

Against the local aiohttp server: connection pool limits and keep-alive, streaming downloads
and chunked uploads, timeouts, TLS; and in-process against a Starlette app through
``httpx.ASGITransport``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from _support import import_or_skip

httpx = import_or_skip("httpx")
import_or_skip("aiohttp")
import_or_skip("trustme")

from _apps import PEERS, pattern, serve_aiohttp, sha256, tls_contexts  # noqa: E402


def test_pool_and_keep_alive(run: Any, loop_name: str) -> None:
    async def scenario() -> dict[str, Any]:
        async with serve_aiohttp() as (base, app):
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                sequential = []
                for i in range(20):
                    resp = await client.get("/hello", params={"name": f"s{i}"})
                    assert resp.json()["loop"].startswith(loop_name)
                    sequential.append(resp.json()["hello"])
            sequential_connections = len(app[PEERS])
            app[PEERS].clear()

            limits = httpx.Limits(max_connections=3, max_keepalive_connections=3)
            async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10) as client:
                responses = await asyncio.gather(
                    *(client.get("/hello", params={"name": str(i)}) for i in range(50))
                )
            pooled_connections = len(app[PEERS])
        assert 1 <= pooled_connections <= 3
        return {
            "sequential": sequential,
            "sequential_connections": sequential_connections,
            "concurrent": [r.json()["hello"] for r in responses],
            "http_version": responses[0].http_version,
        }

    result = run(scenario)
    assert result["sequential_connections"] == 1
    assert result["concurrent"] == [str(i) for i in range(50)]
    assert result["http_version"] == "HTTP/1.1"


def test_streaming(run: Any) -> None:
    async def scenario() -> dict[str, Any]:
        async with serve_aiohttp() as (base, _app):
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                received = bytearray()
                pieces = 0
                async with client.stream("GET", "/stream", params={"count": 24}) as resp:
                    async for chunk in resp.aiter_bytes():
                        received += chunk
                        pieces += 1
                    encoding = resp.headers.get("transfer-encoding")

                async def upload() -> AsyncIterator[bytes]:
                    for i in range(40):
                        yield pattern(25_000, seed=i)
                        await asyncio.sleep(0)

                chunked = (await client.post("/upload", content=upload())).json()
                big = pattern(5_000_000, seed=9)
                sized = (await client.post("/upload", content=big)).json()
        expected = b"".join(pattern(65536, seed=i) for i in range(24))
        sent = b"".join(pattern(25_000, seed=i) for i in range(40))
        return {
            "download_ok": bytes(received) == expected,
            "several_pieces": pieces > 1,
            "encoding": encoding,
            "chunked": (chunked["size"], chunked["sha256"] == sha256(sent), chunked["chunked"]),
            "sized": (sized["size"], sized["sha256"] == sha256(big), sized["chunked"]),
        }

    assert run(scenario) == {
        "download_ok": True,
        "several_pieces": True,
        "encoding": "chunked",
        "chunked": (40 * 25_000, True, True),
        "sized": (5_000_000, True, False),
    }


def test_timeouts(run: Any) -> None:
    async def scenario() -> list[str]:
        async with serve_aiohttp() as (base, _app):
            async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(0.2)) as client:
                out = []
                try:
                    await client.get("/slow", params={"delay": 0.6})
                    out.append("no timeout")
                except httpx.ReadTimeout:
                    out.append("read timeout")
                out.append((await client.get("/slow", params={"delay": 0.01})).text)
                # Nothing listens on this port: a connection error, not a hang.
                try:
                    await client.get("http://127.0.0.1:9/")
                    out.append("connected?")
                except httpx.ConnectError:
                    out.append("connect error")
        return out

    assert run(scenario) == ["read timeout", "late", "connect error"]


def test_tls(run: Any) -> None:
    server_ctx, client_ctx = tls_contexts()

    async def scenario() -> list[Any]:
        async with serve_aiohttp(ssl_context=server_ctx) as (base, app):
            async with httpx.AsyncClient(base_url=base, verify=client_ctx, timeout=10) as client:
                out: list[Any] = []
                for i in range(5):
                    body = (await client.get("/hello", params={"name": f"t{i}"})).json()
                    out.append((body["hello"], body["secure"]))
                big = pattern(2_000_000, seed=2)
                up = (await client.post("/upload", content=big)).json()
                out.append((up["size"], up["sha256"] == sha256(big)))
            out.append(len(app[PEERS]))
            async with httpx.AsyncClient(timeout=10) as untrusting:
                try:
                    await untrusting.get(f"{base}/hello")
                    out.append("accepted")
                except httpx.ConnectError as exc:
                    out.append("CERTIFICATE_VERIFY_FAILED" in str(exc))
        return out

    assert run(scenario) == [
        *[(f"t{i}", True) for i in range(5)],
        (2_000_000, True),
        1,
        True,
    ]


def test_asgi_transport(run: Any, loop_name: str) -> None:
    import_or_skip("starlette")
    from _apps import make_starlette_app

    async def scenario() -> list[Any]:
        transport = httpx.ASGITransport(app=make_starlette_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            index = (await client.get("/", params={"a": "b"})).json()
            assert index["loop"].startswith(loop_name)
            echo = (await client.post("/echo", content=b"abc" * 1000)).json()
            lines = (await client.get("/chunks", params={"count": 5})).text.splitlines()
            blocking = (await client.get("/blocking")).text
        return [index["query"], echo["size"], lines, blocking]

    assert run(scenario) == [
        {"a": "b"},
        3000,
        [f"chunk {i}" for i in range(5)],
        "thread=True",
    ]
