"""A small HTTP service for tests/integration/test_ways_to_run.py, started each way a user starts
an asyncio application (README, "Running an application")::

    python _ways_app.py WAY --port PORT [--ferroloop]

Without ``--ferroloop`` it is an ordinary asyncio program (the reference on asyncio's loop, and
the unmodified program that ``python -m ferroloop _ways_app.py ...`` runs); with it, the program
itself asks for ferroloop, as WAY says:

* ``run``: ``ferroloop.run(main())``, else ``asyncio.run(main())``;
* ``runner``: ``asyncio.Runner(loop_factory=ferroloop.new_event_loop)``, else ``asyncio.Runner()``;
* ``run-loop-factory`` (3.12+): ``asyncio.run(main(), loop_factory=ferroloop.new_event_loop)``,
  else ``asyncio.run(main(), loop_factory=None)``;
* ``aiohttp``: ``web.run_app(app, loop=ferroloop.new_event_loop())``, else ``web.run_app(app)``;
* ``sanic-workers``: Sanic's runner with two worker processes, forked (``Sanic.start_method =
  "fork"``), so that they keep the policy ``python -m ferroloop`` set (no ``--ferroloop``).

The first three serve with ``asyncio.start_server`` (standard library only): Ctrl-C is
``asyncio.Runner``'s (it cancels ``main()``, whose ``finally`` closes the server), SIGTERM the
program's own ``loop.add_signal_handler``. ``web.run_app`` handles both signals itself.

``make_aiohttp_app`` is also the entry function for aiohttp's command line
(``python -m aiohttp.web -H HOST -P PORT _ways_app:make_aiohttp_app``).

Every answer is JSON naming the module of the loop that served it
(``type(asyncio.get_running_loop()).__module__``); the program prints what it did while it
started and stopped, so the tests can check it stopped cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any


def answer(way: str) -> dict[str, Any]:
    return {"loop": type(asyncio.get_running_loop()).__module__, "way": way, "pid": os.getpid()}


def say(text: str) -> None:
    print(text, flush=True)


async def serve(way: str, port: int) -> None:
    """The standard-library service: one JSON answer per connection, until a signal."""
    loop = asyncio.get_running_loop()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            # Something for the default executor too, which the runner shuts down on the way out.
            pid = await loop.run_in_executor(None, os.getpid)
            body = json.dumps({**answer(way), "executor_pid": pid}).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    say(f"serving on {type(loop).__module__}")
    try:
        await stop.wait()
        say("SIGTERM: stopping")
    except asyncio.CancelledError:
        say("cancelled (Ctrl-C): stopping")
        raise
    finally:
        server.close()
        await server.wait_closed()
        loop.remove_signal_handler(signal.SIGTERM)
        say("server closed")


def make_aiohttp_app(argv: list[str] | None = None) -> Any:
    from aiohttp import web

    async def index(request: web.Request) -> web.Response:
        return web.json_response(answer("aiohttp"))

    async def on_startup(app: web.Application) -> None:
        say(f"startup on {type(asyncio.get_running_loop()).__module__}")

    async def on_cleanup(app: web.Application) -> None:
        say("cleanup done")

    app = web.Application()
    app.router.add_get("/", index)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "way", choices=["run", "runner", "run-loop-factory", "aiohttp", "sanic-workers"]
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ferroloop", action="store_true", help="the program asks for ferroloop")
    args = parser.parse_args()
    # The unmodified program does not import ferroloop: under python -m ferroloop only the
    # launcher makes its loops ferroloop's.
    factory = None
    if args.ferroloop:
        import ferroloop

        factory = ferroloop.new_event_loop

    if args.way == "sanic-workers":
        from _sanic_app import make_app
        from sanic import Sanic, response

        Sanic.start_method = "fork"
        app = make_app("ferroloop_ways")
        app.config.USE_UVLOOP = False  # else Sanic installs uvloop's policy where installed

        @app.get("/pid")
        async def pid(request: Any) -> Any:
            return response.json(answer("sanic-workers"))

        app.run(host="127.0.0.1", port=args.port, workers=2, motd=False, access_log=False)
        say("exited")
        return 0

    if args.way == "aiohttp":
        from aiohttp import web

        web.run_app(
            make_aiohttp_app(),
            host="127.0.0.1",
            port=args.port,
            loop=factory() if factory else None,
            print=say,
            access_log=None,
        )
        say("run_app returned")
        return 0

    try:
        if args.way == "run":
            if args.ferroloop:
                ferroloop.run(serve(args.way, args.port))
            else:
                asyncio.run(serve(args.way, args.port))
        elif args.way == "runner":
            with asyncio.Runner(loop_factory=factory) as runner:
                runner.run(serve(args.way, args.port))
        else:
            asyncio.run(serve(args.way, args.port), loop_factory=factory)  # type: ignore[call-arg]
    except KeyboardInterrupt:
        say("KeyboardInterrupt after a clean stop")
    say("exited")
    return 0


if __name__ == "__main__":
    sys.exit(main())
