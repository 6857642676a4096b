"""Core event-loop micro-benchmarks: asyncio vs uvloop vs rloop vs ferroloop.

Usage:
    python bench/bench_core.py [--quick] [--rounds N] [--loops asyncio,uvloop,rloop,ferroloop]
                               [--rows call_soon,...] [--json PATH] [--markdown PATH] [--list]

Every row measures operations per second (higher is better). See bench/README.md.
"""

from __future__ import annotations

import asyncio
import os
import sys
from time import perf_counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import Result, main, measure, row  # noqa: E402


def noop() -> None:
    pass


def trivial() -> int:
    return 1


@row("call_soon", "call_soon", "calls/s")
def bench_call_soon(loop: asyncio.AbstractEventLoop, quick: bool) -> float:
    """Schedule N no-op callbacks with call_soon from inside the running loop and run them all."""

    async def batch(n: int) -> float:
        lp = asyncio.get_running_loop()
        fut = lp.create_future()
        call_soon = lp.call_soon
        t0 = perf_counter()
        for _ in range(n):
            call_soon(noop)
        call_soon(fut.set_result, None)  # FIFO: runs after all the no-ops
        await fut
        return perf_counter() - t0

    return measure(loop, batch, 20_000 if quick else 50_000, quick).rate


TIMER_CHUNK = 1000


@row("timer_cancel", "timer schedule+cancel", "timers/s")
def bench_timer_cancel(loop: asyncio.AbstractEventLoop, quick: bool) -> float:
    """call_later(10, cb) + handle.cancel(), then one loop iteration per 1000 timers to clean up."""

    async def batch(n: int) -> float:
        lp = asyncio.get_running_loop()
        call_later = lp.call_later
        sleep = asyncio.sleep
        t0 = perf_counter()
        for _ in range(n // TIMER_CHUNK):
            for _ in range(TIMER_CHUNK):
                call_later(10, noop).cancel()
            await sleep(0)
        return perf_counter() - t0

    return measure(loop, batch, 20_000 if quick else 50_000, quick, warmup_n=TIMER_CHUNK).rate


@row("sleep0", "sleep(0)", "iter/s")
def bench_sleep0(loop: asyncio.AbstractEventLoop, quick: bool) -> float:
    """A single task doing `await asyncio.sleep(0)` in a loop (one loop iteration each)."""

    async def batch(n: int) -> float:
        sleep = asyncio.sleep
        t0 = perf_counter()
        for _ in range(n):
            await sleep(0)
        return perf_counter() - t0

    return measure(loop, batch, 20_000 if quick else 50_000, quick).rate


GATHER_N = 20_000


async def _one_sleep() -> None:
    await asyncio.sleep(0)


@row("gather_20k", "gather 20k tasks", "tasks/s")
def bench_gather(loop: asyncio.AbstractEventLoop, quick: bool) -> Result:
    """asyncio.gather() of 20 000 trivial coroutines that each await sleep(0) once."""

    async def batch(n: int) -> float:
        t0 = perf_counter()
        await asyncio.gather(*(_one_sleep() for _ in range(n)))
        return perf_counter() - t0

    m = measure(loop, batch, GATHER_N, quick, warmup_n=GATHER_N // 10, min_batches=3)
    return Result(m.rate, f"{GATHER_N / m.rate * 1e3:.1f} ms/gather")


@row("executor", "run_in_executor (sequential)", "calls/s")
def bench_executor(loop: asyncio.AbstractEventLoop, quick: bool) -> float:
    """Sequential `await loop.run_in_executor(None, fn)` with a trivial fn (default executor)."""

    async def batch(n: int) -> float:
        run = asyncio.get_running_loop().run_in_executor
        t0 = perf_counter()
        for _ in range(n):
            await run(None, trivial)
        return perf_counter() - t0

    return measure(loop, batch, 500 if quick else 2000, quick).rate


EXECUTOR_INFLIGHT = 64


@row("executor_64", "run_in_executor (64 in flight)", "calls/s")
def bench_executor_concurrent(loop: asyncio.AbstractEventLoop, quick: bool) -> float:
    """64 coroutines each doing sequential run_in_executor(None, fn): 64 calls always in flight."""

    async def batch(n: int) -> float:
        run = asyncio.get_running_loop().run_in_executor
        per = n // EXECUTOR_INFLIGHT

        async def client() -> None:
            for _ in range(per):
                await run(None, trivial)

        t0 = perf_counter()
        await asyncio.gather(*(client() for _ in range(EXECUTOR_INFLIGHT)))
        return perf_counter() - t0

    n = EXECUTOR_INFLIGHT * (20 if quick else 50)
    return measure(loop, batch, n, quick, warmup_n=EXECUTOR_INFLIGHT * 2).rate


if __name__ == "__main__":
    sys.exit(main(description=__doc__.splitlines()[0]))
