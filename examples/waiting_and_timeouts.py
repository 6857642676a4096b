"""Wait for groups of tasks: as_completed(), wait(), wait_for(), cancellation.

Shows:
* as_completed() yields results in completion order (shortest sleep first);
* wait() with FIRST_COMPLETED, FIRST_EXCEPTION and a timeout;
* wait_for() raising TimeoutError and cancelling the awaited coroutine;
* cancelling a task, the task seeing CancelledError and cleaning up;
* shield() protecting an inner task from the caller's cancellation.

Run:  python examples/waiting_and_timeouts.py       (plain asyncio)
      python -m ferroloop examples/waiting_and_timeouts.py
"""

import asyncio
import os
import sys


async def job(name: str, delay: float) -> str:
    await asyncio.sleep(delay)
    return name


async def failing_job(name: str, delay: float) -> str:
    await asyncio.sleep(delay)
    raise RuntimeError(f"{name} broke")


def names(tasks: set[asyncio.Task]) -> list[str]:
    return sorted(task.get_name() for task in tasks)


async def demo_as_completed() -> None:
    print("== as_completed ==")
    coros = [job("three", 0.09), job("one", 0.03), job("two", 0.06)]
    for i, next_done in enumerate(asyncio.as_completed(coros), start=1):
        print(f"  #{i}: {await next_done}")


async def demo_wait() -> None:
    print("== wait(FIRST_COMPLETED) ==")
    tasks = {
        asyncio.create_task(job("quick", 0.01), name="quick"),
        asyncio.create_task(job("slow", 0.2), name="slow"),
        asyncio.create_task(job("slower", 0.3), name="slower"),
    }
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    print("  done:", names(done), "pending:", names(pending))
    for task in pending:
        task.cancel()
    await asyncio.wait(pending)
    print("  pending cancelled:", all(task.cancelled() for task in pending))

    print("== wait(FIRST_EXCEPTION) ==")
    tasks = {
        asyncio.create_task(job("fine", 0.01), name="fine"),
        asyncio.create_task(failing_job("bad", 0.03), name="bad"),
        asyncio.create_task(job("long", 0.5), name="long"),
    }
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    print("  done:", names(done), "pending:", names(pending))
    for task in sorted(done, key=lambda t: t.get_name()):
        exc = task.exception()
        print(f"  {task.get_name()}: {'error ' + repr(exc) if exc else 'result ' + task.result()}")
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)

    print("== wait(timeout=...) ==")
    tasks = {
        asyncio.create_task(job("in-time", 0.01), name="in-time"),
        asyncio.create_task(job("too-late", 0.5), name="too-late"),
    }
    done, pending = await asyncio.wait(tasks, timeout=0.1)
    print("  done:", names(done), "pending:", names(pending))
    print("  wait() does not cancel on timeout:", not any(t.cancelled() for t in pending))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def slow_worker(log: list[str]) -> str:
    log.append("worker started")
    try:
        await asyncio.sleep(1)
        return "worker finished"
    except asyncio.CancelledError as exc:
        log.append(f"worker cancelled {exc.args}, cleaning up")
        raise
    finally:
        log.append("worker finally")


async def demo_wait_for() -> None:
    print("== wait_for ==")
    print("  in time:", await asyncio.wait_for(job("quick", 0.01), timeout=1))

    log: list[str] = []
    try:
        await asyncio.wait_for(slow_worker(log), timeout=0.05)
    except TimeoutError as exc:
        # Since Python 3.11 asyncio.TimeoutError is the builtin TimeoutError.
        print("  timed out:", type(exc).__name__, isinstance(exc, asyncio.TimeoutError))
    print("  worker log:", log)

    log = []
    task = asyncio.create_task(slow_worker(log))
    try:
        await asyncio.wait_for(task, timeout=0.05)
    except TimeoutError:
        print("  task awaited by wait_for was cancelled:", task.cancelled())


async def demo_cancel() -> None:
    print("== cancel ==")
    log: list[str] = []
    task = asyncio.create_task(slow_worker(log))
    await asyncio.sleep(0.01)
    print("  cancel() requested:", task.cancel("shutting down"))
    try:
        await task
    except asyncio.CancelledError as exc:
        print("  awaiting a cancelled task raises CancelledError", exc.args)
    print("  cancelled:", task.cancelled(), "done:", task.done())
    print("  worker log:", log)
    print("  cancel() on a finished task:", task.cancel())

    print("== shield ==")
    inner = asyncio.create_task(job("inner result", 0.2))
    outer = asyncio.ensure_future(asyncio.shield(inner))
    await asyncio.sleep(0.01)
    outer.cancel()
    try:
        await outer
    except asyncio.CancelledError:
        print("  outer cancelled:", outer.cancelled())
    print("  inner still running:", not inner.done())
    print("  inner result:", await inner)


async def main() -> None:
    if os.environ.get("FERROLOOP_EXAMPLE_CHECK"):
        print(f"loop: {type(asyncio.get_running_loop()).__module__}", file=sys.stderr)
    await demo_as_completed()
    await demo_wait()
    await demo_wait_for()
    await demo_cancel()


if __name__ == "__main__":
    asyncio.run(main())
