"""run_forever / run_until_complete / stop / close, tasks and futures on the loop."""

from __future__ import annotations

import asyncio
import gc
import sys
import warnings

import pytest


def test_is_asyncio_loop_and_running_loop(loop):
    assert isinstance(loop, asyncio.AbstractEventLoop)

    async def main():
        return asyncio.get_running_loop()

    assert loop.run_until_complete(main()) is loop
    assert not loop.is_running()


def test_run_until_complete_returns_result_and_raises(loop):
    async def ok():
        await asyncio.sleep(0)
        return 42

    async def bad():
        await asyncio.sleep(0)
        raise KeyError("x")

    assert loop.run_until_complete(ok()) == 42
    with pytest.raises(KeyError):
        loop.run_until_complete(bad())


def test_run_until_complete_marks_its_task_with_asyncios_callback(loop):
    # Libraries find the task run_until_complete() drives by asyncio's private done callback
    # (anyio's find_root_task(), to tie its worker threads to the program's main task).
    from asyncio import base_events

    async def main():
        return [callback for callback, _context in asyncio.current_task()._callbacks]

    assert base_events._run_until_complete_cb in loop.run_until_complete(main())


def test_run_until_complete_on_running_loop_raises(loop):
    async def inner():
        coro = asyncio.sleep(0)
        try:
            with pytest.raises(RuntimeError, match="already running"):
                loop.run_until_complete(coro)
        finally:
            coro.close()
        return "ok"

    assert loop.run_until_complete(inner()) == "ok"


def test_run_forever_while_running_raises(loop):
    async def inner():
        with pytest.raises(RuntimeError, match="already running"):
            loop.run_forever()

    loop.run_until_complete(inner())


def test_other_loop_cannot_run_inside_running_loop(loop_factory):
    outer = loop_factory()
    inner = loop_factory()

    async def main():
        coro = asyncio.sleep(0)
        try:
            with pytest.raises(RuntimeError, match="another loop is running"):
                inner.run_until_complete(coro)
        finally:
            coro.close()

    try:
        outer.run_until_complete(main())
    finally:
        outer.close()
        inner.close()


def test_run_until_complete_stopped_early(loop):
    fut = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError, match="Event loop stopped before Future completed"):
        loop.run_until_complete(fut)
    fut.cancel()


def test_close_running_loop_raises(loop):
    async def main():
        with pytest.raises(RuntimeError, match="Cannot close a running event loop"):
            loop.close()

    loop.run_until_complete(main())
    loop.close()
    assert loop.is_closed()


def test_create_task_name_and_context(loop):
    import contextvars

    var = contextvars.ContextVar("var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in-ctx")

    async def read():
        return var.get()

    async def main():
        t = loop.create_task(read(), name="reader")
        assert t.get_name() == "reader"
        assert await t == "default"
        t2 = loop.create_task(read(), context=ctx)
        return await t2

    assert loop.run_until_complete(main()) == "in-ctx"


def test_task_factory(loop):
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append(kwargs)
        return asyncio.Task(coro, loop=lp, **kwargs)

    with pytest.raises(TypeError):
        loop.set_task_factory(1)
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def main():
        return await loop.create_task(asyncio.sleep(0, "r"), name="n")

    assert loop.run_until_complete(main()) == "r"
    # run_until_complete wraps main() with the factory too; 3.14+ hands the factory
    # create_task's keyword arguments as given (before: name was set on the task afterwards).
    assert calls == [{}, {"name": "n"} if sys.version_info >= (3, 14) else {}]
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None


def test_create_future_belongs_to_loop(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is loop
    loop.call_soon(fut.set_result, 7)
    assert loop.run_until_complete(fut) == 7


def test_debug_flag(loop):
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_slow_callback_warning_in_debug(loop, caplog):
    import time

    loop.set_debug(True)
    loop.slow_callback_duration = 0.01
    loop.call_soon(time.sleep, 0.03)
    loop.call_soon(loop.stop)
    with caplog.at_level("WARNING", logger="asyncio"):
        loop.run_forever()
    assert any("Executing" in r.getMessage() and "took" in r.getMessage() for r in caplog.records)


def test_unclosed_loop_warns(loop_factory):
    lp = loop_factory()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        del lp
        gc.collect()
    assert any(
        issubclass(x.category, ResourceWarning) and "unclosed event loop" in str(x.message)
        for x in w
    )


def test_repr(loop):
    r = repr(loop)
    assert "running=False" in r and "closed=False" in r and "debug=False" in r


def test_gather_wait_and_timeouts(loop):
    async def val(d, v):
        await asyncio.sleep(d)
        return v

    async def main():
        res = await asyncio.gather(val(0.02, "a"), val(0.01, "b"), val(0, "c"))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(val(1, "slow"), 0.01)
        done, pending = await asyncio.wait(
            [asyncio.ensure_future(val(0.01, 1)), asyncio.ensure_future(val(1, 2))],
            return_when=asyncio.FIRST_COMPLETED,
        )
        for p in pending:
            p.cancel()
        async with asyncio.timeout(0.01) as cm:
            pass
        assert not cm.expired()
        return res, [d.result() for d in done]

    assert loop.run_until_complete(main()) == (["a", "b", "c"], [1])


def test_cancellation_propagates(loop):
    async def sleeper():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "cancelled-cleanly"

    async def main():
        t = asyncio.ensure_future(sleeper())
        await asyncio.sleep(0.01)
        t.cancel()
        return await t

    assert loop.run_until_complete(main()) == "cancelled-cleanly"


def test_taskgroup_cancels_siblings(loop):
    async def fail():
        await asyncio.sleep(0.01)
        raise ValueError("child failed")

    async def forever(log):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            log.append("sibling cancelled")
            raise

    async def main():
        log = []
        with pytest.raises(ExceptionGroup) as ei:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(fail())
                tg.create_task(forever(log))
        return log, [type(e).__name__ for e in ei.value.exceptions]

    assert loop.run_until_complete(main()) == (["sibling cancelled"], ["ValueError"])


def test_current_task_and_all_tasks(loop):
    async def main():
        me = asyncio.current_task()
        other = asyncio.ensure_future(asyncio.sleep(0.01))
        tasks = asyncio.all_tasks()
        await other
        return me in tasks and other in tasks

    assert loop.run_until_complete(main()) is True


def test_never_retrieved_exception_reported(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def bad():
        raise ValueError("lost")

    async def main():
        asyncio.ensure_future(bad())
        await asyncio.sleep(0.01)

    loop.run_until_complete(main())
    gc.collect()
    assert any("exception was never retrieved" in c.get("message", "") for c in contexts)


def test_private_ready_and_scheduled_views(loop):
    """Libraries read asyncio's private ``_ready`` (a deque of handles), ``_scheduled`` (a
    heap of timer handles) and ``_timer_cancelled_count``."""
    import asyncio

    def cb():
        pass

    h = loop.call_soon(cb, 1)
    t2 = loop.call_later(20, cb)
    t1 = loop.call_later(10, cb)
    t3 = loop.call_later(30, cb)
    t3.cancel()
    ready = loop._ready
    assert type(ready).__name__ == "deque"
    assert list(ready) == [h]
    assert ready[0]._callback is cb and ready[0]._args == (1,)
    scheduled = loop._scheduled
    assert isinstance(scheduled, list)
    assert scheduled[0] is t1
    assert set(scheduled) == {t1, t2, t3}
    assert loop._timer_cancelled_count == 1
    for t in (t1, t2):
        t.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    assert len(loop._ready) == 0


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("shutdown_asyncgens", ()),
        ("shutdown_default_executor", ()),
        ("sock_recv", (None, 1)),
        ("sock_recv_into", (None, None)),
        ("sock_sendall", (None, b"")),
        ("getaddrinfo", ("localhost", 80)),
        ("getnameinfo", (("127.0.0.1", 80),)),
        ("create_connection", (None,)),
    ],
)
def test_coroutine_methods_carry_asyncios_names(loop, name, args):
    # Warnings ("coroutine ... was never awaited") and the filters that silence them go by
    # the coroutine's __qualname__: asyncio's own, e.g. BaseEventLoop.shutdown_asyncgens.
    coro = getattr(loop, name)(*args)
    try:
        assert coro.__qualname__ == getattr(asyncio.SelectorEventLoop, name).__qualname__
    finally:
        coro.close()


def test_runner_close_on_a_closed_loop_warns_only_as_filtered(loop_factory):
    # asyncio.Runner.close() on a loop the program closed itself makes a shutdown_asyncgens()
    # coroutine it never awaits; pytest-asyncio filters that warning by asyncio's name for it.
    runner = asyncio.Runner(loop_factory=loop_factory)
    loop = runner.get_loop()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", ".*BaseEventLoop.shutdown_asyncgens.*", RuntimeWarning)
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            runner.close()
        gc.collect()
    assert [str(w.message) for w in caught] == []
