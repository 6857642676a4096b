"""Server applications shared by the integration tests.

* ``aiohttp_app()`` / ``serve_aiohttp()``: an aiohttp.web application (keep-alive accounting,
  chunked request and response bodies, websockets, slow handlers) on 127.0.0.1.
* ``starlette_app``: a Starlette application (JSON, streaming, websockets, lifespan, background
  tasks, a sync endpoint run in a thread); importable as ``_apps:starlette_app`` so that the
  uvicorn command line can serve it (``--app-dir tests/integration``).
* ``tls_contexts()``: a throwaway CA (trustme) and the server / client ``ssl.SSLContext``s.

Every handler reports which loop serves it (``type(asyncio.get_running_loop()).__module__``),
so the tests can check the server side ran on the loop under test too.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any


def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that are not all alike (so truncation or reordering shows)."""
    block = bytes((i * 31 + seed) % 251 for i in range(4096))
    return (block * (size // len(block) + 1))[:size]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# aiohttp
# --------------------------------------------------------------------------------------------

# app[PEERS]: the (host, port) of every client connection the server saw.
try:
    from aiohttp import web as _web

    PEERS: Any = _web.AppKey("peers", set)
    SLOW_CANCELLED: Any = _web.AppKey("slow_cancelled", asyncio.Event)
except ImportError:  # the uvicorn / FastAPI tests do not need aiohttp
    PEERS = SLOW_CANCELLED = None


def aiohttp_app(static_dir: str | None = None) -> Any:
    from aiohttp import WSMsgType, web

    peers: set[tuple[str, int]] = set()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[PEERS] = peers
    app[SLOW_CANCELLED] = asyncio.Event()

    def note_peer(request: web.Request) -> None:
        assert request.transport is not None
        peername = request.transport.get_extra_info("peername")
        if peername is not None and not isinstance(peername, str):
            peers.add(tuple(peername[:2]))

    async def hello(request: web.Request) -> web.Response:
        note_peer(request)
        return web.json_response(
            {
                "hello": request.query.get("name", "world"),
                "loop": loop_module(),
                "secure": request.secure,
                "keep_alive": request.keep_alive,
            }
        )

    async def upload(request: web.Request) -> web.Response:
        # Read the body as it arrives, chunked or with a Content-Length.
        note_peer(request)
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response(
            {
                "size": size,
                "sha256": digest.hexdigest(),
                "chunked": request.headers.get("Transfer-Encoding", "").lower() == "chunked",
                "loop": loop_module(),
            }
        )

    async def stream(request: web.Request) -> web.StreamResponse:
        # A chunked response written piece by piece, with pauses between some pieces.
        note_peer(request)
        count = int(request.query.get("count", "16"))
        size = int(request.query.get("size", "65536"))
        response = web.StreamResponse(headers={"X-Loop": loop_module()})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(count):
            await response.write(pattern(size, seed=i))
            if i % 4 == 3:
                await asyncio.sleep(0.001)
        await response.write_eof()
        return response

    async def blob(request: web.Request) -> web.Response:
        size = int(request.query.get("size", "1048576"))
        return web.Response(body=pattern(size), content_type="application/octet-stream")

    async def slow(request: web.Request) -> web.Response:
        try:
            await asyncio.sleep(float(request.query.get("delay", "5")))
        except asyncio.CancelledError:
            # With handler_cancellation=True aiohttp cancels the handler when the client
            # goes away (the transport's connection_lost).
            app[SLOW_CANCELLED].set()
            raise
        return web.Response(text="late")

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None, max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        await ws.send_json({"loop": loop_module(), "secure": request.secure})
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                if msg.data == "close-me":
                    await ws.close(code=4001, message=b"bye")
                    break
                await ws.send_str(msg.data.upper())
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(sha256(msg.data).encode() + b":" + str(len(msg.data)).encode())
        return ws

    app.router.add_get("/hello", hello)
    app.router.add_post("/upload", upload)
    app.router.add_get("/stream", stream)
    app.router.add_get("/blob", blob)
    app.router.add_get("/slow", slow)
    app.router.add_get("/ws", websocket)
    if static_dir is not None:
        # web.FileResponse: loop.sendfile() on plain TCP, a read/write fallback over TLS.
        app.router.add_static("/static", static_dir)
    return app


@asynccontextmanager
async def serve_aiohttp(
    app: Any = None,
    *,
    ssl_context: ssl.SSLContext | None = None,
    unix_path: str | None = None,
    **runner_kwargs: Any,
) -> AsyncIterator[tuple[str, Any]]:
    """Serve ``app`` on 127.0.0.1 (a free port) or on a Unix socket; yield (base URL, app)."""
    from aiohttp import web

    app = aiohttp_app() if app is None else app
    runner = web.AppRunner(app, access_log=None, **runner_kwargs)
    await runner.setup()
    try:
        if unix_path is not None:
            site: web.BaseSite = web.UnixSite(runner, unix_path)
            await site.start()
            yield "http://localhost", app
        else:
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
            await site.start()
            port = runner.addresses[0][1]
            scheme = "https" if ssl_context is not None else "http"
            yield f"{scheme}://127.0.0.1:{port}", app
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------------------------


def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context) for 127.0.0.1 / localhost, signed by a throwaway CA."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    return server, client


def tls_files(directory: str) -> tuple[str, str, str]:
    """Write a throwaway CA and a 127.0.0.1 certificate as PEM files: (cert, key, ca)."""
    import os

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    ca_path = os.path.join(directory, "ca.pem")
    cert.cert_chain_pems[0].write_to_path(cert_path)
    cert.private_key_pem.write_to_path(key_path)
    ca.cert_pem.write_to_path(ca_path)
    return cert_path, key_path, ca_path


# --------------------------------------------------------------------------------------------
# Starlette (served by uvicorn)
# --------------------------------------------------------------------------------------------


def make_starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    state: dict[str, Any] = {"events": [], "background": 0}

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        state["events"].append(f"startup on {loop_module()}")
        yield
        state["events"].append("shutdown")

    async def index(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "loop": loop_module(),
                "events": state["events"],
                "query": dict(request.query_params),
                "http_version": request.scope.get("http_version"),
            }
        )

    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse({"size": len(body), "sha256": sha256(body), "loop": loop_module()})

    async def chunks(request: Request) -> StreamingResponse:
        count = int(request.query_params.get("count", "10"))

        async def generate() -> AsyncIterator[bytes]:
            for i in range(count):
                yield f"chunk {i}\n".encode()
                await asyncio.sleep(0)

        return StreamingResponse(generate(), media_type="text/plain")

    def blocking(request: Request) -> PlainTextResponse:
        # A sync endpoint: Starlette runs it in a worker thread (anyio.to_thread).
        return PlainTextResponse(
            f"thread={threading.current_thread() is not threading.main_thread()}"
        )

    async def count_later() -> None:
        await asyncio.sleep(0)
        state["background"] += 1

    async def background(request: Request) -> JSONResponse:
        return JSONResponse(
            {"scheduled": state["background"]}, background=BackgroundTask(count_later)
        )

    async def background_count(request: Request) -> JSONResponse:
        return JSONResponse({"background": state["background"]})

    async def ws_echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"loop": loop_module()})
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                if message["text"] == "close-me":
                    await websocket.close(code=4002)
                    return
                await websocket.send_text(message["text"][::-1])
            elif message.get("bytes") is not None:
                await websocket.send_bytes(sha256(message["bytes"]).encode())

    async def nodelay(request: Request) -> JSONResponse:
        # TCP_NODELAY of every TCP connection this worker's loop serves (both asyncio's loop
        # and ferroloop's keep their transports in the private ``_transports`` map).
        loop: Any = asyncio.get_running_loop()
        flags = []
        for transport in list(loop._transports.values()):
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                flags.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        return JSONResponse({"nodelay": flags, "pid": os.getpid(), "loop": loop_module()})

    routes = [
        Route("/", index),
        Route("/nodelay", nodelay),
        Route("/echo", echo, methods=["POST"]),
        Route("/chunks", chunks),
        Route("/blocking", blocking),
        Route("/background", background),
        Route("/background-count", background_count),
        WebSocketRoute("/ws", ws_echo),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.record = state
    return app


def __getattr__(name: str) -> Any:
    # ``_apps:starlette_app`` for the uvicorn command line, built on first use.
    if name == "starlette_app":
        return make_starlette_app()
    raise AttributeError(name)
