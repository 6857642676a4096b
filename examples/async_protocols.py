"""Async context managers, async iterators and async generators.

Shows:
* a class with __aenter__/__aexit__ (and an exception passing through it);
* contextlib.asynccontextmanager and AsyncExitStack;
* a class-based async iterator (__aiter__/__anext__) and async comprehensions;
* async generators: early `break`, explicit aclose(), asend()/athrow(),
  and a generator left suspended that the loop finalizes at shutdown
  (asyncio.run() calls loop.shutdown_asyncgens()).

Run:  python examples/async_protocols.py       (plain asyncio)
      python -m ferroloop examples/async_protocols.py
"""

import asyncio
import contextlib
import os
import sys


class Connection:
    """A fake network connection with async open/close."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.open = False

    async def __aenter__(self) -> "Connection":
        await asyncio.sleep(0.01)
        self.open = True
        print(f"  [{self.name}] connected")
        return self

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        await asyncio.sleep(0.01)
        self.open = False
        status = f"error {exc_type.__name__}: {exc}" if exc_type else "ok"
        print(f"  [{self.name}] closed ({status})")
        return False  # do not swallow exceptions

    async def query(self, sql: str) -> str:
        await asyncio.sleep(0.01)
        return f"{self.name} -> {sql}"


@contextlib.asynccontextmanager
async def transaction(conn: Connection):
    print(f"  [{conn.name}] BEGIN")
    try:
        yield conn
    except Exception:
        print(f"  [{conn.name}] ROLLBACK")
        raise
    else:
        print(f"  [{conn.name}] COMMIT")


class Countdown:
    """Class-based async iterator."""

    def __init__(self, start: int) -> None:
        self.current = start

    def __aiter__(self) -> "Countdown":
        return self

    async def __anext__(self) -> int:
        if self.current <= 0:
            raise StopAsyncIteration
        await asyncio.sleep(0.001)
        self.current -= 1
        return self.current + 1


async def ticks(name: str, limit: int, log: list[str]):
    """Async generator that records when it is finalized."""
    try:
        for i in range(limit):
            await asyncio.sleep(0.001)
            yield i
    finally:
        log.append(f"{name} finalized")


async def running_average():
    """Async generator driven with asend(); athrow() resets it."""
    total = count = 0
    average = None
    while True:
        try:
            value = yield average
        except ValueError:
            total = count = 0
            average = None
            continue
        await asyncio.sleep(0)
        total += value
        count += 1
        average = total / count


# Keeps a suspended generator alive past the end of main().
still_referenced = []


async def forgotten():
    try:
        yield "first"
        yield "second"
    finally:
        # Runs during asyncio.run()'s shutdown_asyncgens(), after main() returned.
        print("forgotten generator: closing at loop shutdown")
        await asyncio.sleep(0)
        print("forgotten generator: closed")


async def main() -> None:
    if os.environ.get("FERROLOOP_EXAMPLE_CHECK"):
        print(f"loop: {type(asyncio.get_running_loop()).__module__}", file=sys.stderr)

    print("== async with ==")
    async with Connection("db") as conn:
        print("  ", await conn.query("SELECT 1"))
    print("  open after exit:", conn.open)

    try:
        async with Connection("db2") as conn, transaction(conn):
            await conn.query("UPDATE t SET x = 1")
            raise KeyError("missing row")
    except KeyError as exc:
        print("  propagated:", repr(exc))

    print("== AsyncExitStack ==")
    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(Connection(f"shard{i}")) for i in range(3)]
        stack.push_async_callback(asyncio.sleep, 0)
        stack.callback(print, "  plain callback runs first (LIFO)")
        results = await asyncio.gather(*(c.query("SELECT 2") for c in conns))
        print("  ", results)

    print("== async iterators ==")
    print("  countdown:", [n async for n in Countdown(5)])
    print("  even squares:", [i * i async for i in ticks("sq", 6, []) if i % 2 == 0])

    print("== async generators ==")
    log: list[str] = []
    async for value in ticks("early-break", 100, log):
        if value == 2:
            break
    # The abandoned generator is closed by the loop's asyncgen finalizer hook.
    await asyncio.sleep(0.05)
    print("  after break:", log)

    log = []
    gen = ticks("explicit", 100, log)
    print("  first two:", await anext(gen), await anext(gen))
    await gen.aclose()
    print("  after aclose:", log)
    print("  anext after aclose:", await anext(gen, "exhausted"))

    avg = running_average()
    await avg.asend(None)  # prime the generator
    print("  averages:", [await avg.asend(v) for v in (10, 20, 30)])
    await avg.athrow(ValueError)
    print("  after reset:", [await avg.asend(v) for v in (1, 2)])
    await avg.aclose()

    leftover = forgotten()
    still_referenced.append(leftover)
    print("  forgotten yields:", await anext(leftover))
    print("main done")


if __name__ == "__main__":
    asyncio.run(main())
