"""Scale-out: Dask distributed on asyncio's loop and on ferroloop.

* ``loop.run_in_executor(client.get_executor(), fn, *args)``: a Dask cluster (in-process
  threads, or two worker processes) as the executor of an asyncio program.
* ``LocalCluster(asynchronous=True)`` + ``Client(asynchronous=True)``: Dask's scheduler and
  workers (tornado on asyncio) running on the loop under test itself.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import pytest
from _support import import_or_skip

distributed = import_or_skip("distributed")


def square(x: int) -> int:
    time.sleep(0.005)  # blocking work
    return x * x


def square_where(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def fail(x: int) -> int:
    raise ValueError(f"bad input {x}")


@pytest.mark.parametrize("workers", ["threads", "processes"])
def test_run_in_executor_with_dask(run: Any, workers: str) -> None:
    processes = workers == "processes"
    cluster = distributed.LocalCluster(
        processes=processes,
        n_workers=2 if processes else 1,
        threads_per_worker=1 if processes else 4,
        dashboard_address=None,
    )
    client = distributed.Client(cluster)
    try:
        executor = client.get_executor()

        async def scenario() -> dict[str, Any]:
            loop = asyncio.get_running_loop()
            ticks = 0
            stop = asyncio.Event()

            async def ticker() -> None:
                nonlocal ticks
                while not stop.is_set():
                    ticks += 1
                    await asyncio.sleep(0.005)

            ticking = asyncio.create_task(ticker())
            squares = await asyncio.gather(
                *(loop.run_in_executor(executor, square, i) for i in range(100))
            )
            where = await asyncio.gather(
                *(loop.run_in_executor(executor, square_where, i) for i in range(20))
            )
            try:
                await loop.run_in_executor(executor, fail, 7)
                error = "no error"
            except ValueError as exc:
                error = str(exc)
            stop.set()
            await ticking
            pids = {pid for _, pid in where}
            return {
                "squares": squares,
                "where": [value for value, _ in where],
                "in_other_processes": os.getpid() not in pids if processes else None,
                "error": error,
                "loop_kept_running": ticks > 3,
            }

        result = run(scenario)
    finally:
        client.close()
        cluster.close()
    assert result["squares"] == [i * i for i in range(100)]
    assert result["where"] == [i * i for i in range(20)]
    assert result["in_other_processes"] is (True if processes else None)
    assert result["error"] == "bad input 7"
    assert result["loop_kept_running"] is True


def test_async_cluster_on_the_loop(run: Any, loop_name: str) -> None:
    async def scenario() -> dict[str, Any]:
        async with (
            distributed.LocalCluster(
                processes=False,
                n_workers=2,
                threads_per_worker=1,
                dashboard_address=None,
                asynchronous=True,
            ) as cluster,
            distributed.Client(cluster, asynchronous=True) as client,
        ):
            # The scheduler and the workers run on this very loop.
            assert cluster.scheduler.loop.asyncio_loop is asyncio.get_running_loop()
            futures = client.map(square, range(40))
            total = await client.submit(sum, futures)
            gathered = await client.gather(futures)
            try:
                await client.submit(fail, 3)
                error = "no error"
            except ValueError as exc:
                error = str(exc)
            workers = len(cluster.scheduler.workers)
            # Blocking work in a task still leaves the loop free: the workers use threads.
            ran_in = await client.submit(lambda: threading.current_thread().name, pure=False)
        return {
            "total": total,
            "gathered": gathered,
            "error": error,
            "workers": workers,
            "not_on_loop_thread": ran_in != threading.main_thread().name,
        }

    result = run(scenario)
    assert result == {
        "total": sum(i * i for i in range(40)),
        "gathered": [i * i for i in range(40)],
        "error": "bad input 3",
        "workers": 2,
        "not_on_loop_thread": True,
    }
