"""The Python half of the blocking watchdog (the native half is ``src/watchdog.rs``).

The native watchdog thread calls ``_report_blocked`` while a loop is still blocked by one
unit of work (a callback, a task step, a transport read...), holding the GIL, so the loop's
thread is stopped exactly where it blocks. This module reads that thread's frames, names the
task or callback, and reports: a ``BlockingRecord`` to the loop's handler
(``loop.set_blocking_handler``) and a WARNING on the ``ferroloop`` logger. When the unit
finally returns, ``_report_ended`` reports the total. All of it runs on the watchdog thread,
never on the loop's.

Reports are rate-limited per loop (a burst of ``_BURST``, then one per ``_REFILL_SECONDS``);
the next report says how many were left out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import linecache
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from . import _ferroloop

logger = logging.getLogger("ferroloop")

_BURST = 10
_REFILL_SECONDS = 6.0

# The loop's own run machinery: frames at or above the innermost of these are not the
# application's (the report's stack starts below them).
_LOOP_DIR = os.path.dirname(os.path.abspath(__file__))
_ASYNCIO_DIR = os.path.dirname(os.path.abspath(asyncio.__file__))
_RUN_FUNCTIONS = {
    (os.path.join(_LOOP_DIR, "_loop.py"), "run_forever"),
    (os.path.join(_ASYNCIO_DIR, "base_events.py"), "_run_once"),
    (os.path.join(_ASYNCIO_DIR, "events.py"), "_run"),
}

# What the native stamp says runs (src/watchdog.rs, `Kind`).
_KINDS = {
    0: "callback",
    1: "callback",
    2: "stream transport read",
    3: "stream transport write",
    4: "datagram transport read",
    5: "datagram transport write",
    6: "sock_* operation",
    7: "executor result",
}


@dataclasses.dataclass(frozen=True)
class BlockingRecord:
    """One blocking episode, as a loop's blocking handler receives it.

    ``finished`` is False for the report taken while the loop is still blocked (``seconds``
    is then the time blocked so far and ``frames`` the loop thread's stack at that moment,
    outermost first, from the task's coroutine or the callback down to the blocking line)
    and True for the report made when the unit of work returned (``seconds`` is its whole
    duration; ``frames`` is empty). ``frames`` holds ``(filename, lineno, function, line)``.
    """

    loop: Any
    seconds: float
    finished: bool
    kind: str
    task: asyncio.Task | None = None
    task_name: str | None = None
    coroutine: str | None = None
    callback: str | None = None
    frames: tuple[tuple[str, int, str, str], ...] = ()
    thread_id: int | None = None
    suppressed: int = 0

    def where(self) -> str:
        """``task 'name' (coroutine())`` or ``callback <repr>``."""
        if self.task_name is not None:
            return f"task {self.task_name!r} ({self.coroutine})"
        if self.callback is not None:
            return f"{self.kind} {self.callback}"
        return f"a {self.kind}"

    def format_stack(self) -> str:
        lines = []
        for filename, lineno, function, line in self.frames:
            lines.append(f'  File "{filename}", line {lineno}, in {function}')
            if line:
                lines.append(f"    {line}")
        return "\n".join(lines)


class _Limiter:
    """A token bucket: ``_BURST`` reports, then one per ``_REFILL_SECONDS``."""

    def __init__(self) -> None:
        self.tokens = float(_BURST)
        self.stamp = time.monotonic()
        self.suppressed = 0
        # The report of the episode still open (its end is reported too), if any.
        self.open: BlockingRecord | None = None

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(_BURST, self.tokens + (now - self.stamp) / _REFILL_SECONDS)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.suppressed += 1
        return False


_limiters: dict[int, _Limiter] = {}
_limiters_lock = threading.Lock()


def _limiter(loop: Any) -> _Limiter:
    with _limiters_lock:
        lim = _limiters.get(id(loop))
        if lim is None:
            lim = _limiters[id(loop)] = _Limiter()
        return lim


def forget(loop: Any) -> None:
    """The loop turns the watchdog off or closes: drop its rate-limiting state."""
    with _limiters_lock:
        _limiters.pop(id(loop), None)


def _raw_frames(thread_id: int) -> list[tuple[str, int, str]]:
    """The thread's frames, outermost first, as (filename, lineno, function). Only attribute
    reads: nothing here releases the GIL, so the frames cannot move while they are read."""
    frame = sys._current_frames().get(thread_id)
    out: list[tuple[str, int, str]] = []
    while frame is not None:
        code = frame.f_code
        out.append((code.co_filename, frame.f_lineno or 0, code.co_name))
        frame = frame.f_back
    out.reverse()
    return out


def _application_frames(raw: list[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    """Drops the frames of the loop's own run machinery and everything above them."""
    cut = 0
    for i, (filename, _lineno, function) in enumerate(raw):
        if (os.path.abspath(filename), function) in _RUN_FUNCTIONS:
            cut = i + 1
    return raw[cut:]


def _describe(what: Any, kind: int) -> str | None:
    if what is None:
        return None
    try:
        if kind in (2, 4):  # a native transport reading: name the protocol method it calls
            method = "data_received" if kind == 2 else "datagram_received"
            return f"{type(what.get_protocol()).__qualname__}.{method}()"
        if kind in (3, 5):
            return f"write to the transport of {type(what.get_protocol()).__qualname__}"
        return _ferroloop_repr(what)
    except Exception:
        return f"<{type(what).__qualname__}>"


def _ferroloop_repr(obj: Any) -> str:
    qualname = getattr(obj, "__qualname__", None)
    if qualname is not None:
        return f"{qualname}()"
    func = getattr(obj, "__func__", None)
    if func is not None:
        return f"{getattr(func, '__qualname__', repr(func))}()"
    text = repr(obj)
    return text if len(text) <= 200 else text[:197] + "..."


def _current_task(loop: Any) -> asyncio.Task | None:
    try:
        return asyncio.current_task(loop)
    except Exception:
        return None


def _emit(loop: Any, record: BlockingRecord, message: str) -> None:
    handler: Callable[[BlockingRecord], Any] | None = getattr(loop, "_blocking_handler", None)
    if handler is not None:
        try:
            handler(record)
        except Exception:
            logger.exception("ferroloop: the blocking handler %r raised", handler)
        return
    logger.warning(message)


def _report_blocked(loop: Any, seconds: float, thread_id: int, what: Any, kind: int) -> None:
    raw = _raw_frames(thread_id)  # first, before anything can release the GIL
    task = _current_task(loop)
    lim = _limiter(loop)
    if not lim.allow():
        lim.open = None
        return
    suppressed, lim.suppressed = lim.suppressed, 0
    frames = tuple(
        (filename, lineno, function, linecache.getline(filename, lineno).strip())
        for filename, lineno, function in _application_frames(raw)
    )
    coroutine = None
    if task is not None:
        coro = task.get_coro()
        coroutine = f"{getattr(coro, '__qualname__', type(coro).__qualname__)}()"
    record = BlockingRecord(
        loop=loop,
        seconds=seconds,
        finished=False,
        kind=_KINDS.get(kind, "callback"),
        task=task,
        task_name=task.get_name() if task is not None else None,
        coroutine=coroutine,
        callback=None if task is not None else _describe(what, kind),
        frames=frames,
        thread_id=thread_id,
        suppressed=suppressed,
    )
    if frames:
        where = f"stack of the loop's thread:\n{record.format_stack()}"
    else:
        where = "it runs in C code (no Python frame below the loop)"
    message = f"Event loop blocked for {seconds:.3f} s (still blocked) by {record.where()}; {where}"
    if suppressed:
        message += f"\n({suppressed} earlier blocking reports were left out: rate limit)"
    lim.open = record
    _emit(loop, record, message)


def _report_ended(loop: Any, seconds: float) -> None:
    lim = _limiter(loop)
    opened, lim.open = lim.open, None
    if opened is None:
        return
    record = dataclasses.replace(opened, seconds=seconds, finished=True, frames=(), suppressed=0)
    _emit(
        loop,
        record,
        f"Event loop was blocked for {seconds:.3f} s in total by {record.where()} (running again)",
    )


def _report_unseen(loop: Any, seconds: float) -> None:
    """A unit ran past the threshold while holding the GIL (a long C call that does not
    release it): no stack could be taken while it ran."""
    lim = _limiter(loop)
    if not lim.allow():
        return
    record = BlockingRecord(loop=loop, seconds=seconds, finished=True, kind="callback")
    _emit(
        loop,
        record,
        f"Event loop was blocked for about {seconds:.3f} s by a call that held the GIL "
        "throughout (no stack could be taken while it ran)",
    )


def parse_duration(value: str | float | int | None) -> float | None:
    """A threshold: seconds as a number, or a string such as ``50ms``, ``0.05s``, ``2``.
    ``None`` and the strings ``""``, ``"0"``, ``"off"`` mean off. Anything else that is not
    a positive, finite duration is a ValueError (a TypeError if it is not even a number)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "0", "off", "no", "false", "none"):
            return None
        for suffix, scale in (("ms", 1e-3), ("us", 1e-6), ("s", 1.0)):
            if text.endswith(suffix):
                seconds = float(text[: -len(suffix)]) * scale
                break
        else:
            seconds = float(text)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"a duration must be a number of seconds or a string, not {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a blocking threshold must be a positive duration, got {value!r}")
    return seconds


def threshold_from_environment() -> float | None:
    """``FERROLOOP_WARN_BLOCKING`` (e.g. ``50ms``): the watchdog's default threshold."""
    raw = os.environ.get("FERROLOOP_WARN_BLOCKING")
    if not raw:
        return None
    try:
        return parse_duration(raw)
    except ValueError:
        logger.warning("ferroloop: ignoring FERROLOOP_WARN_BLOCKING=%r (not a duration)", raw)
        return None


os.register_at_fork(after_in_child=_ferroloop._watchdog_after_fork)
threading._register_atexit(_ferroloop._watchdog_stop)  # type: ignore[attr-defined]
