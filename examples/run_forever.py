"""Drive an event loop by hand: new_event_loop(), run_forever(), stop().

Instead of asyncio.run(), this program creates its own loop, schedules
callbacks and tasks on it and stops it from a callback. It shows:
* call_soon() callbacks run in FIFO order;
* call_later() / call_at() callbacks fire in deadline order, not scheduling order;
* a cancelled TimerHandle never fires;
* ensure_future() / create_task() work before the loop is running;
* stop() ends run_forever() after the current batch of callbacks; callbacks
  scheduled by that batch run the next time the loop runs;
* exceptions raised in callbacks go to the loop's exception handler.

Under `python -m ferroloop` the installed policy makes asyncio.new_event_loop()
return a ferroloop loop, so this program needs no changes either.

Run:  python examples/run_forever.py       (plain asyncio)
      python -m ferroloop examples/run_forever.py
"""

import asyncio
import os
import sys

events: list[str] = []  # plain callbacks and timers
task_events: list[str] = []  # what the tasks do


def record(label: str) -> None:
    events.append(label)


async def report_loop() -> None:
    if os.environ.get("FERROLOOP_EXAMPLE_CHECK"):
        print(f"loop: {type(asyncio.get_running_loop()).__module__}", file=sys.stderr)


async def worker(name: str, delay: float) -> str:
    task_events.append(f"{name} started")
    await asyncio.sleep(delay)
    task_events.append(f"{name} finished")
    return name.upper()


def main() -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(report_loop())
        print("loop running before run_forever:", loop.is_running())

        # Exceptions in plain callbacks cannot propagate anywhere, so the loop
        # passes them to its exception handler.
        def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
            exc = context.get("exception")
            record(f"handler got {type(exc).__name__}: {exc}")

        loop.set_exception_handler(handler)

        print("== timers and callbacks ==")
        now = loop.time()
        loop.call_later(0.08, record, "call_later 0.08")
        loop.call_later(0.04, record, "call_later 0.04")
        loop.call_at(now + 0.06, record, "call_at now+0.06")
        loop.call_later(0.02, record, "call_later 0.02")
        doomed = loop.call_later(0.03, record, "cancelled timer (never runs)")
        doomed.cancel()
        for i in range(3):
            loop.call_soon(record, f"call_soon #{i}")
        loop.call_soon(lambda: 1 / 0)

        # Tasks can be created before the loop runs; they start once it does.
        first = asyncio.ensure_future(worker("alpha", 0.05), loop=loop)
        second = loop.create_task(worker("beta", 0.01))
        both = asyncio.gather(first, second)

        def stop_when_done(fut: asyncio.Future) -> None:
            task_events.append(f"gather done: {fut.result()}")
            loop.call_later(0.05, loop.stop)  # after the last timer (0.08)

        both.add_done_callback(stop_when_done)
        loop.run_forever()
        print("callbacks, in the order they ran:")
        for event in events:
            print("  ", event)
        print("timer handle cancelled:", doomed.cancelled())
        print("tasks:")
        for event in task_events:
            print("  ", event)

        print("== stop() semantics ==")
        events.clear()

        def stopper() -> None:
            record("stopper runs and calls stop()")
            loop.stop()
            loop.call_soon(record, "scheduled by stopper")

        loop.call_soon(stopper)
        loop.call_soon(record, "same batch as stopper")
        loop.run_forever()
        print("  first run:", events)
        events.clear()
        loop.run_until_complete(asyncio.sleep(0))
        print("  next run: ", events)

        events.clear()
        loop.stop()  # stop() before run_forever(): run one iteration, then return
        loop.call_soon(record, "ready callback")
        loop.run_forever()
        print("  stop() before run_forever:", events)
        print("loop running after run_forever:", loop.is_running())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        asyncio.set_event_loop(None)
    print("loop closed:", loop.is_closed())


if __name__ == "__main__":
    main()
