"""Formatting and debug helpers the native module calls on cold paths.

Reprs and error messages of handles use the standard library's own asyncio formatting
helpers, so that ferroloop's messages read exactly like asyncio's.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from asyncio import coroutines, format_helpers
from typing import Any

# Python 3.14 (and the maintenance releases that got the change) shows a callback's arguments
# in reprs and messages only in debug mode: _format_callback_source(..., debug=).
_SOURCE_TAKES_DEBUG = (
    "debug" in inspect.signature(format_helpers._format_callback_source).parameters
)


def format_callback_source(callback: Any, args: Any, debug: bool = False) -> str:
    """``cb(arg, ...) at file.py:12``, as asyncio writes callbacks in messages (arguments
    elided outside debug mode where asyncio does so)."""
    if _SOURCE_TAKES_DEBUG:
        return format_helpers._format_callback_source(callback, args or (), debug=debug)
    return format_helpers._format_callback_source(callback, args or ())


def _loop_debug(handle: Any) -> bool:
    # asyncio asks the handle's loop; ferroloop's handles do not keep theirs, but one made in
    # debug mode carries its creation stack (asyncio's handles record it in debug mode only).
    return bool(handle._source_traceback)


def format_handle(handle: Any) -> str:
    """asyncio's repr of a (timer) handle: ``<TimerHandle when=1.0 cb() at f.py:3>``."""
    info = [type(handle).__name__]
    if handle._cancelled:
        info.append("cancelled")
    if hasattr(handle, "_when"):
        info.insert(2 if handle._cancelled else 1, f"when={handle._when}")
    if handle._callback is not None:
        info.append(format_callback_source(handle._callback, handle._args, _loop_debug(handle)))
    tb = handle._source_traceback
    if tb:
        frame = tb[-1]
        info.append(f"created at {frame[0]}:{frame[1]}")
    return "<{}>".format(" ".join(info))


def describe_for_log(handle: Any) -> str:
    """How asyncio names a slow callback: the task for a task step, else the handle."""
    owner = getattr(handle._callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        return repr(owner)
    return str(handle)


def extract_stack() -> Any:
    """The stack of whoever called into the loop (the native method has no frame)."""
    return format_helpers.extract_stack(sys._getframe(1))


def is_coroutine_like(obj: Any) -> bool:
    """asyncio refuses coroutines and coroutine functions as plain callbacks."""
    return asyncio.iscoroutine(obj) or _iscoroutinefunction(obj)


# 3.14 deprecated asyncio.iscoroutinefunction; its loop checks with the private one.
_iscoroutinefunction = getattr(coroutines, "_iscoroutinefunction", None) or (
    asyncio.iscoroutinefunction
)
