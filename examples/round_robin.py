"""Cooperative multitasking: asyncio.sleep(0) yields to the other ready tasks.

Three workers each do a few steps and call `await asyncio.sleep(0)` between
steps. The loop runs ready callbacks in FIFO order, so the steps interleave in
strict round-robin order: a1 b1 c1 a2 b2 c2 ...  A worker that never yields
(`greedy`) runs all of its steps in one go.

Run:  python examples/round_robin.py       (plain asyncio)
      python -m ferroloop examples/round_robin.py
"""

import asyncio
import os
import sys


async def worker(name: str, steps: int, trace: list[str]) -> int:
    for step in range(1, steps + 1):
        trace.append(f"{name}{step}")
        await asyncio.sleep(0)  # give every other ready task a turn
    return steps


async def greedy(name: str, steps: int, trace: list[str]) -> int:
    for step in range(1, steps + 1):
        trace.append(f"{name}{step}")  # no await: nobody else runs meanwhile
    return steps


async def main() -> None:
    if os.environ.get("FERROLOOP_EXAMPLE_CHECK"):
        print(f"loop: {type(asyncio.get_running_loop()).__module__}", file=sys.stderr)

    trace: list[str] = []
    totals = await asyncio.gather(
        worker("a", 4, trace),
        worker("b", 4, trace),
        worker("c", 4, trace),
    )
    print("round robin:", " ".join(trace))
    print("steps per worker:", totals)

    trace = []
    await asyncio.gather(worker("a", 3, trace), greedy("g", 3, trace), worker("b", 3, trace))
    print("with a greedy task:", " ".join(trace))

    # Tasks with different amounts of work drop out of the rotation when done.
    trace = []
    tasks = [
        asyncio.create_task(worker(name, n, trace)) for name, n in [("x", 1), ("y", 3), ("z", 2)]
    ]
    await asyncio.wait(tasks)
    print("uneven workers:", " ".join(trace))

    # The task that created the others also takes turns with them.
    trace = []
    task = asyncio.create_task(worker("t", 3, trace))
    for step in range(1, 4):
        trace.append(f"main{step}")
        await asyncio.sleep(0)
    await task
    print("main and one task:", " ".join(trace))


if __name__ == "__main__":
    asyncio.run(main())
