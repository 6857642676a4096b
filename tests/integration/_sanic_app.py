"""A Sanic application for the integration tests.

``make_app(name)`` builds it (JSON, a streamed request body, a streamed response, a websocket,
middleware, a background task). Run as a program it serves with Sanic's own runner in a single
process, the way a user would start it::

    python tests/integration/_sanic_app.py --port 8000                  # asyncio's loop
    python -m ferroloop tests/integration/_sanic_app.py --port 8000     # ferroloop

``USE_UVLOOP=False``: otherwise Sanic installs uvloop's event loop policy (when uvloop is
installed) over whatever policy is set, ferroloop's included.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from typing import Any

from sanic import Sanic, response


def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def make_app(name: str) -> Sanic:
    app = Sanic(name, configure_logging=False)
    # Sanic's TouchUp rewrites its own request-handling code when an app starts, once per
    # process; a second app started in the same process (both loops in one test session)
    # trips over the rewritten code. Not loop related.
    app.config.TOUCHUP = False
    app.config.ACCESS_LOG = False
    app.config.REQUEST_MAX_SIZE = 64 * 1024 * 1024
    app.ctx.ticks = 0

    @app.on_request
    async def stamp(request: Any) -> None:
        request.ctx.seen = True

    @app.on_response
    async def header(request: Any, resp: Any) -> None:
        resp.headers["X-Seen"] = str(getattr(request.ctx, "seen", False))

    async def ticker() -> None:
        while True:
            app.ctx.ticks += 1
            await asyncio.sleep(0.01)

    @app.before_server_start
    async def start_ticker(app: Sanic) -> None:
        app.ctx.ticker = asyncio.get_running_loop().create_task(ticker())

    @app.after_server_stop
    async def stop_ticker(app: Sanic) -> None:
        app.ctx.ticker.cancel()
        try:
            await app.ctx.ticker
        except asyncio.CancelledError:
            pass

    @app.get("/")
    async def index(request: Any) -> Any:
        return response.json(
            {"loop": loop_module(), "args": dict(request.query_args), "ticking": app.ctx.ticks > 0}
        )

    @app.post("/upload", stream=True)
    async def upload(request: Any) -> Any:
        digest = hashlib.sha256()
        size = 0
        while True:
            chunk = await request.stream.read()
            if chunk is None:
                break
            digest.update(chunk)
            size += len(chunk)
        return response.json({"size": size, "sha256": digest.hexdigest()})

    @app.get("/stream")
    async def stream(request: Any) -> Any:
        resp = await request.respond(content_type="text/plain")
        for i in range(int(request.args.get("count", "10"))):
            await resp.send(f"line {i}\n")
            await asyncio.sleep(0)
        await resp.eof()

    @app.websocket("/ws")
    async def ws(request: Any, ws: Any) -> None:
        await ws.send(loop_module())
        async for message in ws:
            if message == "bye":
                await ws.close(code=1000, reason="bye")
                return
            await ws.send(message[::-1])

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = make_app("ferroloop_it_cli")
    app.config.USE_UVLOOP = False
    app.run(host="127.0.0.1", port=args.port, single_process=True, motd=False, access_log=False)
