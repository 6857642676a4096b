"""ferroloop: asyncio's event loop implemented in Rust.

Use it like uvloop::

    import ferroloop
    ferroloop.run(main())                      # like asyncio.run(main())

    with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
        runner.run(main())

    ferroloop.install()                        # every new loop is a ferroloop loop

or run an unmodified program: ``python -m ferroloop script.py [args]``.

Diagnostics: ``ferroloop.enable_inspect()`` (or ``FERROLOOP_INSPECT=1``) lets
``python -m ferroloop ps PID`` / ``pstree PID`` print the process's tasks from outside;
``ferroloop.metrics`` exports ``loop.metrics()`` to Prometheus and OpenTelemetry.
"""

from __future__ import annotations

import asyncio
import sys
import warnings
from collections.abc import Coroutine
from typing import Any, TypeVar

from . import _inspect
from ._ferroloop import Handle, TimerHandle
from ._ferroloop import __version__ as __version__  # one source: Cargo.toml
from ._inspect import enable_inspect
from ._loop import Loop
from ._watchdog import BlockingRecord

__all__ = [
    "BlockingRecord",
    "EventLoopPolicy",
    "Handle",
    "Loop",
    "TimerHandle",
    "enable_inspect",
    "install",
    "new_event_loop",
    "run",
]

_T = TypeVar("_T")


def new_event_loop() -> Loop:
    """Return a new ferroloop event loop."""
    return Loop()


# Python 3.14 deprecated asyncio's policy system (removal planned for 3.16): reading
# asyncio.DefaultEventLoopPolicy warns, so the base class is taken from where asyncio keeps it.
if sys.version_info >= (3, 14):
    _PolicyBase: Any = asyncio.unix_events._DefaultEventLoopPolicy
else:
    _PolicyBase = asyncio.DefaultEventLoopPolicy

_POLICY_DEPRECATED = (
    "{} is deprecated, as asyncio's event loop policies are since Python 3.14 (removal planned"
    " for 3.16): use ferroloop.run(main()), asyncio.run(main(), loop_factory="
    "ferroloop.new_event_loop) or asyncio.Runner(loop_factory=ferroloop.new_event_loop)"
)


class _EventLoopPolicy(_PolicyBase):  # type: ignore[misc]
    """asyncio's default policy, creating ferroloop loops.

    ``asyncio.set_event_loop_policy(ferroloop.EventLoopPolicy())`` makes ``asyncio.run``,
    ``asyncio.new_event_loop`` and ``asyncio.get_event_loop`` use ferroloop. Deprecated on
    Python 3.14+, as asyncio's policies are.
    """

    def _loop_factory(self) -> Loop:  # type: ignore[override]
        return new_event_loop()

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__name__}>"


_EventLoopPolicy.__name__ = _EventLoopPolicy.__qualname__ = "EventLoopPolicy"

if sys.version_info < (3, 14):
    EventLoopPolicy = _EventLoopPolicy
else:
    __all__.remove("EventLoopPolicy")  # as asyncio's __all__ no longer lists its policies

    def __getattr__(name: str) -> Any:
        # As asyncio.DefaultEventLoopPolicy does on 3.14+: still there, with a warning.
        if name == "EventLoopPolicy":
            warnings.warn(
                _POLICY_DEPRECATED.format("ferroloop.EventLoopPolicy"),
                DeprecationWarning,
                stacklevel=2,
            )
            return _EventLoopPolicy
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def install() -> None:
    """Install ferroloop's policy, so every new asyncio loop is a ferroloop loop.

    Deprecated on Python 3.14+, where asyncio deprecates ``set_event_loop_policy``.
    """
    if sys.version_info >= (3, 14):
        warnings.warn(
            _POLICY_DEPRECATED.format("ferroloop.install()"), DeprecationWarning, stacklevel=2
        )
    _install()


def _install() -> None:
    # python -m ferroloop uses the policy on every version: the program it runs calls
    # asyncio.run() and friends, which still consult it (without a warning of their own).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(_EventLoopPolicy())


def run(
    main: Coroutine[Any, Any, _T],
    *,
    debug: bool | None = None,
    warn_blocking: float | str | None = None,
) -> _T:
    """Run a coroutine on a new ferroloop loop, like ``asyncio.run``.

    ``warn_blocking`` (seconds, or a string such as ``"50ms"``) turns the blocking watchdog
    on: a callback or task step that keeps the loop busy longer is reported with the stack
    of the line that blocks (see ``Loop.set_blocking_threshold``).
    """

    def factory() -> Loop:
        loop = new_event_loop()
        if warn_blocking is not None:
            loop.set_blocking_threshold(warn_blocking)
        return loop

    with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
        return runner.run(main)


# FERROLOOP_INSPECT=1: serve task dumps (python -m ferroloop ps/pstree PID) from the start.
_inspect.enable_from_env()
