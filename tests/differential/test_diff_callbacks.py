"""call_soon / call_soon_threadsafe / call_later / call_at / cancel, callbacks that schedule,
cancel, raise, stop the loop or change their context, run one iteration at a time on a
virtual clock; run_until_complete(sleep(0)) in between."""

from __future__ import annotations

import asyncio
import contextvars
import threading

from hypothesis import strategies as st
from hypothesis.stateful import Bundle, consumes, multiple, rule

from . import MACHINE_MARKS, MS, US, DiffMachine, World, cv, run_machine

pytestmark = MACHINE_MARKS


class CallbackWorld(World):
    def __init__(self, kind: str, debug: bool = False) -> None:
        super().__init__(kind, debug)
        self.handles: dict[int, asyncio.Handle] = {}
        self.contexts: dict[int, contextvars.Context] = {}

    # The callbacks: bound methods, so that the loop's messages about them
    # ("Exception in callback CallbackWorld.cb(3, ('raise', 'x')) at ...") read the same in
    # both worlds.

    def cb(self, hid: int, action: tuple) -> None:
        self.record("cb", hid, cv.get())
        self.act(action)

    def tie(self, hid: int) -> None:
        self.record("tie", hid, self.handles[hid].when())

    def act(self, action: tuple) -> None:
        kind = action[0]
        loop = self.loop
        if kind == "soon":
            self.handles[action[1]] = loop.call_soon(self.cb, action[1], ("none",))
        elif kind == "threadsafe":
            self.handles[action[1]] = loop.call_soon_threadsafe(self.cb, action[1], ("none",))
        elif kind == "later":
            self.handles[action[1]] = loop.call_later(action[2], self.tie, action[1])
        elif kind == "cancel":
            h = self.handles.get(action[1])
            self.record("cancel-in-cb", action[1], h is not None and h.cancelled())
            if h is not None:
                h.cancel()
        elif kind == "raise":
            raise ValueError(action[1])
        elif kind == "set":
            cv.set(action[1])
        elif kind == "stop":
            loop.stop()
        elif kind == "time":
            self.record("time", loop.time())

    # Operations of the machine.

    def call_soon(self, hid: int, action: tuple, ctx: int | None) -> None:
        context = self.contexts[ctx] if ctx is not None else None
        self.handles[hid] = self.loop.call_soon(self.cb, hid, action, context=context)

    def call_soon_threadsafe(self, hid: int, action: tuple) -> None:
        def other_thread() -> None:
            self.handles[hid] = self.loop.call_soon_threadsafe(self.cb, hid, action)

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()

    def call_later(self, hid: int, delay: float, action: tuple) -> None:
        self.handles[hid] = self.loop.call_later(delay, self.cb, hid, action)

    def call_at(self, hid: int, when: float, action: tuple) -> None:
        self.handles[hid] = self.loop.call_at(when, self.cb, hid, action)

    def ties(self, hids: list[int], delay: float) -> None:
        for hid in hids:
            self.handles[hid] = self.loop.call_later(delay, self.tie, hid)

    def cancel(self, hid: int) -> tuple:
        h = self.handles.get(hid)
        if h is None:
            return ("missing",)
        before = h.cancelled()
        h.cancel()
        return (before, h.cancelled())

    def inspect(self, hid: int) -> tuple:
        h = self.handles.get(hid)
        if h is None:
            return ("missing",)
        when = h.when() if isinstance(h, asyncio.TimerHandle) else None
        # __class__: what isinstance() sees (type(h) is ferroloop.Handle by design; on 3.14+
        # a call_soon_threadsafe handle's __class__ is asyncio's _ThreadSafeHandle on both).
        return (h.__class__.__name__, h.cancelled(), when)

    def new_context(self, ctx: int, value: str) -> None:
        c = contextvars.copy_context()
        c.run(cv.set, value)
        self.contexts[ctx] = c

    def sleep0(self) -> str:
        return self.loop.run_until_complete(asyncio.sleep(0, "slept"))

    def step(self, n: int) -> None:
        for _ in range(n):
            self.run_once()

    def advance_and_step(self, ms: int) -> None:
        self.advance(ms * MS)
        self.run_once()

    def time(self) -> float:
        return self.loop.time()


texts = st.sampled_from(["a", "b", "boom"])
delays_ms = st.integers(min_value=0, max_value=30)


class CallbackMachine(DiffMachine):
    world_class = CallbackWorld

    handles = Bundle("handles")
    contexts = Bundle("contexts")

    def __init__(self) -> None:
        super().__init__()
        # Every timer gets its own microsecond offset: deadlines never tie by accident.
        self._offsets = 0
        cv.set("main")

    def delay(self, ms: int) -> float:
        self._offsets += 1
        return ms * MS + self._offsets * US

    def action(self, data: st.DataObject, hid_choices: list[int]) -> tuple[tuple, list[int]]:
        """An action for a new callback, and the ids of handles it will create."""
        kind = data.draw(
            st.sampled_from(
                ["none", "none", "soon", "threadsafe", "later", "cancel", "raise", "set"]
                + ["stop", "time"]
            ),
            label="action",
        )
        if kind in ("soon", "threadsafe"):
            child = self.new_id()
            return (kind, child), [child]
        if kind == "later":
            child = self.new_id()
            # Timers made by callbacks share the grid of half milliseconds: they may tie
            # with each other (recorded as "tie"), never with the machine's own timers.
            ms = data.draw(delays_ms, label="later_ms")
            return (kind, child, ms * MS + 0.5 * MS), [child]
        if kind == "cancel":
            if not hid_choices:
                return ("none",), []
            return (kind, data.draw(st.sampled_from(hid_choices), label="cancel_target")), []
        if kind in ("raise", "set"):
            return (kind, data.draw(texts, label="text")), []
        return (kind,), []

    def known(self) -> list[int]:
        return sorted(self.worlds[0].handles)

    @rule(target=handles, data=st.data(), ctx=st.none() | contexts)
    def call_soon(self, data, ctx):
        hid = self.new_id()
        action, children = self.action(data, self.known())
        self.each("call_soon", hid, action, ctx)
        return multiple(hid, *children)

    @rule(target=handles, data=st.data())
    def call_soon_threadsafe(self, data):
        hid = self.new_id()
        action, children = self.action(data, self.known())
        self.each("call_soon_threadsafe", hid, action)
        return multiple(hid, *children)

    @rule(target=handles, data=st.data(), ms=delays_ms)
    def call_later(self, data, ms):
        hid = self.new_id()
        action, children = self.action(data, self.known())
        self.each("call_later", hid, self.delay(ms), action)
        return multiple(hid, *children)

    @rule(target=handles, data=st.data(), ms=delays_ms)
    def call_at(self, data, ms):
        hid = self.new_id()
        action, children = self.action(data, self.known())
        when = self.worlds[0].clock.now + self.delay(ms)
        self.each("call_at", hid, when, action)
        return multiple(hid, *children)

    @rule(target=handles, n=st.integers(2, 5), ms=delays_ms)
    def call_later_ties(self, n, ms):
        hids = [self.new_id() for _ in range(n)]
        self.each("ties", hids, self.delay(ms))
        return multiple(*hids)

    @rule(hid=handles)
    def cancel(self, hid):
        self.each("cancel", hid)

    @rule(hid=consumes(handles))
    def cancel_and_forget(self, hid):
        self.each("cancel", hid)

    @rule(hid=handles)
    def inspect(self, hid):
        self.each("inspect", hid)

    @rule(target=contexts, value=texts)
    def new_context(self, value):
        ctx = self.new_id()
        self.each("new_context", ctx, value)
        return ctx

    @rule(value=texts)
    def set_main_context_var(self, value):
        # Both worlds live in this thread: their call_soon copies this context.
        cv.set(value)

    @rule(n=st.integers(1, 3))
    def step(self, n):
        self.each("step", n)

    @rule(ms=st.integers(1, 12))
    def advance_and_step(self, ms):
        self.each("advance_and_step", ms)

    @rule()
    def sleep0(self):
        self.each("sleep0")

    @rule()
    def time(self):
        self.each("time")


class DebugCallbackMachine(CallbackMachine):
    debug = True


def test_callbacks_differential():
    run_machine(CallbackMachine)


def test_callbacks_differential_debug():
    run_machine(DebugCallbackMachine, 0.5)
