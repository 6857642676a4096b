"""What asyncio changed in Python 3.14 (and kept in 3.15), on both loops: create_task's
keyword arguments (eager_start=, forwarded to the task factory as given), the call-graph
introspection (asyncio.capture_call_graph) and the external one behind ``python -m asyncio
ps/pstree PID``. Earlier versions: the same calls fail the same way on both loops."""

from __future__ import annotations

import asyncio
import contextvars
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from net_support import run

PY314 = sys.version_info >= (3, 14)
needs_314 = pytest.mark.skipif(not PY314, reason="asyncio 3.14+ behaviour")


async def _value(v):
    return v


@needs_314
def test_create_task_eager_start(loop):
    steps = []

    async def child():
        steps.append("child started")
        await asyncio.sleep(0)
        return 7

    async def main():
        task = asyncio.create_task(child(), eager_start=True)
        steps.append("create_task returned")  # an eager task ran up to its first await
        lazy = asyncio.get_running_loop().create_task(_value(1), eager_start=False)
        assert not lazy.done()
        return await task, await lazy

    assert run(loop, main()) == (7, 1)
    assert steps == ["child started", "create_task returned"]


@needs_314
def test_create_task_eager_start_completes_synchronously(loop):
    async def main():
        task = asyncio.get_running_loop().create_task(_value(3), eager_start=True, name="n")
        return task.done(), task.result(), task.get_name()

    assert run(loop, main()) == (True, 3, "n")


@needs_314
def test_create_task_kwargs_reach_the_task_factory_as_given(loop):
    seen = []
    ctx = contextvars.copy_context()

    def factory(lp, coro, **kwargs):
        seen.append(sorted(kwargs))
        kwargs.pop("custom", None)
        return asyncio.Task(coro, loop=lp, **kwargs)

    async def main():
        lp = asyncio.get_running_loop()
        lp.set_task_factory(factory)
        t1 = lp.create_task(_value(1))
        t2 = lp.create_task(_value(2), name="two", context=ctx)
        t3 = asyncio.create_task(_value(3), custom=True, eager_start=True)
        t4 = lp.create_task(_value(4), name=None)
        results = [await t for t in (t1, t2, t3, t4)]
        return results, t2.get_name()

    assert run(loop, main()) == ([1, 2, 3, 4], "two")
    assert seen == [[], ["context", "name"], ["custom", "eager_start"], ["name"]]


@needs_314
def test_create_task_rejects_what_task_rejects(loop):
    async def main():
        lp = asyncio.get_running_loop()
        errors = []
        for kwargs in ({"bogus": 1}, {"loop": lp}):
            coro = _value(0)
            try:
                lp.create_task(coro, **kwargs)
            except TypeError as exc:
                errors.append(type(exc))
            finally:
                coro.close()
        return errors

    assert run(loop, main()) == [TypeError, TypeError]


@pytest.mark.skipif(PY314, reason="before 3.14 create_task takes only name= and context=")
def test_create_task_eager_start_before_314(loop):
    async def main():
        coro = _value(0)
        try:
            asyncio.get_running_loop().create_task(coro, eager_start=True)
        except TypeError:
            return "TypeError"
        finally:
            coro.close()

    assert run(loop, main()) == "TypeError"


@needs_314
def test_capture_call_graph(loop):
    async def leaf(ready, release):
        ready.set_result(None)
        await release

    async def main():
        lp = asyncio.get_running_loop()
        ready, release = lp.create_future(), lp.create_future()
        async with asyncio.TaskGroup() as tg:
            t = tg.create_task(leaf(ready, release), name="leaf")
            await ready
            graph = asyncio.capture_call_graph(t)
            text = asyncio.format_call_graph(t)
            release.set_result(None)
        return graph, text

    graph, text = run(loop, main())
    assert graph.future.get_name() == "leaf"
    assert [f.frame.f_code.co_name for f in graph.call_stack] == ["leaf"]
    assert len(graph.awaited_by) == 1  # the task inside `async with TaskGroup`
    assert "leaf" in text


PS_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    import ferroloop

    async def sleeper(ev):
        await ev.wait()

    async def main():
        ev = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            for i in range(2):
                tg.create_task(sleeper(ev), name=f"sleeper-{i}")
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            ev.set()

    factory = ferroloop.new_event_loop if sys.argv[1] == "ferroloop" else None
    asyncio.run(main(), loop_factory=factory)
    """
)


@needs_314
@pytest.mark.parametrize("command", ["ps", "pstree"])
def test_python_m_asyncio_ps(loop_name, command):
    """``python -m asyncio ps|pstree PID`` reads the tasks of another process from its memory
    (the C tasks' per-thread list and the thread's running loop): it sees ferroloop's tasks as
    it sees asyncio's."""
    child = subprocess.Popen(
        [sys.executable, "-c", PS_CHILD, loop_name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.1)
        res = subprocess.run(
            [sys.executable, "-m", "asyncio", command, str(child.pid)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if res.returncode != 0 and "ermission" in res.stderr:
            pytest.skip(f"reading another process's memory is not permitted here: {res.stderr}")
        assert res.returncode == 0, res.stderr
        assert "sleeper-0" in res.stdout and "sleeper-1" in res.stdout, res.stdout
        assert "sleeper" in res.stdout  # the coroutine names
        if command == "pstree":
            assert "TaskGroup" in res.stdout or "Task-1" in res.stdout, res.stdout
    finally:
        if child.poll() is None:
            child.stdin.write("\n")
            child.stdin.flush()
        try:
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert child.returncode == 0


@needs_314
def test_threadsafe_handle_waits_for_a_running_callback(loop):
    """3.14's ``_ThreadSafeHandle``: another thread asking ``cancelled()`` while the callback
    runs waits until it has finished."""
    started, finished = threading.Event(), threading.Event()
    seen = []

    def callback():
        started.set()
        time.sleep(0.3)
        finished.set()

    def other_thread():
        handle = loop.call_soon_threadsafe(callback)
        seen.append(isinstance(handle, asyncio.events._ThreadSafeHandle))
        started.wait(10)
        seen.append(handle.cancelled())
        seen.append(finished.is_set())
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=other_thread)
    t.start()
    loop.run_forever()
    t.join(10)
    assert seen == [True, False, True]


@pytest.mark.skipif(sys.version_info < (3, 15), reason="per-transport context is 3.15+")
def test_server_connections_run_in_a_copy_of_the_servers_context(loop):
    var = contextvars.ContextVar("var", default="unset")
    seen = []

    class Proto(asyncio.Protocol):
        def connection_made(self, transport):
            seen.append(("made", var.get()))
            var.set("changed by the first callback")

        def data_received(self, data):
            seen.append(("data", var.get()))

    async def main():
        var.set("server")
        server = await loop.create_server(Proto, "127.0.0.1", 0)
        var.set("after")
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"x")
        await w.drain()
        for _ in range(200):
            if len(seen) == 2:
                break
            await asyncio.sleep(0.005)
        w.close()
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert seen == [("made", "server"), ("data", "changed by the first callback")]
