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


# The default executor is ferroloop's native pool behind a ThreadPoolExecutor face
# (src/executor.rs); these pin down what asyncio's ThreadPoolExecutor does.


def test_default_executor_is_a_thread_pool_executor(loop):
    async def main():
        await loop.run_in_executor(None, int)
        return loop._default_executor

    executor = loop.run_until_complete(main())
    assert isinstance(executor, concurrent.futures.ThreadPoolExecutor)
    assert executor._max_workers == min(32, (os.cpu_count() or 1) + 4)
    # Its public submit() works as concurrent.futures documents.
    cf = executor.submit(_square, 5)
    assert cf.result(timeout=5) == 25
    cf = executor.submit(lambda *, x: x + 1, x=1)
    assert cf.result(timeout=5) == 2
    assert list(executor.map(_square, range(4))) == [0, 1, 4, 9]
    failing = executor.submit(_fail_with, KeyError("k"))
    with pytest.raises(KeyError):
        failing.result(timeout=5)
    loop.run_until_complete(loop.shutdown_default_executor())
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(int)


def _fail_with(exc):
    raise exc


def test_thread_state_persists_between_jobs(loop):
    # Workers are long-lived threads: threading.local data set by one job is seen by a later
    # job on the same thread.
    local = threading.local()

    def remember():
        local.count = getattr(local, "count", 0) + 1
        return threading.get_ident(), local.count

    async def main():
        return [await loop.run_in_executor(None, remember) for _ in range(20)]

    results = loop.run_until_complete(main())
    per_thread: dict[int, list[int]] = {}
    for ident, count in results:
        per_thread.setdefault(ident, []).append(count)
    for counts in per_thread.values():
        assert counts == list(range(1, len(counts) + 1))


def test_concurrent_futures_exceptions_become_asyncio_ones(loop):
    def cancelled():
        raise concurrent.futures.CancelledError()

    async def main():
        with pytest.raises(asyncio.CancelledError):
            await loop.run_in_executor(None, cancelled)

    loop.run_until_complete(main())


def test_base_exceptions_from_the_job_reach_the_awaiter(loop):
    class Stop(BaseException):
        pass

    async def main():
        try:
            await loop.run_in_executor(None, _fail_with, Stop())
        except Stop:
            return "caught"

    assert loop.run_until_complete(main()) == "caught"


def test_queued_job_cancelled_before_it_starts_never_runs(loop):
    ran = []
    release = threading.Event()

    async def main():
        # Occupy every worker, then queue one more job and cancel it while it waits.
        workers = min(32, (os.cpu_count() or 1) + 4)
        busy = [loop.run_in_executor(None, release.wait, 5) for _ in range(workers)]
        await asyncio.sleep(0.05)
        late = loop.run_in_executor(None, ran.append, "late")
        late.cancel()
        await asyncio.sleep(0.01)  # asyncio passes the cancellation on in a callback
        release.set()
        await asyncio.gather(*busy)
        await asyncio.sleep(0.05)
        return late.cancelled()

    assert loop.run_until_complete(main())
    assert ran == []


def test_many_jobs_in_flight_all_complete_in_order(loop):
    async def main():
        return await asyncio.gather(*(loop.run_in_executor(None, _square, i) for i in range(500)))

    assert loop.run_until_complete(main()) == [i * i for i in range(500)]


def test_workers_joined_by_shutdown_default_executor(loop):
    def ident():
        time.sleep(0.01)
        return threading.get_ident()

    async def main():
        used = set(await asyncio.gather(*(loop.run_in_executor(None, ident) for _ in range(8))))
        alive = {t.ident for t in threading.enumerate()}
        assert used <= alive
        await loop.shutdown_default_executor()
        return used

    used = loop.run_until_complete(main())
    assert not used & {t.ident for t in threading.enumerate()}


def test_close_without_shutdown_then_exit_is_clean(tmp_path, loop_name):
    # A loop closed (or abandoned) with live workers: the interpreter still exits at once.
    script = tmp_path / "exit.py"
    script.write_text(
        "import asyncio, time, sys\n"
        "import ferroloop\n"
        f"factory = ferroloop.new_event_loop if {loop_name!r} == 'ferroloop' else asyncio.new_event_loop\n"
        "loop = factory()\n"
        "print(loop.run_until_complete(loop.run_in_executor(None, sum, [1, 2, 3])))\n"
        "loop.run_in_executor(None, time.sleep, 0.2)\n"
        "leaked = factory()\n"
        "leaked.run_until_complete(leaked.run_in_executor(None, int))\n"
        "loop.close()\n"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "6"


def test_forked_child_gets_a_clear_error_then_a_fresh_loop_works(ferroloop_loop):
    # ferroloop-only: the parent's pool has no threads in a forked child. Using it there is
    # refused at once (asyncio's ThreadPoolExecutor may wait forever instead); a new loop in
    # the child has its own pool.
    import ferroloop

    ferroloop_loop.run_until_complete(ferroloop_loop.run_in_executor(None, int))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            try:
                ferroloop_loop.run_in_executor(None, int)
            except RuntimeError as exc:
                if "parent process" in str(exc):
                    child = ferroloop.new_event_loop()
                    value = child.run_until_complete(child.run_in_executor(None, sum, [2, 3]))
                    child.run_until_complete(child.shutdown_default_executor())
                    child.close()
                    code = 0 if value == 5 else 3
        finally:
            os.write(w, bytes([code]))
            os._exit(code)
    os.close(w)
    try:
        result = os.read(r, 1)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    assert result == b"\x00"
