"""Async generator hooks and shutdown_asyncgens."""

from __future__ import annotations

import asyncio
import gc


def test_shutdown_asyncgens_finalizes_pending_generators(loop):
    log = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            log.append("finalized")

    async def main():
        g = agen()
        assert await g.__anext__() == 1
        return g

    g = loop.run_until_complete(main())
    assert log == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert log == ["finalized"]
    del g


def test_asyncgen_finalizer_hook_runs_aclose_on_the_loop(loop):
    log = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            log.append(asyncio.get_running_loop() is loop)

    async def main():
        g = agen()
        await g.__anext__()
        del g
        gc.collect()
        for _ in range(5):
            await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert log == [True]


def test_asyncgen_early_break(loop):
    log = []

    async def numbers():
        try:
            for i in range(10):
                yield i
        finally:
            log.append("closed")

    async def main():
        out = []
        async for n in numbers():
            if n == 3:
                break
            out.append(n)
        await asyncio.sleep(0)
        return out

    assert loop.run_until_complete(main()) == [0, 1, 2]
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert log == ["closed"]


def test_shutdown_asyncgens_reports_errors(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def bad():
        try:
            yield 1
        finally:
            raise ValueError("in finally")

    async def main():
        g = bad()
        await g.__anext__()
        return g

    g = loop.run_until_complete(main())
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert len(contexts) == 1
    assert "asynchronous generator" in contexts[0]["message"]
    assert isinstance(contexts[0]["exception"], ValueError)
    assert contexts[0]["asyncgen"] is g


def test_hooks_are_restored_after_run(loop):
    import sys

    before = sys.get_asyncgen_hooks()
    loop.run_until_complete(asyncio.sleep(0))
    assert sys.get_asyncgen_hooks() == before
