"""A producer/consumer pipeline built from asyncio's synchronization primitives.

    producer --(Queue, maxsize=3)--> 3 fetchers --(Queue)--> 1 writer

Shows:
* asyncio.Queue with maxsize: the producer is paused while the queue is full;
* queue.join() / task_done() to know when every item has been processed;
* asyncio.Semaphore bounding how many "downloads" run at the same time;
* asyncio.Event used as a start signal for all workers;
* asyncio.Lock protecting a read-modify-write that spans an await;
* asyncio.PriorityQueue ordering urgent work first.
Which worker handles which item depends on timing, so results are printed
sorted by item.

Run:  python examples/pipeline.py       (plain asyncio)
      python -m ferroloop examples/pipeline.py
"""

import asyncio
import os
import sys
from dataclasses import dataclass, field


@dataclass
class Stats:
    in_flight: int = 0
    max_in_flight: int = 0
    max_queue_size: int = 0
    pages_per_worker: dict[str, int] = field(default_factory=dict)


async def producer(queue: asyncio.Queue, urls: list[str], stats: Stats) -> None:
    for url in urls:
        await queue.put(url)  # waits while the queue is full
        stats.max_queue_size = max(stats.max_queue_size, queue.qsize())
    print(f"producer: queued {len(urls)} urls")


async def fetch(url: str, limit: asyncio.Semaphore, stats: Stats) -> str:
    async with limit:
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        await asyncio.sleep(0.01 + 0.002 * (len(url) % 5))
        stats.in_flight -= 1
    return f"<html>{url}</html>"


async def fetcher(
    name: str,
    start: asyncio.Event,
    urls: asyncio.Queue,
    pages: asyncio.Queue,
    limit: asyncio.Semaphore,
    stats: Stats,
) -> None:
    await start.wait()
    while True:
        url = await urls.get()
        try:
            body = await fetch(url, limit, stats)
            await pages.put((url, len(body)))
            stats.pages_per_worker[name] = stats.pages_per_worker.get(name, 0) + 1
        finally:
            urls.task_done()


async def writer(pages: asyncio.Queue, results: dict[str, int]) -> None:
    while True:
        url, size = await pages.get()
        await asyncio.sleep(0.001)  # pretend to write to disk
        results[url] = size
        pages.task_done()


async def run_pipeline() -> None:
    print("== queue pipeline ==")
    urls = [f"https://example.com/page/{i}" for i in range(12)]
    url_queue: asyncio.Queue[str] = asyncio.Queue(maxsize=3)
    page_queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    limit = asyncio.Semaphore(2)  # at most 2 downloads at once, although 3 fetchers
    start = asyncio.Event()
    stats = Stats()
    results: dict[str, int] = {}

    workers = [
        asyncio.create_task(fetcher(f"fetcher{i}", start, url_queue, page_queue, limit, stats))
        for i in range(3)
    ]
    workers.append(asyncio.create_task(writer(page_queue, results)))
    feeding = asyncio.create_task(producer(url_queue, urls, stats))

    await asyncio.sleep(0.02)
    print("before start: queue full =", url_queue.full(), "processed =", len(results))
    start.set()

    await feeding
    await url_queue.join()  # every url fetched ...
    await page_queue.join()  # ... and every page written
    for worker in workers:
        worker.cancel()
    await asyncio.gather(*workers, return_exceptions=True)

    for url in urls:
        print(f"  {url} -> {results[url]} bytes")
    print("max queue size:", stats.max_queue_size, "(maxsize 3)")
    print("max concurrent downloads:", stats.max_in_flight, "(semaphore 2)")
    print("pages fetched:", sum(stats.pages_per_worker.values()))
    print(f"per worker: {stats.pages_per_worker}", file=sys.stderr)


class Account:
    def __init__(self) -> None:
        self.balance = 0
        self.lock = asyncio.Lock()

    async def deposit_unsafe(self, amount: int) -> None:
        balance = self.balance
        await asyncio.sleep(0)  # e.g. an audit log call; other tasks run here
        self.balance = balance + amount

    async def deposit(self, amount: int) -> None:
        async with self.lock:
            await self.deposit_unsafe(amount)


async def lock_demo() -> None:
    print("== Lock ==")
    unsafe = Account()
    await asyncio.gather(*(unsafe.deposit_unsafe(10) for _ in range(10)))
    print("without lock, updates lost:", unsafe.balance < 100)

    safe = Account()
    await asyncio.gather(*(safe.deposit(10) for _ in range(10)))
    print("with lock, balance:", safe.balance)
    print("lock released:", not safe.lock.locked())


async def priority_demo() -> None:
    print("== PriorityQueue ==")
    jobs: asyncio.PriorityQueue[tuple[int, str]] = asyncio.PriorityQueue()
    for priority, job in [(3, "send newsletter"), (1, "page on-call"), (2, "rebuild index")]:
        jobs.put_nowait((priority, job))
    while not jobs.empty():
        priority, job = await jobs.get()
        print(f"  p{priority}: {job}")
    try:
        jobs.get_nowait()
    except asyncio.QueueEmpty:
        print("  queue drained")


async def main() -> None:
    if os.environ.get("FERROLOOP_EXAMPLE_CHECK"):
        print(f"loop: {type(asyncio.get_running_loop()).__module__}", file=sys.stderr)
    await run_pipeline()
    await lock_demo()
    await priority_demo()


if __name__ == "__main__":
    asyncio.run(main())
