"""run_in_executor, default executor, shutdown."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time

import pytest


def _square(x):
    return x * x


def _pid():
    return os.getpid()


def test_default_thread_pool(loop):
    async def main():
        names = await asyncio.gather(
            *(loop.run_in_executor(None, lambda: threading.current_thread().name) for _ in range(4))
        )
        return await loop.run_in_executor(None, _square, 7), names

    result, names = loop.run_in_executor and loop.run_until_complete(main())
    assert result == 49
    assert all(n.startswith("asyncio") for n in names)


def test_blocking_work_does_not_block_the_loop(loop):
    ticks = []

    async def ticker():
        while True:
            ticks.append(1)
            await asyncio.sleep(0.005)

    async def main():
        t = asyncio.ensure_future(ticker())
        await loop.run_in_executor(None, time.sleep, 0.1)
        t.cancel()
        return len(ticks)

    assert loop.run_until_complete(main()) >= 5


def test_process_pool(loop):
    async def main():
        with concurrent.futures.ProcessPoolExecutor(max_workers=2) as pool:
            squares = await asyncio.gather(
                *(loop.run_in_executor(pool, _square, i) for i in range(6))
            )
            pid = await loop.run_in_executor(pool, _pid)
        return squares, pid

    squares, pid = loop.run_until_complete(main())
    assert squares == [0, 1, 4, 9, 16, 25]
    assert pid != os.getpid()


def test_executor_exception_propagates(loop):
    def fail():
        raise ZeroDivisionError("in thread")

    async def main():
        with pytest.raises(ZeroDivisionError, match="in thread"):
            await loop.run_in_executor(None, fail)

    loop.run_until_complete(main())


def test_set_default_executor(loop):
    with pytest.raises(TypeError):
        loop.set_default_executor(object())
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mine")
    loop.set_default_executor(pool)

    async def main():
        return await loop.run_in_executor(None, lambda: threading.current_thread().name)

    assert loop.run_until_complete(main()).startswith("mine")
    loop.run_until_complete(loop.shutdown_default_executor())
    pool.shutdown()


def test_shutdown_default_executor_then_refuse(loop):
    async def main():
        await loop.run_in_executor(None, time.sleep, 0.01)
        await loop.shutdown_default_executor()
        with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
            loop.run_in_executor(None, print)

    loop.run_until_complete(main())


def test_to_thread(loop):
    async def main():
        return await asyncio.to_thread(_square, 9)

    assert loop.run_until_complete(main()) == 81


def test_run_in_executor_coroutine_refused_in_debug(loop):
    async def coro():
        pass

    loop.set_debug(True)
    with pytest.raises(TypeError):
        loop.run_in_executor(None, coro)


def test_cancelled_executor_future(loop):
    async def main():
        fut = loop.run_in_executor(None, time.sleep, 0.05)
        fut.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fut

    loop.run_until_complete(main())
    loop.run_until_complete(loop.shutdown_default_executor())
