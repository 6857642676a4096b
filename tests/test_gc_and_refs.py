"""Handles and the garbage collector: weak references, reference cycles through pending
handles, tasks left pending when their loop goes away, and the loop's private ``_closed``."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import warnings
import weakref

import pytest


def test_handles_can_be_weakly_referenced(loop):
    h = loop.call_soon(lambda: None)
    t = loop.call_later(10, lambda: None)
    r, rt = weakref.ref(h), weakref.ref(t)
    assert r() is h and rt() is t
    t.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    del h, t
    gc.collect()
    assert r() is None and rt() is None


def test_loop_closed_attribute(loop_factory):
    lp = loop_factory()
    assert lp._closed is False
    lp.close()
    assert lp._closed is True


class HoldsItsTimer:
    """object -> its own pending handle -> bound method -> object."""

    def __init__(self, loop, kind: str) -> None:
        if kind == "call_later":
            self.handle = loop.call_later(1000, self.tick)
        elif kind == "call_at":
            self.handle = loop.call_at(loop.time() + 1000, self.tick)
        else:
            self.handle = loop.call_soon(self.tick)

    def tick(self) -> None:
        pass


@pytest.mark.parametrize("kind", ["call_later", "call_at", "call_soon"])
def test_cycles_through_pending_handles_are_collected_after_close(loop_factory, kind):
    lp = loop_factory()
    refs = [weakref.ref(HoldsItsTimer(lp, kind)) for _ in range(1000)]
    lp.close()
    gc.collect()
    assert sum(r() is not None for r in refs) == 0


def test_cycles_through_pending_handles_are_collected_when_the_loop_is_dropped(loop_factory):
    lp = loop_factory()
    refs = [weakref.ref(HoldsItsTimer(lp, "call_later")) for _ in range(200)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # unclosed event loop, on both
        del lp
        gc.collect()
    assert sum(r() is not None for r in refs) == 0


def test_an_unclosed_loop_is_finalised_by_the_cyclic_collector(loop_factory):
    """asyncio's loop is in a reference cycle until close(): dropped unclosed, it warns
    ("unclosed event loop") and closes when the cyclic collector runs, not when its last
    name goes. Tests count on it: aiomysql's test___del__ catches the warning of a loop its
    fixture leaked with pytest.warns around gc.collect()."""
    gc.collect()
    gc.disable()
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always", ResourceWarning)
            lp = loop_factory()
            r = weakref.ref(lp)
            del lp
            assert r() is not None and seen == []
            gc.collect()
            assert [str(w.message).startswith("unclosed event loop") for w in seen] == [True]
            # The recorded warning holds the loop (its source) on 3.15: let it go first.
            seen.clear()
            gc.collect()
            assert r() is None
    finally:
        gc.enable()


def test_a_closed_loop_is_freed_when_its_last_name_goes(loop_factory):
    gc.collect()
    gc.disable()
    try:
        lp = loop_factory()
        lp.run_until_complete(asyncio.sleep(0))
        lp.close()
        r = weakref.ref(lp)
        del lp
        assert r() is None
    finally:
        gc.enable()


def test_loop_in_a_cycle_with_its_own_timer_is_collected(loop_factory):
    """loop -> timer heap -> handle -> loop.stop (bound to the loop) -> loop."""
    lp = loop_factory()
    lp.call_later(1000, lp.stop)
    r = weakref.ref(lp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del lp
        gc.collect()
    assert r() is None


def test_cycle_through_a_reader_handle_is_collected_after_close(loop_factory):
    a, b = socket.socketpair()
    lp = loop_factory()

    class Watcher:
        def __init__(self) -> None:
            self.handle = lp._add_reader(a.fileno(), self.on_readable)

        def on_readable(self) -> None:
            pass

    r = weakref.ref(Watcher())
    lp.close()
    gc.collect()
    a.close()
    b.close()
    assert r() is None


def test_task_left_pending_in_sleep_is_destroyed_with_a_message(loop_factory, caplog):
    """A task still in asyncio.sleep() when its loop closes is garbage; asyncio logs
    'Task was destroyed but it is pending!' when the collector frees it."""
    lp = loop_factory()

    async def sleeper() -> None:
        await asyncio.sleep(1000)

    async def main() -> None:
        lp.create_task(sleeper(), name="the-sleeper")
        await asyncio.sleep(0)

    lp.run_until_complete(main())
    lp.close()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        gc.collect()
    messages = [rec.getMessage() for rec in caplog.records]
    assert any(
        "Task was destroyed but it is pending!" in m and "the-sleeper" in m for m in messages
    ), messages


def test_handles_that_ran_leave_the_collector_ferroloop(ferroloop_loop):
    """ferroloop-only: a pending timer is tracked by the collector; a call_soon handle is part
    of the loop while queued (the loop's traversal covers it); once run or cancelled, a
    handle holds nothing and is not tracked."""
    lp = ferroloop_loop
    h = lp.call_soon(lambda: None)
    t = lp.call_later(10, lambda: None)
    assert gc.is_tracked(t) and not gc.is_tracked(h)
    assert h in gc.get_referents(lp) or h._callback in gc.get_referents(lp)
    lp.run_until_complete(asyncio.sleep(0))
    t.cancel()
    assert not gc.is_tracked(h) and not gc.is_tracked(t)


def test_queued_handle_held_elsewhere_rejoins_the_collector_at_close_ferroloop():
    import ferroloop

    lp = ferroloop.new_event_loop()
    h = lp.call_soon(lambda: None)
    assert not gc.is_tracked(h)
    lp.close()
    assert gc.is_tracked(h)


def test_handle_whose_callback_raised_keeps_it_for_the_report_ferroloop(ferroloop_loop):
    lp = ferroloop_loop
    seen = []
    lp.set_exception_handler(lambda loop, ctx: seen.append(ctx["handle"]))

    def boom() -> None:
        raise ValueError("boom")

    h = lp.call_soon(boom)
    lp.run_until_complete(asyncio.sleep(0))
    assert seen == [h]
    assert h._callback is boom
    assert gc.is_tracked(h)  # holds a callback again: visible to the collector
