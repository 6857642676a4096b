"""contextvars in asyncio: per-request state without passing it around.

Shows:
* each task runs in a *copy* of the context current at create_task() time,
  so concurrent "requests" each see their own request id;
* a value set inside a task does not leak back to the caller;
* call_soon() / call_later() callbacks and Future done-callbacks run in the
  context captured when they were scheduled, or in an explicit context=;
* create_task(context=...) runs a task in a chosen context;
* asyncio.to_thread() carries the context into the thread,
  loop.run_in_executor() does not.

Run:  python examples/context_vars.py       (plain asyncio)
      python -m ferroloop examples/context_vars.py
"""

import asyncio
import contextvars
import os
import sys

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")
log_lines: list[str] = []


def log(message: str) -> None:
    """A logger that tags every line with the current request id."""
    log_lines.append(f"[{request_id.get()}] {message}")


async def load_user(user: str) -> str:
    await asyncio.sleep(0.01)
    log(f"loaded {user}")
    return user.title()


async def handle_request(rid: str, user: str, delay: float) -> str:
    request_id.set(rid)
    log("request started")
    await asyncio.sleep(delay)
    name = await asyncio.create_task(load_user(user))  # child task inherits rid
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.call_soon(log, "call_soon callback")
    loop.call_later(0.005, lambda: (log("call_later callback"), done.set_result(None)))
    await done
    log("request finished")
    return f"{rid}: hello {name}"


def thread_job(label: str) -> str:
    return f"{label} sees request_id={request_id.get()}"


async def main() -> None:
    if os.environ.get("FERROLOOP_EXAMPLE_CHECK"):
        print(f"loop: {type(asyncio.get_running_loop()).__module__}", file=sys.stderr)
    loop = asyncio.get_running_loop()

    print("== tasks get a copy of the context ==")
    replies = await asyncio.gather(
        handle_request("req-1", "alice", 0.02),
        handle_request("req-2", "bob", 0.0),
        handle_request("req-3", "carol", 0.01),
    )
    print("replies:", replies)
    for rid in ("req-1", "req-2", "req-3"):
        mine = [line for line in log_lines if line.startswith(f"[{rid}]")]
        print(f"  {rid}: {[line.split('] ')[1] for line in mine]}")
    print("untagged lines:", [line for line in log_lines if not line.startswith("[req-")])
    print("caller still sees:", request_id.get())

    print("== explicit contexts ==")
    request_id.set("main")
    ctx = contextvars.copy_context()
    ctx.run(request_id.set, "custom")
    seen: list[str] = []
    loop.call_soon(lambda: seen.append(f"call_soon: {request_id.get()}"))
    loop.call_soon(lambda: seen.append(f"call_soon(context=ctx): {request_id.get()}"), context=ctx)

    fut = loop.create_future()
    request_id.set("when-callback-added")
    fut.add_done_callback(lambda f: seen.append(f"done callback: {request_id.get()}"))
    request_id.set("main")
    fut.set_result(None)

    async def report(label: str) -> None:
        seen.append(f"{label}: {request_id.get()}")

    await asyncio.create_task(report("create_task(context=ctx)"), context=ctx)
    await asyncio.sleep(0)
    for line in seen:
        print(" ", line)
    print("  ctx kept its own value:", ctx[request_id])

    print("== threads ==")
    request_id.set("req-thread")
    print(" ", await asyncio.to_thread(thread_job, "to_thread"))
    print(" ", await loop.run_in_executor(None, thread_job, "run_in_executor"))
    ctx = contextvars.copy_context()
    print(" ", await loop.run_in_executor(None, ctx.run, thread_job, "run_in_executor + ctx.run"))


if __name__ == "__main__":
    asyncio.run(main())
