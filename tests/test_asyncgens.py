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


def test_firstiter_hook_tracks_generators_and_warns_after_shutdown(loop, loop_name):
    import warnings

    async def agen():
        yield 1

    async def first(g):
        return await g.__anext__()

    async def main():
        g = agen()
        assert await first(g) == 1
        tracked = g in loop._asyncgens
        await g.aclose()
        return tracked

    assert loop.run_until_complete(main()) is True
    loop.run_until_complete(loop.shutdown_asyncgens())
    late = agen()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert loop.run_until_complete(first(late)) == 1
    found = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert len(found) == 1
    assert "was scheduled after loop.shutdown_asyncgens() call" in str(found[0].message)
    # asyncio's warning points at its own hook; ferroloop's at the code that started the
    # generator (README, "Deliberate differences").
    if loop_name == "ferroloop":
        assert found[0].filename == __file__
    assert late in loop._asyncgens
    loop.run_until_complete(late.aclose())
