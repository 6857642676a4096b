"""A web crawler: 1,000 pages with bounded concurrency, against a local server that adds latency.

The program starts its own aiohttp server on 127.0.0.1 (no internet needed). Every page takes
20-60 ms to answer (a deterministic per-page latency), links to three other pages, and some
pages fail once with "503 Service Unavailable" (the crawler retries them). The crawler starts
at /page/0, follows links breadth-first with a pool of --concurrency worker tasks sharing one
aiohttp ClientSession (keep-alive connections, at most --concurrency of them), and stops after
--pages distinct pages.

For comparison it then fetches the first 50 pages one after another and extrapolates that time
to all pages ("sequential, extrapolated"); fetching all 1,000 one by one would take ~40 s.

stdout is the same on every run and on every loop (pages, links, retries, a checksum of the
titles); timings go to stderr.

Run:  python examples/apps/crawler.py                 (asyncio's loop)
      python -m ferroloop examples/apps/crawler.py    (ferroloop)
      python -m ferroloop examples/apps/crawler.py --pages 300 --concurrency 20

Needs aiohttp (pip install -r scripts/requirements-integration.txt).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import sys
import time

import aiohttp
from aiohttp import web

LINK = re.compile(r'href="(/page/\d+)"')
TITLE = re.compile(r"<title>(.*?)</title>")
SEQUENTIAL_SAMPLE = 50


def latency_ms(n: int) -> int:
    """20-60 ms, fixed per page."""
    return 20 + (n * 37) % 41


def make_site(total: int) -> web.Application:
    """A site of `total` linked pages; every 97th page answers 503 the first time."""
    failed_once: set[int] = set()

    async def page(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n >= total:
            raise web.HTTPNotFound()
        await asyncio.sleep(latency_ms(n) / 1000)
        if n % 97 == 13 and n not in failed_once:
            failed_once.add(n)
            raise web.HTTPServiceUnavailable()
        links = [(n * 7 + 1) % total, (n * 13 + 5) % total, (n + 1) % total]
        body = "".join(f'<a href="/page/{m}">page {m}</a>\n' for m in links)
        html = f"<html><head><title>Page {n} ({n * n % 1009})</title></head><body>\n{body}</body></html>"
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/page/{n}", page)
    return app


async def fetch(session: aiohttp.ClientSession, url: str, stats: dict[str, int]) -> str:
    """GET a page, retrying a 503 (up to 3 tries)."""
    for attempt in range(3):
        async with session.get(url) as resp:
            if resp.status == 503:
                stats["retries"] += 1
                await asyncio.sleep(0.01 * (attempt + 1))
                continue
            resp.raise_for_status()
            return await resp.text()
    raise RuntimeError(f"{url} kept failing")


async def crawl(base: str, max_pages: int, concurrency: int) -> dict[str, object]:
    stats = {"retries": 0, "links": 0, "bytes": 0}
    titles: dict[str, str] = {}
    seen = {"/page/0"}
    queue: asyncio.Queue[str] = asyncio.Queue()
    queue.put_nowait("/page/0")
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)

    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while True:
                path = await queue.get()
                try:
                    html = await fetch(session, path, stats)
                    titles[path] = TITLE.search(html).group(1)
                    stats["bytes"] += len(html)
                    for link in LINK.findall(html):
                        stats["links"] += 1
                        if link not in seen and len(seen) < max_pages:
                            seen.add(link)
                            queue.put_nowait(link)
                finally:
                    queue.task_done()

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        await queue.join()
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    checksum = hashlib.sha256(
        "\n".join(f"{path} {titles[path]}" for path in sorted(titles)).encode()
    ).hexdigest()
    return {"pages": len(titles), **stats, "checksum": checksum[:16]}


async def sequential(base: str, count: int) -> float:
    stats = {"retries": 0}
    start = time.perf_counter()
    async with aiohttp.ClientSession(base) as session:
        for n in range(count):
            await fetch(session, f"/page/{n}", stats)
    return time.perf_counter() - start


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    if os.environ.get("FERROLOOP_EXAMPLE_CHECK"):
        print(f"loop: {type(asyncio.get_running_loop()).__module__}", file=sys.stderr)

    runner = web.AppRunner(make_site(args.pages), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        start = time.perf_counter()
        result = await crawl(base, args.pages, args.concurrency)
        elapsed = time.perf_counter() - start
        sample = min(SEQUENTIAL_SAMPLE, args.pages)
        seq = await sequential(base, sample)
    finally:
        await runner.cleanup()

    print(f"crawled {result['pages']} pages with at most {args.concurrency} requests at a time")
    print(f"links seen: {result['links']}")
    print(f"bytes: {result['bytes']}")
    print(f"503 answers retried: {result['retries']}")
    print(f"title checksum: {result['checksum']}")

    estimate = seq / sample * result["pages"]
    print(
        f"concurrent: {elapsed:.2f} s for {result['pages']} pages "
        f"({result['pages'] / elapsed:.0f} pages/s)",
        file=sys.stderr,
    )
    print(
        f"sequential: {seq:.2f} s for {sample} pages, extrapolated to {result['pages']} pages: "
        f"{estimate:.1f} s (speed-up {estimate / elapsed:.0f}x)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    asyncio.run(main())
