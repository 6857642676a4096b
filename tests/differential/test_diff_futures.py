"""Futures and tasks: results, exceptions, cancellation with messages, done callbacks (added in
contexts, removed, raising), tasks that await futures, sleep, time out, shield, gather, catch
their cancellation and uncancel; stepped one iteration at a time on a virtual clock."""

from __future__ import annotations

import asyncio
import contextvars
import functools

from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from . import MACHINE_MARKS, MS, US, DiffMachine, World, cv, describe_exc, run_machine, scrub

pytestmark = MACHINE_MARKS

# Reports whose moment depends on when the garbage collector frees an object: kept out of the
# trace (the machine retrieves every exception and cancels every task before it lets go).
GC_MESSAGES = ("exception was never retrieved", "Task was destroyed but it is pending")


def outcome(f: asyncio.Future) -> tuple:
    if not f.done():
        return ("pending",)
    if f.cancelled():
        try:
            f.result()
        except asyncio.CancelledError as exc:
            return ("cancelled", exc.args)
    exc = f.exception()
    if exc is not None:
        return ("exception", describe_exc(exc))
    return ("result", scrub(repr(f.result())))


class FutureWorld(World):
    def __init__(self, kind: str, debug: bool = False) -> None:
        super().__init__(kind, debug)
        self.futs: dict[int, asyncio.Future] = {}
        self.dcbs: dict[int, functools.partial] = {}
        self.contexts: dict[int, contextvars.Context] = {}
        self.gc_reports: list[tuple] = []

    def _exception_handler(self, loop, context: dict) -> None:
        message = str(context.get("message"))
        if any(m in message for m in GC_MESSAGES):
            self.gc_reports.append((scrub(message), describe_exc(context.get("exception"))))
            return
        super()._exception_handler(loop, context)

    # ------------------------------------------------------------ futures

    def create_future(self, fid: int) -> None:
        self.futs[fid] = self.loop.create_future()

    def set_result(self, fid: int, value: str) -> None:
        self.futs[fid].set_result(value)

    def set_exception(self, fid: int, kind: str, msg: str) -> None:
        exc = {"ValueError": ValueError, "KeyError": KeyError, "StopIteration": StopIteration}
        self.futs[fid].set_exception(exc[kind](msg))

    def cancel(self, fid: int, msg: str | None) -> bool:
        return self.futs[fid].cancel(msg)

    def outcome(self, fid: int) -> tuple:
        return outcome(self.futs[fid])

    def done_cb(self, cbid: int, action: tuple, fut: asyncio.Future) -> None:
        fid = next(k for k, v in self.futs.items() if v is fut)
        self.record("done-cb", cbid, fid, outcome(fut), cv.get())
        kind = action[0]
        if kind == "raise":
            raise ValueError(action[1])
        if kind == "set":
            cv.set(action[1])
        elif kind == "resolve":
            other = self.futs[action[1]]
            if not other.done():
                other.set_result(f"from-cb-{cbid}")
        elif kind == "cancel":
            self.record("cb-cancel", action[1], self.futs[action[1]].cancel(f"cb-{cbid}"))

    def add_done_callback(self, fid: int, cbid: int, action: tuple, ctx: int | None) -> None:
        if cbid not in self.dcbs:
            self.dcbs[cbid] = functools.partial(self.done_cb, cbid, action)
        context = self.contexts[ctx] if ctx is not None else None
        self.futs[fid].add_done_callback(self.dcbs[cbid], context=context)

    def remove_done_callback(self, fid: int, cbid: int) -> int:
        return self.futs[fid].remove_done_callback(self.dcbs[cbid])

    def new_context(self, ctx: int, value: str) -> None:
        c = contextvars.copy_context()
        c.run(cv.set, value)
        self.contexts[ctx] = c

    # ------------------------------------------------------------ tasks

    async def body(self, tid: int, spec: tuple):
        self.record("task-start", tid, cv.get())
        try:
            result = await self.inner(tid, spec)
        except BaseException as exc:
            self.record("task-raise", tid, describe_exc(exc))
            raise
        self.record("task-return", tid, scrub(repr(result)))
        return result

    async def inner(self, tid: int, spec: tuple):
        kind = spec[0]
        futs = self.futs
        if kind == "await":
            return await futs[spec[1]]
        if kind == "catch":
            try:
                return await futs[spec[1]]
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                self.record("caught", tid, exc.args, task.cancelling())
                then = spec[2]
                if then == "reraise":
                    raise
                if then == "uncancel":
                    self.record("uncancel", tid, task.uncancel())
                    return "swallowed"
                if then == "await_again":
                    return await futs[spec[3]]
                return "caught"
        if kind == "sleep":
            return await asyncio.sleep(spec[1], "slept")
        if kind == "timeout":
            try:
                async with asyncio.timeout(spec[1]):
                    return await futs[spec[2]]
            except TimeoutError:
                self.record("timed-out", tid, asyncio.current_task().cancelling())
                raise
        if kind == "wait_for":
            return await asyncio.wait_for(futs[spec[2]], spec[1])
        if kind == "shield":
            return await asyncio.shield(futs[spec[1]])
        if kind == "gather":
            return await asyncio.gather(*(futs[f] for f in spec[1]), return_exceptions=spec[2])
        if kind == "raise":
            await asyncio.sleep(0)
            raise ValueError(spec[1])
        if kind == "ctx":
            cv.set(spec[1])
            await asyncio.sleep(0)
            return cv.get()
        raise AssertionError(spec)

    def create_task(self, tid: int, spec: tuple, ctx: int | None) -> None:
        context = self.contexts[ctx] if ctx is not None else None
        self.futs[tid] = self.loop.create_task(self.body(tid, spec), context=context)

    def task_cancel(self, tid: int, msg: str | None) -> tuple:
        task = self.futs[tid]
        return (task.cancel(msg), task.cancelling())

    def task_uncancel(self, tid: int) -> int:
        return self.futs[tid].uncancel()

    def task_cancelling(self, tid: int) -> tuple:
        task = self.futs[tid]
        return (task.cancelling(), task.done())

    # ------------------------------------------------------------ stepping

    def step(self, n: int) -> None:
        for _ in range(n):
            self.run_once()

    def advance_and_step(self, ms: int) -> None:
        self.advance(ms * MS)
        self.run_once()

    def before_close(self) -> None:
        for _ in range(4):
            pending = [f for f in self.futs.values() if not f.done()]
            if not pending:
                break
            for f in pending:
                f.cancel()
            for _ in range(4):
                self.run_once()
        for f in self.futs.values():
            if f.done() and not f.cancelled():
                f.exception()


texts = st.sampled_from(["a", "b", "c"])
messages = st.none() | st.sampled_from(["m1", "m2"])


class FutureMachine(DiffMachine):
    world_class = FutureWorld

    def __init__(self) -> None:
        super().__init__()
        self.fids: list[int] = []  # futures and tasks
        self.tids: list[int] = []  # tasks
        self.cbids: list[int] = []
        self.ctxs: list[int] = []
        self._offsets = 0
        cv.set("main")

    def delay(self, ms: int) -> float:
        # Distinct deadlines for every timer a task makes (sleep, timeout, wait_for).
        self._offsets += 1
        return ms * MS + self._offsets * US

    def fid(self, data, label="fid") -> int:
        return data.draw(st.sampled_from(self.fids), label=label)

    # ------------------------------------------------------------ futures

    @rule()
    def create_future(self):
        fid = self.new_id()
        self.each("create_future", fid)
        self.fids.append(fid)

    @precondition(lambda self: self.fids)
    @rule(data=st.data(), value=texts)
    def set_result(self, data, value):
        self.each("set_result", self.fid(data), value)

    @precondition(lambda self: self.fids)
    @rule(
        data=st.data(),
        kind=st.sampled_from(["ValueError", "KeyError", "StopIteration"]),
        msg=texts,
    )
    def set_exception(self, data, kind, msg):
        self.each("set_exception", self.fid(data), kind, msg)

    @precondition(lambda self: self.fids)
    @rule(data=st.data(), msg=messages)
    def cancel(self, data, msg):
        self.each("cancel", self.fid(data), msg)

    @precondition(lambda self: self.fids)
    @rule(data=st.data())
    def outcome(self, data):
        self.each("outcome", self.fid(data))

    @precondition(lambda self: self.fids)
    @rule(data=st.data())
    def add_done_callback(self, data):
        fid = self.fid(data)
        if self.cbids and data.draw(st.booleans(), label="reuse_callback"):
            cbid, action = data.draw(st.sampled_from(self.cbids), label="cbid"), None
        else:
            cbid = self.new_id()
            self.cbids.append(cbid)
            kind = data.draw(st.sampled_from(["none", "raise", "set", "resolve", "cancel"]))
            if kind in ("resolve", "cancel"):
                action = (kind, self.fid(data, "target"))
            elif kind in ("raise", "set"):
                action = (kind, data.draw(texts))
            else:
                action = (kind,)
        ctx = data.draw(st.none() | st.sampled_from(self.ctxs or [None]), label="ctx")
        self.each("add_done_callback", fid, cbid, action, ctx)

    @precondition(lambda self: self.fids and self.cbids)
    @rule(data=st.data())
    def remove_done_callback(self, data):
        cbid = data.draw(st.sampled_from(self.cbids), label="cbid")
        self.each("remove_done_callback", self.fid(data), cbid)

    @rule(value=texts)
    def new_context(self, value):
        ctx = self.new_id()
        self.each("new_context", ctx, value)
        self.ctxs.append(ctx)

    # ------------------------------------------------------------ tasks

    @precondition(lambda self: self.fids)
    @rule(data=st.data())
    def create_task(self, data):
        kind = data.draw(
            st.sampled_from(
                ["await", "catch", "sleep", "timeout", "wait_for", "shield", "gather"]
                + ["raise", "ctx"]
            ),
            label="task_kind",
        )
        ms = st.integers(0, 20)
        if kind in ("await", "shield"):
            spec = (kind, self.fid(data))
        elif kind == "catch":
            then = data.draw(st.sampled_from(["return", "reraise", "uncancel", "await_again"]))
            spec = (kind, self.fid(data), then, self.fid(data, "again"))
        elif kind == "sleep":
            spec = (kind, self.delay(data.draw(ms, label="ms")))
        elif kind in ("timeout", "wait_for"):
            spec = (kind, self.delay(data.draw(ms, label="ms")), self.fid(data))
        elif kind == "gather":
            fids = data.draw(st.lists(st.sampled_from(self.fids), min_size=1, max_size=3))
            spec = (kind, tuple(fids), data.draw(st.booleans(), label="return_exceptions"))
        else:
            spec = (kind, data.draw(texts))
        ctx = data.draw(st.none() | st.sampled_from(self.ctxs or [None]), label="ctx")
        tid = self.new_id()
        self.each("create_task", tid, spec, ctx)
        self.fids.append(tid)
        self.tids.append(tid)

    @precondition(lambda self: self.tids)
    @rule(data=st.data(), msg=messages)
    def task_cancel(self, data, msg):
        self.each("task_cancel", data.draw(st.sampled_from(self.tids), label="tid"), msg)

    @precondition(lambda self: self.tids)
    @rule(data=st.data())
    def task_uncancel(self, data):
        self.each("task_uncancel", data.draw(st.sampled_from(self.tids), label="tid"))

    @precondition(lambda self: self.tids)
    @rule(data=st.data())
    def task_cancelling(self, data):
        self.each("task_cancelling", data.draw(st.sampled_from(self.tids), label="tid"))

    # ------------------------------------------------------------ stepping

    @rule(n=st.integers(1, 3))
    def step(self, n):
        self.each("step", n)

    @rule(ms=st.integers(1, 12))
    def advance_and_step(self, ms):
        self.each("advance_and_step", ms)


class DebugFutureMachine(FutureMachine):
    debug = True


def test_futures_and_tasks_differential():
    run_machine(FutureMachine, 1.5)


def test_futures_and_tasks_differential_debug():
    run_machine(DebugFutureMachine, 0.5)


# ---------------------------------------------------------------- findings as regular tests


async def _noop() -> None:
    pass


def _make_future_and_task(loop):
    return loop.create_future(), loop.create_task(_noop())


def test_debug_task_created_at(loop):
    """In debug mode a task remembers where it was created: the innermost frame of its
    _source_traceback is the function that called create_task() (what "Task was destroyed but
    it is pending!" and "Task exception was never retrieved" show as "created at")."""
    loop.set_debug(True)
    _, task = _make_future_and_task(loop)
    loop.run_until_complete(task)
    assert task._source_traceback[-1].name == "_make_future_and_task"


def test_debug_future_created_at(loop, loop_name):
    """In debug mode asyncio's create_future() records its own frame (base_events.py) as the
    innermost of the future's _source_traceback, below the caller's. ferroloop's
    create_future is native, so the traceback ends at the caller, and "created at" in debug
    reports names the caller's line (a deliberate difference, README)."""
    loop.set_debug(True)
    fut, task = _make_future_and_task(loop)
    loop.run_until_complete(task)
    names = [frame.name for frame in fut._source_traceback]
    if loop_name == "ferroloop":
        assert names[-1] == "_make_future_and_task"
    else:
        assert names[-2:] == ["_make_future_and_task", "create_future"]
