"""call_soon / call_soon_threadsafe: ordering, arguments, handles, errors."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
import warnings

import pytest


def test_call_soon_fifo_and_args(loop):
    out = []
    for i in range(50):
        loop.call_soon(out.append, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == list(range(50))


def test_callbacks_added_during_iteration_run_next_iteration(loop):
    out = []

    def first():
        out.append("first")
        loop.call_soon(third)

    def second():
        out.append("second")

    def third():
        out.append("third")
        loop.stop()

    loop.call_soon(first)
    loop.call_soon(second)
    loop.run_forever()
    assert out == ["first", "second", "third"]


def test_stop_finishes_current_iteration_and_keeps_the_rest(loop):
    out = []

    def a():
        out.append("a")
        loop.stop()
        loop.call_soon(out.append, "c")

    loop.call_soon(a)
    loop.call_soon(out.append, "b")
    loop.run_forever()
    assert out == ["a", "b"]
    # "c" was scheduled during the stopped iteration: it runs on the next run.
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ["a", "b", "c"]


def test_stop_before_run_forever_runs_one_iteration(loop):
    out = []
    loop.call_soon(out.append, 1)
    loop.stop()
    loop.run_forever()
    assert out == [1]
    assert not loop.is_running()


def test_handle_cancel(loop):
    out = []
    h = loop.call_soon(out.append, "cancelled")
    loop.call_soon(out.append, "kept")
    assert not h.cancelled()
    h.cancel()
    assert h.cancelled()
    h.cancel()  # idempotent
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ["kept"]


def test_handle_cancels_itself_while_running(loop):
    out = []
    holder = {}

    def cb():
        holder["h"].cancel()
        out.append("ran")

    holder["h"] = loop.call_soon(cb)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ["ran"]
    assert holder["h"].cancelled()


def test_handle_repr(loop):
    def my_callback(x):
        pass

    h = loop.call_soon(my_callback, 42)
    r = repr(h)
    assert r.startswith("<Handle ")
    # Python 3.13 shows a callback's arguments only in debug mode.
    assert ("my_callback(42)" if sys.version_info < (3, 13) else "my_callback()") in r
    h.cancel()
    assert repr(h) == "<Handle cancelled>"


def test_handle_get_context(loop, loop_name):
    import contextvars

    ctx = contextvars.copy_context()
    h = loop.call_soon(lambda: None, context=ctx)
    if loop_name == "asyncio" and not hasattr(h, "get_context"):
        # Handle.get_context() arrived in Python 3.12; ferroloop has it on every version.
        assert h._context is ctx
        h.cancel()
        return
    assert h.get_context() is ctx
    h2 = loop.call_soon(lambda: None)
    assert isinstance(h2.get_context(), contextvars.Context)
    h.cancel()
    h2.cancel()


def test_call_soon_non_callable_raises_type_error_in_debug(loop):
    loop.set_debug(True)
    with pytest.raises(TypeError):
        loop.call_soon(1)
    with pytest.raises(TypeError):
        loop.call_soon_threadsafe("not callable")


def test_call_soon_coroutine_function_refused_in_debug(loop):
    async def coro():
        pass

    loop.set_debug(True)
    with pytest.raises(TypeError, match="coroutines cannot be used with call_soon"):
        loop.call_soon(coro)


def test_non_callable_is_accepted_without_debug_and_fails_when_run(loop):
    """Outside debug mode asyncio checks nothing: the handle is made and the TypeError goes
    to the exception handler when it runs (Sanic's tests pass a Task to call_later and count
    on it). add_reader/add_writer check nothing in any mode."""
    import os

    seen = []
    loop.set_exception_handler(
        lambda lp, ctx: seen.append((ctx["message"], repr(ctx["exception"])))
    )
    r, w = os.pipe()
    try:
        handles = [
            loop.call_soon(1),
            loop.call_soon_threadsafe("x"),
            loop.call_later(0, 0),
            loop.call_at(loop.time(), 2.5),
        ]
        assert [repr(h).split(" ")[-1] for h in handles] == ["1()>", "'x'()>", "0()>", "2.5()>"]
        loop.set_debug(True)
        loop.add_reader(r, 3)
        loop.set_debug(False)
        loop.add_writer(w, 4)
        loop.run_until_complete(asyncio.sleep(0))
        loop.remove_reader(r)
        loop.remove_writer(w)
        loop.run_until_complete(asyncio.sleep(0.01))
    finally:
        os.close(r)
        os.close(w)
    assert sorted(set(seen)) == sorted(
        {
            ("Exception in callback 1()", "TypeError(\"'int' object is not callable\")"),
            ("Exception in callback 'x'()", "TypeError(\"'str' object is not callable\")"),
            ("Exception in callback 0()", "TypeError(\"'int' object is not callable\")"),
            ("Exception in callback 2.5()", "TypeError(\"'float' object is not callable\")"),
            ("Exception in callback 4()", "TypeError(\"'int' object is not callable\")"),
        }
    )


def test_non_callable_is_refused_in_debug(loop):
    loop.set_debug(True)
    for call, method in (
        (lambda: loop.call_soon(1), "call_soon"),
        (lambda: loop.call_soon_threadsafe(1), "call_soon_threadsafe"),
        (lambda: loop.call_later(1, None), "call_at"),
        (lambda: loop.call_at(loop.time(), None), "call_at"),
    ):
        with pytest.raises(TypeError, match=rf"a callable object was expected by {method}\(\)"):
            call()


def test_closed_loop_refuses_callbacks(loop):
    coro = asyncio.sleep(0)
    loop.close()
    for call in (
        lambda: loop.call_soon(print),
        lambda: loop.call_soon_threadsafe(print),
        lambda: loop.call_later(1, print),
        lambda: loop.call_at(loop.time() + 1, print),
        loop.run_forever,
        lambda: loop.run_until_complete(coro),
    ):
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            call()
    coro.close()
    loop.close()  # idempotent


@pytest.mark.parametrize("kwargs", [{}, {"name": "t"}])
def test_create_task_on_a_closed_loop_keeps_the_coroutine_with_the_error(loop, kwargs):
    """create_task() on a closed loop raises from a frame that holds the coroutine: a
    coroutine made only for the call lives as long as the error's traceback, not less.
    (Cython drops a coroutine's "never awaited" warning if it dies while an error is set:
    grpc.aio's Server.__del__ on a closed loop warned only on asyncio's loop.)"""
    import gc
    import weakref

    loop.close()
    refs = []

    async def work():
        pass

    def make():
        coro = work()
        refs.append(weakref.ref(coro))
        return coro

    def call():
        loop.create_task(make(), **kwargs)  # a temporary: no frame of ours holds it

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", RuntimeWarning)
        try:
            call()
        except RuntimeError as e:
            err = e
        assert str(err) == "Event loop is closed"
        assert refs[0]() is not None  # held by a frame of the error's traceback
        assert seen == []
        del err
        gc.collect()
        assert refs[0]() is None
    assert ["never awaited" in str(w.message) for w in seen] == [True]


def test_call_soon_threadsafe_many_threads_loses_nothing(loop):
    per_thread, threads = 2000, 8
    seen = []
    done = threading.Event()

    def producer(tid):
        for i in range(per_thread):
            loop.call_soon_threadsafe(seen.append, (tid, i))

    def check():
        if len(seen) == per_thread * threads:
            loop.stop()
        else:
            loop.call_later(0.005, check)

    ts = [threading.Thread(target=producer, args=(t,)) for t in range(threads)]

    def start():
        for t in ts:
            t.start()

    loop.call_soon(start)
    loop.call_soon(check)
    loop.call_later(30, loop.stop)
    loop.run_forever()
    for t in ts:
        t.join()
    done.set()
    assert len(seen) == per_thread * threads
    for tid in range(threads):
        assert [i for (t, i) in seen if t == tid] == list(range(per_thread))


def test_call_soon_threadsafe_wakes_a_blocked_loop(loop):
    out = []

    def later():
        out.append("woken")
        loop.stop()

    t = threading.Timer(0.05, lambda: loop.call_soon_threadsafe(later))
    t.start()
    loop.call_later(10, loop.stop)  # safety net: the test must not hang
    t0 = loop.time()
    loop.run_forever()
    t.join()
    assert out == ["woken"]
    assert loop.time() - t0 < 5


def test_exception_in_callback_goes_to_handler_and_loop_keeps_running(loop):
    contexts = []
    out = []

    def boom():
        raise ValueError("boom")

    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    loop.call_soon(boom)
    loop.call_soon(out.append, "after")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ["after"]
    assert len(contexts) == 1
    ctx = contexts[0]
    assert set(ctx) >= {"message", "exception", "handle"}
    assert isinstance(ctx["exception"], ValueError)
    assert ctx["message"].startswith("Exception in callback ")
    assert "boom" in ctx["message"]


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_propagate(loop, exc_type):
    out = []

    def raiser():
        raise exc_type()

    loop.call_soon(raiser)
    loop.call_soon(out.append, "pending")
    with pytest.raises(exc_type):
        loop.run_forever()
    assert not loop.is_running()
    # The rest of the iteration was not run; it runs on the next run.
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ["pending"]


def test_default_exception_handler_logs_to_asyncio_logger(loop, caplog):
    def boom():
        raise RuntimeError("logged-boom")

    loop.call_soon(boom)
    loop.call_soon(loop.stop)
    with caplog.at_level("ERROR", logger="asyncio"):
        loop.run_forever()
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert records, "nothing logged to the asyncio logger"
    assert "Exception in callback" in records[0].getMessage()
    assert records[0].exc_info and records[0].exc_info[0] is RuntimeError


def test_exception_handler_errors_are_logged_not_raised(loop, caplog):
    def bad_handler(lp, ctx):
        raise ZeroDivisionError

    def boom():
        raise ValueError

    loop.set_exception_handler(bad_handler)
    loop.call_soon(boom)
    loop.call_soon(loop.stop)
    with caplog.at_level("ERROR", logger="asyncio"):
        loop.run_forever()
    assert any("Unhandled error in exception handler" in r.getMessage() for r in caplog.records)


def test_set_exception_handler_validates(loop):
    with pytest.raises(TypeError):
        loop.set_exception_handler(1)
    assert loop.get_exception_handler() is None

    def h(lp, ctx):
        pass

    loop.set_exception_handler(h)
    assert loop.get_exception_handler() is h
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


def test_call_exception_handler_directly(loop):
    got = []
    loop.set_exception_handler(lambda lp, ctx: got.append((lp, ctx)))
    loop.call_exception_handler({"message": "hello"})
    assert got == [(loop, {"message": "hello"})]


def test_debug_handles_keep_traceback_and_cancel_repr(loop):
    # Debug mode: every handle records where it was created, and a cancelled one keeps the
    # repr it had when cancelled (asyncio's _repr), on plain and timer handles alike.
    loop.set_debug(True)
    h = loop.call_soon(print, "x")
    t = loop.call_later(10, print, "y")
    assert h._source_traceback and t._source_traceback
    assert "test_callbacks.py" in h._source_traceback[-1].filename
    h.cancel()
    t.cancel()
    assert "print" in repr(h) and "cancelled" in repr(h)
    assert "print" in repr(t) and "cancelled" in repr(t)
    assert h._callback is None and t._callback is None
    loop.run_until_complete(asyncio.sleep(0))


def test_debug_handle_data_freed_with_the_handle(ferroloop_loop):
    # ferroloop keeps debug-mode handle data in a side table; it must not outlive the handles.
    import gc

    from ferroloop import _ferroloop

    gc.collect()
    before = _ferroloop._handle_extras_count()
    ferroloop_loop.set_debug(True)
    handles = [ferroloop_loop.call_soon(print) for _ in range(10)]
    handles += [ferroloop_loop.call_later(10, print) for _ in range(10)]
    for h in handles[::2]:
        h.cancel()
    assert _ferroloop._handle_extras_count() == before + 20
    ferroloop_loop.set_debug(False)
    ferroloop_loop.close()
    del handles, h
    gc.collect()
    assert _ferroloop._handle_extras_count() == before


# Future done-callbacks and task steps are scheduled by asyncio's C accelerator; ferroloop
# queues those without a handle object (src/fastcall.rs). What users can observe must not
# change: order, contexts, error reports, propagation.


def test_future_callback_error_reported_like_a_callback_error(loop):
    contexts = []
    out = []

    def boom(fut):
        raise ValueError("boom")

    async def main():
        fut = loop.create_future()
        fut.add_done_callback(boom)
        fut.add_done_callback(lambda f: out.append(f.result()))
        fut.set_result(7)
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    loop.run_until_complete(main())
    assert out == [7]
    assert len(contexts) == 1
    ctx = contexts[0]
    assert isinstance(ctx["exception"], ValueError)
    assert ctx["message"].startswith("Exception in callback ")
    assert "boom" in ctx["message"]
    handle = ctx["handle"]
    assert isinstance(handle, asyncio.Handle)
    assert "boom" in repr(handle)
    assert handle._args is not None and handle._args[0].result() == 7


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_future_callback_keyboard_interrupt_propagates(loop, exc_type):
    def raiser(fut):
        raise exc_type()

    async def main():
        fut = loop.create_future()
        fut.add_done_callback(raiser)
        fut.set_result(None)
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    with pytest.raises(exc_type):
        loop.run_until_complete(main())


def test_future_callbacks_keep_order_and_context_among_plain_callbacks(loop):
    var = contextvars.ContextVar("var", default="unset")
    out = []

    def record(tag):
        out.append((tag, var.get()))

    async def main():
        fut = loop.create_future()
        ctx = contextvars.copy_context()
        ctx.run(var.set, "in ctx")
        fut.add_done_callback(lambda f: record("fut-a"), context=ctx)
        fut.add_done_callback(lambda f: record("fut-b"))
        loop.call_soon(record, "soon-1")
        fut.set_result(None)
        loop.call_soon(record, "soon-2")
        var.set("main")
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert out == [
        ("soon-1", "unset"),
        ("fut-a", "in ctx"),
        ("fut-b", "unset"),
        ("soon-2", "unset"),
    ]


def test_future_callback_queued_then_debug_switched_on(loop, caplog):
    # Queued before debug mode was enabled; runs under debug checks after.
    out = []

    async def main():
        fut = loop.create_future()
        fut.add_done_callback(lambda f: out.append("cb"))
        fut.set_result(None)
        loop.set_debug(True)
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    loop.run_until_complete(main())
    loop.set_debug(False)
    assert out == ["cb"]


def test_c_accelerator_calls_recognised():
    # ferroloop-only: asyncio's C futures and tasks take the handle-less path.
    pytest.importorskip("_asyncio")
    from ferroloop import _ferroloop

    assert _ferroloop._c_call_soon_recognised()


def test_create_future_and_task_follow_patched_asyncio_classes(loop, monkeypatch):
    # asyncio looks futures.Future and tasks.Task up on every call: replacing them (as test
    # suites and instrumentation libraries do) changes what create_future/create_task make,
    # and deleting them is the module's AttributeError.
    class MyFuture(asyncio.Future):
        pass

    class MyTask(asyncio.Task):
        pass

    async def noop():
        return 1

    monkeypatch.setattr(asyncio.futures, "Future", MyFuture)
    monkeypatch.setattr(asyncio.tasks, "Task", MyTask)
    assert type(loop.create_future()) is MyFuture
    task = loop.create_task(noop())
    assert type(task) is MyTask
    assert loop.run_until_complete(task) == 1
    monkeypatch.delattr(asyncio.futures, "Future")
    with pytest.raises(AttributeError, match="Future"):
        loop.create_future()
