"""anyio on the loop, driven by plain run_until_complete() (not anyio.run())."""

from __future__ import annotations

import asyncio
import threading

import pytest

anyio = pytest.importorskip("anyio")
to_thread = pytest.importorskip("anyio.to_thread")


def test_worker_threads_belong_to_the_main_task(loop):
    # anyio recognises the task run_until_complete() drives and keeps its to_thread workers
    # for that task's lifetime: short-lived child tasks reuse one idle worker thread. When
    # it does not recognise the root task, each worker is tied to (and stopped with) the
    # child task that started it.
    from anyio._backends._asyncio import find_root_task

    async def child():
        return await to_thread.run_sync(threading.get_ident)

    async def main():
        root = asyncio.current_task()
        idents = {await asyncio.create_task(child()) for _ in range(5)}

        async def which_root():
            return find_root_task() is root

        return await asyncio.create_task(which_root()), len(idents)

    assert loop.run_until_complete(main()) == (True, 1)
