"""Structured concurrency (Python 3.11+): TaskGroup, asyncio.timeout(), timeout_at().

Shows:
* a TaskGroup waits for all its children;
* when one child fails, the group cancels its siblings and raises an
  ExceptionGroup, which `except*` can split by exception type;
* asyncio.timeout() / timeout_at() cancel the enclosed block and raise
  TimeoutError; a timeout can be rescheduled or disabled while running.

Run:  python examples/taskgroup_timeouts.py       (plain asyncio)
      python -m ferroloop examples/taskgroup_timeouts.py
"""

import asyncio
import os
import sys


async def download(name: str, delay: float, log: list[str]) -> str:
    try:
        await asyncio.sleep(delay)
    except asyncio.CancelledError:
        log.append(f"{name} cancelled")
        raise
    log.append(f"{name} done")
    return f"{name}.bin"


async def broken(name: str, delay: float, exc: Exception) -> None:
    await asyncio.sleep(delay)
    raise exc


def describe(group: BaseExceptionGroup) -> str:
    """Render an exception group with its leaves sorted, so output is stable."""
    leaves = sorted(f"{type(e).__name__}({e})" for e in group.exceptions)
    return f"{type(group).__name__}({len(leaves)} sub-exceptions: {', '.join(leaves)})"


async def demo_taskgroup() -> None:
    print("== TaskGroup: all succeed ==")
    log: list[str] = []
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(download(f"file{i}", 0.01 * (3 - i), log)) for i in range(3)]
    print("  results:", [t.result() for t in tasks])
    print("  log:", log)

    print("== TaskGroup: one child fails ==")
    log = []
    try:
        async with asyncio.TaskGroup() as tg:
            slow = tg.create_task(download("slow", 1.0, log))
            slower = tg.create_task(download("slower", 2.0, log))
            tg.create_task(download("quick", 0.01, log))
            tg.create_task(broken("bad", 0.03, ConnectionError("server hung up")))
    except* ConnectionError as eg:
        print("  caught:", describe(eg))
    # The group cancels the remaining children in no particular order: sort.
    print("  log:", sorted(log))
    print("  siblings cancelled:", slow.cancelled(), slower.cancelled())

    print("== TaskGroup: several failures, split with except* ==")
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(broken("a", 0.01, ValueError("bad value")))
            tg.create_task(broken("b", 0.01, KeyError("k")))
            tg.create_task(broken("c", 0.01, ValueError("worse value")))
            tg.create_task(download("d", 1.0, []))
    except* ValueError as eg:
        print("  ValueErrors:", describe(eg))
    except* KeyError as eg:
        print("  KeyErrors:  ", describe(eg))

    print("== TaskGroup: the body itself fails ==")
    log = []
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(download("background", 1.0, log))
            await asyncio.sleep(0.01)
            raise RuntimeError("body failed")
    except* RuntimeError as eg:
        print("  caught:", describe(eg))
    print("  log:", log)


async def demo_timeouts() -> None:
    loop = asyncio.get_running_loop()

    print("== asyncio.timeout ==")
    async with asyncio.timeout(1):
        print("  finished in time:", await download("fast", 0.01, []))

    log: list[str] = []
    try:
        async with asyncio.timeout(0.05) as cm:
            await download("too-slow", 1.0, log)
    except TimeoutError:
        print("  TimeoutError raised, expired:", cm.expired())
    print("  log:", log)

    print("== asyncio.timeout_at ==")
    log = []
    deadline = loop.time() + 0.05
    try:
        async with asyncio.timeout_at(deadline):
            async with asyncio.TaskGroup() as tg:
                tg.create_task(download("part1", 0.01, log))
                tg.create_task(download("part2", 1.0, log))
    except TimeoutError:
        print("  whole group timed out at the deadline")
    print("  log:", log)

    print("== rescheduling ==")
    async with asyncio.timeout(0.02) as cm:
        cm.reschedule(loop.time() + 1)  # we learn the work is allowed to take longer
        await asyncio.sleep(0.05)
    print("  extended deadline, expired:", cm.expired())

    try:
        async with asyncio.timeout(None) as cm:  # start without a deadline
            print("  initial deadline:", cm.when())
            cm.reschedule(loop.time() + 0.02)
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                print("  inside the block the work sees CancelledError")
                raise
    except TimeoutError:
        print("  outside the block it becomes TimeoutError")


async def main() -> None:
    if os.environ.get("FERROLOOP_EXAMPLE_CHECK"):
        print(f"loop: {type(asyncio.get_running_loop()).__module__}", file=sys.stderr)
    await demo_taskgroup()
    await demo_timeouts()


if __name__ == "__main__":
    asyncio.run(main())
