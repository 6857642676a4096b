"""call_later / call_at: ordering, cancellation, TimerHandle API, clock."""

from __future__ import annotations

import time

import pytest


def test_timers_run_in_deadline_order(loop):
    out = []
    for delay in (0.05, 0.01, 0.03, 0.02, 0.04):
        loop.call_later(delay, out.append, delay)
    loop.call_later(0.08, loop.stop)
    loop.run_forever()
    assert out == [0.01, 0.02, 0.03, 0.04, 0.05]


def test_call_at_uses_loop_time_and_matches_monotonic(loop):
    t = loop.time()
    assert abs(t - time.monotonic()) < 0.05
    out = []
    loop.call_at(t + 0.02, out.append, "b")
    loop.call_at(t + 0.01, out.append, "a")
    loop.call_at(t + 0.03, loop.stop)
    loop.run_forever()
    assert out == ["a", "b"]
    assert loop.time() >= t + 0.03 - 0.002


def test_same_deadline_keeps_scheduling_order_ferroloop(ferroloop_loop):
    # asyncio's heapq gives no guarantee for equal deadlines; ferroloop orders them FIFO.
    loop = ferroloop_loop
    when = loop.time() + 0.01
    out = []
    for i in range(200):
        loop.call_at(when, out.append, i)
    loop.call_at(when + 0.01, loop.stop)
    loop.run_forever()
    assert out == list(range(200))


def test_timer_does_not_fire_early(loop):
    fired = []
    t0 = time.monotonic()
    loop.call_later(0.05, lambda: fired.append(time.monotonic() - t0))
    loop.call_later(0.06, loop.stop)
    loop.run_forever()
    assert fired and fired[0] >= 0.049


def test_timer_handle_api(loop):
    def cb():
        pass

    t0 = loop.time()
    h = loop.call_later(10, cb)
    assert type(h).__name__ == "TimerHandle"
    assert abs(h.when() - (t0 + 10)) < 0.1
    assert "when=" in repr(h) and "cb()" in repr(h)
    other = loop.call_later(20, cb)
    assert h < other and other > h and h <= other and not h > other
    assert h != other
    assert isinstance(hash(h), int)
    h.cancel()
    assert h.cancelled()
    assert repr(h).startswith("<TimerHandle cancelled when=")
    other.cancel()


def test_timer_handle_is_a_handle(loop):
    h = loop.call_later(1, print)
    base = type(loop.call_soon(print))
    assert isinstance(h, base)
    h.cancel()


def test_cancelled_timers_do_not_run_and_heap_is_compacted(loop):
    out = []
    handles = [loop.call_later(0.01 + i * 1e-5, out.append, i) for i in range(1000)]
    for h in handles[:900]:
        h.cancel()
    loop.call_later(0.1, loop.stop)
    loop.run_forever()
    assert out == list(range(900, 1000))


def test_many_cancelled_timers_are_dropped_from_the_heap(ferroloop_loop):
    loop = ferroloop_loop
    hs = [loop.call_later(100, print) for _ in range(1000)]
    for h in hs:
        h.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert loop._timer_count() == 0


def test_call_later_none_and_bad_delay(loop):
    with pytest.raises(TypeError, match="delay must not be None"):
        loop.call_later(None, print)
    with pytest.raises(TypeError, match="when cannot be None"):
        loop.call_at(None, print)
    with pytest.raises(TypeError):
        loop.call_later("soon", print)


def test_negative_delay_runs_soon(loop):
    out = []
    loop.call_later(-5, out.append, "neg")
    loop.call_soon(out.append, "soon")
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert sorted(out) == ["neg", "soon"]


def test_timer_cancelled_from_another_callback(loop):
    out = []
    h = loop.call_later(0.02, out.append, "should not run")
    loop.call_later(0.01, h.cancel)
    loop.call_later(0.04, loop.stop)
    loop.run_forever()
    assert out == []


def test_sleep_resolution(loop):
    async def main():
        t0 = loop.time()
        for _ in range(5):
            await __import__("asyncio").sleep(0.002)
        return loop.time() - t0

    elapsed = loop.run_until_complete(main())
    assert 0.009 <= elapsed < 1.0


@pytest.mark.parametrize("when", [12345, 12345.5, 10**6])
def test_call_at_keeps_the_deadline_as_given(loop, when):
    # Libraries round deadlines to whole seconds and check them: an int stays an int.
    h = loop.call_at(when, lambda: None)
    assert h.when() == when
    assert type(h.when()) is type(when)
    assert type(h._when) is type(when)
    assert hash(h) == hash(when)
    h.cancel()


def test_call_later_deadline_is_a_float(loop):
    h = loop.call_later(1, lambda: None)
    assert type(h.when()) is float
    h.cancel()


def test_timers_follow_a_patched_loop_time(loop):
    """mock.patch.object(loop, "time"): asyncio decides which timers are due with
    self.time(), so moving the clock forward runs a timer set far in the future."""
    from unittest import mock

    fired = []
    loop.call_later(1000, fired.append, "far")
    base = loop.time()
    with mock.patch.object(loop, "time", return_value=base + 2000):
        assert loop.time() == base + 2000
        loop.run_until_complete(_one_iteration())
        assert fired == ["far"]
        # call_later reads the patched clock too: 'soon' is due at base + 2000 + 5.
        h = loop.call_later(5, fired.append, "soon")
        assert h.when() == base + 2005
    # Back on the real clock, that deadline is ~2000 s away: nothing more runs.
    loop.run_until_complete(_one_iteration())
    assert fired == ["far"]
    h.cancel()
    assert "time" not in vars(loop)


def test_patched_loop_time_returning_ints(loop):
    from unittest import mock

    with mock.patch.object(loop, "time", return_value=100):
        h = loop.call_later(5, lambda: None)
        assert h.when() == 105
        assert type(h.when()) is int
    h.cancel()


async def _one_iteration():
    import asyncio

    await asyncio.sleep(0)


def test_subclass_time_drives_the_timers(loop_factory):
    """A loop class whose time() runs ahead: asyncio's timers follow it."""
    import asyncio

    probe = loop_factory()
    base_cls = type(probe)
    probe.close()

    class FastClock(base_cls):  # type: ignore[misc, valid-type]
        offset = 0.0

        def time(self):
            return super().time() + self.offset

    lp = FastClock()
    try:
        fired = []
        lp.call_later(500, fired.append, 1)
        lp.offset = 1000.0
        lp.run_until_complete(asyncio.sleep(0))
        assert fired == [1]
    finally:
        lp.close()
