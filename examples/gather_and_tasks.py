"""Run coroutines concurrently with asyncio.gather() and asyncio.create_task().

Shows that:
* gather() returns results in *argument* order, whatever order they finish in;
* gather(return_exceptions=True) hands exceptions back as values instead of raising;
* without return_exceptions the first exception propagates to the awaiting caller;
* tasks created up front run concurrently, so they beat awaiting the same
  coroutines one after another.

Run:  python examples/gather_and_tasks.py       (plain asyncio)
      python -m ferroloop examples/gather_and_tasks.py
"""

import asyncio
import os
import sys
import time

finished: list[str] = []


async def fetch(name: str, delay: float) -> str:
    """Pretend to fetch something that takes `delay` seconds."""
    await asyncio.sleep(delay)
    finished.append(name)
    return f"{name}:{delay}"


async def flaky(name: str, delay: float, fail: bool) -> str:
    await asyncio.sleep(delay)
    if fail:
        raise ValueError(f"{name} failed")
    return f"{name} ok"


async def gather_keeps_order() -> None:
    print("== gather keeps argument order ==")
    finished.clear()
    results = await asyncio.gather(
        fetch("slow", 0.06),
        fetch("fast", 0.01),
        fetch("medium", 0.03),
    )
    print("completion order:", finished)
    print("result order:    ", results)


async def gather_with_exceptions() -> None:
    print("== gather(return_exceptions=True) ==")
    results = await asyncio.gather(
        flaky("a", 0.02, fail=False),
        flaky("b", 0.01, fail=True),
        flaky("c", 0.03, fail=False),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, BaseException):
            print(f"  error: {type(result).__name__}({result})")
        else:
            print(f"  value: {result}")

    print("== gather without return_exceptions ==")
    try:
        await asyncio.gather(flaky("x", 0.01, fail=True), flaky("y", 0.02, fail=False))
    except ValueError as exc:
        print(f"  caught: {exc}")
    # Let the still-running sibling finish so nothing is left pending.
    await asyncio.sleep(0.03)


async def concurrent_vs_sequential() -> None:
    print("== create_task: concurrent vs sequential ==")
    delays = [0.05, 0.05, 0.05, 0.05]

    start = time.perf_counter()
    for i, delay in enumerate(delays):
        await fetch(f"seq{i}", delay)
    sequential = time.perf_counter() - start

    start = time.perf_counter()
    tasks = [asyncio.create_task(fetch(f"con{i}", d), name=f"con{i}") for i, d in enumerate(delays)]
    results = [await task for task in tasks]
    concurrent = time.perf_counter() - start

    print("task names:", [task.get_name() for task in tasks])
    print("task results:", results)
    print("all done:", all(task.done() for task in tasks))
    print("concurrent faster:", concurrent < sequential)
    print(f"sequential {sequential:.3f}s, concurrent {concurrent:.3f}s", file=sys.stderr)


async def main() -> None:
    if os.environ.get("FERROLOOP_EXAMPLE_CHECK"):
        print(f"loop: {type(asyncio.get_running_loop()).__module__}", file=sys.stderr)
    await gather_keeps_order()
    await gather_with_exceptions()
    await concurrent_vs_sequential()


if __name__ == "__main__":
    asyncio.run(main())
