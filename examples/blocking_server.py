"""An aiohttp server whose handler calls a blocking function, the mistake the asyncio
tutorials warn about: while ``render_report()`` sleeps (a stand-in for ``requests.get``, a
synchronous database driver or a CPU-heavy function), every other request of the process
waits, here the health checks sent at the same time.

Run it as it is, and on ferroloop with the blocking watchdog, which names the blocking line
while the loop is still blocked::

    python examples/blocking_server.py
    python -m ferroloop --warn-blocking 50ms examples/blocking_server.py

The program serves on 127.0.0.1 (a free port), sends itself one /report request and five
/health checks at once, prints the answers (stdout is the same on every loop) and exits.
How long the health checks waited goes to stderr.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import urllib.request

from aiohttp import ClientSession, web


def fetch_exchange_rates() -> dict[str, float]:
    # Blocking I/O inside a coroutine: the whole event loop stops here.
    time.sleep(0.25)
    return {"EUR": 1.0, "USD": 1.08}


def render_report() -> str:
    rates = fetch_exchange_rates()
    return ", ".join(f"{k}={v}" for k, v in sorted(rates.items()))


async def report(request: web.Request) -> web.Response:
    return web.Response(text=render_report())


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def health_checks(base: str, count: int) -> list[tuple[str, float]]:
    """A monitoring probe in another thread: while the loop is blocked, nobody answers it."""
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        with urllib.request.urlopen(base + "/health", timeout=10) as resp:
            out.append((resp.read().decode(), time.perf_counter() - t0))
    return out


async def main() -> None:
    loop = asyncio.get_running_loop()
    if os.environ.get("FERROLOOP_EXAMPLE_CHECK"):
        print(f"loop: {type(loop).__module__}", file=sys.stderr)
    app = web.Application()
    app.router.add_get("/report", report)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    try:
        async with ClientSession() as session:
            report_request = asyncio.create_task(session.get(base + "/report"))
            await asyncio.sleep(0)  # the report request is on its way
            checks = loop.run_in_executor(None, health_checks, base, 5)
            async with await report_request as resp:
                text = await resp.text()
            answers = await checks
        print(f"/report: {text}")
        print(f"/health: {[answer for answer, _ in answers]}")
        slowest = max(seconds for _, seconds in answers)
        print(f"slowest health check waited {slowest:.3f} s", file=sys.stderr)
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
