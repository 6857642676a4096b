"""Keep the event loop responsive while blocking work runs elsewhere.

A ticker task ticks every 10 ms. Meanwhile blocking calls run in
* a ThreadPoolExecutor        (loop.run_in_executor),
* a ProcessPoolExecutor       (CPU-bound work in other processes),
* the default executor        (loop.run_in_executor(None, ...)),
* asyncio.to_thread()         (which also carries contextvars into the thread).
The ticker keeps ticking during each of them, proving the loop is not blocked.
Tick counts vary from run to run, so only "> 0" is printed (details on stderr).

Run:  python examples/blocking_work.py       (plain asyncio)
      python -m ferroloop examples/blocking_work.py
"""

import asyncio
import contextvars
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def blocking_io(seconds: float) -> str:
    """Stands in for a blocking library call (file, database, legacy HTTP client)."""
    time.sleep(seconds)
    return f"slept {seconds}s in a worker thread: {threading.current_thread() is not threading.main_thread()}"


def cpu_bound(n: int) -> int:
    """Runs in a child process, so it must be a picklable top-level function."""
    time.sleep(0.1)  # make sure the work takes a while even on a fast machine
    return sum(i * i for i in range(n))


def blocking_with_context(label: str, *, suffix: str = "") -> str:
    time.sleep(0.1)
    return f"{label}{suffix} saw request_id={request_id.get()}"


def explode() -> None:
    time.sleep(0.05)
    raise OSError("disk on fire")


class Ticker:
    def __init__(self) -> None:
        self.ticks = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            self.ticks += 1


async def measure(ticker: Ticker, label: str, awaitable):
    before = ticker.ticks
    start = time.perf_counter()
    result = await awaitable
    ticks = ticker.ticks - before
    elapsed = time.perf_counter() - start
    print(f"{label}: result={result!r}")
    print(f"{label}: ticks during blocking work > 0: {ticks > 0}")
    print(f"{label}: {ticks} ticks in {elapsed:.3f}s", file=sys.stderr)
    return result


async def main() -> None:
    if os.environ.get("FERROLOOP_EXAMPLE_CHECK"):
        print(f"loop: {type(asyncio.get_running_loop()).__module__}", file=sys.stderr)

    loop = asyncio.get_running_loop()
    ticker = Ticker()
    ticker_task = asyncio.create_task(ticker.run())
    await asyncio.sleep(0)

    with ThreadPoolExecutor(max_workers=4) as pool:
        await measure(ticker, "thread pool", loop.run_in_executor(pool, blocking_io, 0.2))

        # Several blocking calls at once: they overlap in the pool's threads.
        start = time.perf_counter()
        results = await asyncio.gather(
            *(loop.run_in_executor(pool, blocking_io, 0.1) for _ in range(4))
        )
        elapsed = time.perf_counter() - start
        print(f"4 parallel calls, all returned: {len(results) == 4}, overlapped: {elapsed < 0.35}")
        print(f"4 parallel calls took {elapsed:.3f}s", file=sys.stderr)

        try:
            await loop.run_in_executor(pool, explode)
        except OSError as exc:
            print(f"exception from the executor: {type(exc).__name__}: {exc}")

    with ProcessPoolExecutor(max_workers=2) as pool:
        futures = [loop.run_in_executor(pool, cpu_bound, n) for n in (10_000, 20_000)]
        await measure(ticker, "process pool", asyncio.gather(*futures))

    await measure(ticker, "default executor", loop.run_in_executor(None, blocking_io, 0.1))

    request_id.set("req-42")
    await measure(ticker, "to_thread", asyncio.to_thread(blocking_with_context, "job", suffix="!"))

    ticker_task.cancel()
    try:
        await ticker_task
    except asyncio.CancelledError:
        print("ticker stopped")


if __name__ == "__main__":
    asyncio.run(main())
