"""contextvars: callbacks run in the context captured when they were scheduled."""

from __future__ import annotations

import asyncio
import contextvars
import sys

var = contextvars.ContextVar("var", default="unset")


def test_callback_sees_context_at_schedule_time(loop):
    out = []
    var.set("outer")
    try:
        loop.call_soon(lambda: out.append(var.get()))
        var.set("changed-after")
        loop.call_soon(lambda: out.append(var.get()))
        loop.call_soon(loop.stop)
        loop.run_forever()
    finally:
        var.set("unset")
    assert out == ["outer", "changed-after"]


def test_callback_changes_do_not_leak_between_callbacks(loop):
    out = []

    def setter():
        var.set("set-by-callback")
        out.append(var.get())

    loop.call_soon(setter)
    loop.call_soon(lambda: out.append(var.get()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ["set-by-callback", "unset"]
    assert var.get() == "unset"


def test_explicit_context_is_shared(loop):
    ctx = contextvars.copy_context()
    out = []
    loop.call_soon(var.set, "in-ctx", context=ctx)
    loop.call_soon(lambda: out.append(var.get()), context=ctx)
    loop.call_later(0.001, lambda: out.append(var.get()), context=ctx)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert out == ["in-ctx", "in-ctx"]
    assert ctx[var] == "in-ctx"


def test_context_entered_twice_is_reported(loop):
    ctx = contextvars.copy_context()
    contexts = []
    loop.set_exception_handler(lambda lp, c: contexts.append(c))

    def run_nested():
        # The loop runs this callback inside ctx; running it there again must fail the way
        # Context.run fails (RuntimeError), reported to the handler, the loop going on.
        ctx.run(lambda: None)

    loop.call_soon(run_nested, context=ctx)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], RuntimeError)


def test_tasks_inherit_context(loop):
    async def child():
        return var.get()

    async def main():
        var.set("task-value")
        return await asyncio.gather(child(), asyncio.to_thread(var.get))

    assert loop.run_until_complete(main()) == ["task-value", "task-value"]
    assert var.get() == "unset"


def test_threadsafe_callbacks_get_the_callers_context(loop):
    import threading

    out = []

    def from_thread():
        var.set("thread-value")
        loop.call_soon_threadsafe(lambda: out.append(var.get()))
        loop.call_soon_threadsafe(loop.stop)

    threading.Thread(target=from_thread).start()
    loop.call_later(10, loop.stop)
    loop.run_forever()
    assert out == ["thread-value"]


def test_handle_context_outlives_its_handle(loop):
    # ferroloop keeps a handle's own context copy out of the cyclic GC while the handle holds
    # it; the context must come back whole (and tracked) once the handle is gone.
    import gc

    var = contextvars.ContextVar("var", default=0)
    seen = []

    async def main():
        var.set(5)
        keep = loop.call_soon(lambda: seen.append(var.get()))
        h = loop.call_soon(lambda: None)
        ctx = h._context  # get_context() is 3.12+ in asyncio
        h.cancel()
        del h
        await asyncio.sleep(0)  # the loop lets go of the cancelled handle
        gc.collect()
        assert gc.is_tracked(ctx)
        assert ctx[var] == 5 and ctx.run(var.get) == 5
        pending = [loop.call_soon(seen.append, i) for i in range(2000)]
        gc.collect()
        await asyncio.sleep(0)
        del keep, pending
        gc.collect()
        return ctx

    ctx = loop.run_until_complete(main())
    assert seen == [5, *range(2000)]
    assert ctx.run(var.get) == 5


def test_subprocess_protocol_callbacks_run_in_the_starting_context(loop, loop_name):
    # Every callback of a subprocess protocol runs in the context of the code that started
    # the process. asyncio 3.11 runs process_exited() and connection_lost() in the child
    # watcher's empty context (fixed in 3.12); ferroloop does what 3.12+ do on every
    # version (README, "Deliberate differences").
    seen = {}

    class Proto(asyncio.SubprocessProtocol):
        def __init__(self, done):
            self.done = done

        def connection_made(self, transport):
            seen["connection_made"] = var.get()

        def pipe_data_received(self, fd, data):
            seen["pipe_data_received"] = var.get()

        def pipe_connection_lost(self, fd, exc):
            seen["pipe_connection_lost"] = var.get()

        def process_exited(self):
            seen["process_exited"] = var.get()

        def connection_lost(self, exc):
            seen["connection_lost"] = var.get()
            self.done.set_result(None)

    async def main():
        var.set("starter")
        done = loop.create_future()
        transport, _ = await loop.subprocess_exec(
            lambda: Proto(done), sys.executable, "-c", "print('x')"
        )
        try:
            await asyncio.wait_for(done, 30)
        finally:
            transport.close()

    loop.run_until_complete(main())
    late = "unset" if loop_name == "asyncio" and sys.version_info < (3, 12) else "starter"
    assert seen == {
        "connection_made": "starter",
        "pipe_data_received": "starter",
        "pipe_connection_lost": "starter",
        "process_exited": late,
        "connection_lost": late,
    }
