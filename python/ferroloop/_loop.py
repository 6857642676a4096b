"""``ferroloop.Loop``: the event loop users get.

The class combines the native ``LoopCore`` (ready queue, timers, epoll reactor, waker,
handles, the iteration itself, all in Rust) with ``asyncio.AbstractEventLoop``. What stays in
Python here runs once per loop run or once per call site rather than once per callback:
``run_forever``/``run_until_complete`` setup, task creation, executors, exception handlers,
async generator bookkeeping and signal handlers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import functools
import inspect
import logging
import selectors
import signal
import socket
import sys
import threading
import traceback
import warnings
import weakref
from asyncio import base_events, constants, coroutines, events, futures, tasks, unix_events
from collections.abc import Callable
from typing import Any

from . import _ferroloop, _format, _inspect, _tls, _watchdog
from ._ferroloop import Handle, LoopCore
from ._net import NetworkingMixin
from ._subprocess import SubprocessMixin
from ._transports import DatagramTransport, SocketTransport

# asyncio's own constant for coroutine origin tracking in debug mode.
_DEBUG_STACK_DEPTH = 10


def _logger() -> logging.Logger:
    # Looked up at call time: asyncio's tests (and some applications) replace
    # ``asyncio.base_events.logger``; messages must reach whatever is installed there.
    return base_events.logger


# Python 3.12+ runs a custom exception handler in the context of the failing task, future or
# handle; 3.11 calls it directly. ferroloop does what the running version's asyncio does.
_HANDLER_IN_CONTEXT = sys.version_info >= (3, 12)


def _context_of(context: dict[str, Any]) -> Any:
    thing = context.get("task")
    if thing is None:
        thing = context.get("future")  # may hold a Task, which has a context
    if thing is None:
        thing = context.get("handle")
    get_context = getattr(thing, "get_context", None)
    ctx = get_context() if get_context is not None else None
    return ctx if hasattr(ctx, "run") else None


def _recognise_c_asyncio_callers() -> None:
    """Let one of asyncio's C futures schedule a callback on a probe, so that the native
    ``call_soon`` recognises the C accelerator's calls (see ``src/fastcall.rs``). If anything
    here fails, those calls simply take the ordinary path."""
    try:
        import _asyncio
    except ImportError:
        return

    class _Probe:
        call_soon = _ferroloop._kwnames_probe  # a builtin function: called without self

        def get_debug(self) -> bool:
            return False

    try:
        fut = _asyncio.Future(loop=_Probe())
        fut.add_done_callback(_settle_noop)
        fut.set_result(None)
    except Exception:
        pass


def _settle_noop(fut: Any) -> None:
    pass


_recognise_c_asyncio_callers()


def _stop_when_done(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        exc = fut.exception()
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            # The loop is stopped by the exception itself, no need to stop it here.
            return
    fut.get_loop().stop()


# run_until_complete() adds asyncio's own done callback, not a look-alike: libraries recognise
# the task that run_until_complete() drives by it (anyio's find_root_task() looks for
# `base_events._run_until_complete_cb` in the task's callbacks, and otherwise ties its worker
# threads to whichever task asked first). Ours only if a Python version drops it.
_run_until_complete_cb = getattr(base_events, "_run_until_complete_cb", _stop_when_done)


def _settle(fut: asyncio.Future, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


def _sighandler_noop(signum: int, frame: Any) -> None:
    """The Python-level handler for signals the loop dispatches itself (via the wakeup fd)."""


class _SelectorView:
    def __init__(self, loop: Loop) -> None:
        self._loop = loop

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        events = 0
        if self._loop._has_io(fileobj, False):
            events |= selectors.EVENT_READ
        if self._loop._has_io(fileobj, True):
            events |= selectors.EVENT_WRITE
        if not events:
            raise KeyError(f"{fileobj!r} is not registered")
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return selectors.SelectorKey(fileobj, fd, events, None)


class _DefaultExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor: a ``ThreadPoolExecutor`` on the outside (``isinstance``,
    ``submit``, ``map``, ``shutdown`` behave as documented), ferroloop's native thread pool
    inside (``src/executor.rs``). ``run_in_executor(None, ...)`` skips the
    ``concurrent.futures.Future`` altogether: the worker's outcome settles the asyncio future
    on the loop thread."""

    def __init__(self) -> None:
        super().__init__(thread_name_prefix="asyncio")
        self._native = _ferroloop.ThreadPool(self._max_workers, "asyncio")

    def _check_open(self) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if concurrent.futures.thread._shutdown:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            fn, args = functools.partial(fn, *args, **kwargs), ()
        with self._shutdown_lock:
            self._check_open()
            fut: concurrent.futures.Future = concurrent.futures.Future()
            self._native.submit_cf(fut, fn, args)
            return fut

    def _submit_to_loop(self, loop: Loop, func: Callable[..., Any], args: tuple) -> Any:
        with self._shutdown_lock:
            self._check_open()
            fut = loop.create_future()
            self._native.submit_to_loop(loop, fut, func, args)
            return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._shutdown_lock:
            self._shutdown = True
        self._native.shutdown(wait, cancel_futures)


# Interpreter exit joins the native pools' workers before finalization, as concurrent.futures
# does for its own threads.
threading._register_atexit(_ferroloop._executor_atexit)  # type: ignore[attr-defined]


# Every ferroloop loop alive in this process (diagnostics: metrics exporters, task dumps).
_LIVE_LOOPS: weakref.WeakSet[Loop] = weakref.WeakSet()


def live_loops() -> list[Loop]:
    """The ferroloop loops alive in this process, closed ones excluded."""
    return [lp for lp in list(_LIVE_LOOPS) if not lp.is_closed()]


def _create_task_on_closed_loop(loop: Loop, coro: Any) -> None:
    """Raises create_task()'s "Event loop is closed" from a Python frame that holds the
    coroutine, as asyncio's create_task does (called by the native create_task; see
    closed_with_coroutine in src/event_loop.rs)."""
    loop._check_closed()


class Loop(LoopCore, NetworkingMixin, SubprocessMixin, asyncio.AbstractEventLoop):
    """An asyncio event loop implemented in Rust."""

    def __init__(self) -> None:
        _LIVE_LOOPS.add(self)
        _inspect.on_loop_created()
        # asyncio's loop sits in a reference cycle until close() (its self-pipe's reader
        # handle holds a bound method of the loop), so a loop dropped unclosed is finalised,
        # with its "unclosed event loop" ResourceWarning, by the cyclic garbage collector
        # rather than when its last name goes; tests count on that (a gc.collect() inside
        # pytest.warns: aiomysql's). The same here: close() breaks the cycle, and a closed
        # loop is freed at once, as asyncio's is.
        self._cycle_until_closed: Loop | None = self
        self._exception_handler: Callable[..., Any] | None = None
        self._default_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor_shutdown_called = False
        self._asyncgens: weakref.WeakSet = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth: int | None = None
        self._current_handle: Handle | None = None
        self._signal_handlers: dict[int, Handle] = {}
        self._ssock: socket.socket | None = None
        self._transports: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        self._child_pidfds: dict[int, int] = {}
        # Unix server sockets create_unix_server bound, by socket (Python 3.13+ records them
        # to remove the socket file when the server closes).
        self._unix_server_sockets: dict[socket.socket, int] = {}
        self._csock: socket.socket | None = None
        self.slow_callback_duration = 0.1
        self.set_debug(coroutines._is_debug_mode())
        # A subclass's own time(): the loop's timer decisions must call it, as asyncio's do.
        self._set_clock_overridden(type(self).time is not LoopCore.time)
        self._blocking_handler: Callable[[_watchdog.BlockingRecord], Any] | None = None
        threshold = _watchdog.threshold_from_environment()
        if threshold is not None:
            self.set_blocking_threshold(threshold)

    # ``loop.time`` replaced on the instance (``mock.patch.object(loop, "time", ...)``, as
    # tests and libraries do to move the clock): asyncio decides which timers are due with
    # ``self.time()``, so the replacement takes effect; the native core is told, and reads its
    # own clock only while nothing overrides it (no cost in the common case).
    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name == "time":
            self._set_clock_overridden(True)

    def __delattr__(self, name: str) -> None:
        object.__delattr__(self, name)
        if name == "time":
            self._set_clock_overridden(type(self).time is not LoopCore.time)

    @property
    def _closed(self) -> bool:
        """asyncio's private flag (libraries and test suites read it): ``is_closed()``."""
        return self.is_closed()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} running={self.is_running()} "
            f"closed={self.is_closed()} debug={self.get_debug()}>"
        )

    # ---------------------------------------------------------------- running and stopping

    def _check_running(self) -> None:
        if self.is_running():
            raise RuntimeError("This event loop is already running")
        if events._get_running_loop() is not None:
            raise RuntimeError("Cannot run the event loop while another loop is running")

    def run_forever(self) -> None:
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self.get_debug())
        old_agen_hooks = sys.get_asyncgen_hooks()
        try:
            events._set_running_loop(self)
            sys.set_asyncgen_hooks(
                firstiter=self._asyncgen_firstiter_hook,
                finalizer=self._asyncgen_finalizer_hook,
            )
            self._run_forever_native()
        finally:
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_agen_hooks)

    def run_until_complete(self, future: Any) -> Any:
        self._check_closed()
        self._check_running()
        new_task = not futures.isfuture(future)
        future = tasks.ensure_future(future, loop=self)
        if new_task:
            # An exception raised by the loop (KeyboardInterrupt) must not also be logged as
            # "Task exception was never retrieved".
            future._log_destroy_pending = False
        future.add_done_callback(_run_until_complete_cb)
        try:
            self.run_forever()
        except BaseException:
            if new_task and future.done() and not future.cancelled():
                future.exception()
            raise
        finally:
            future.remove_done_callback(_run_until_complete_cb)
        if not future.done():
            raise RuntimeError("Event loop stopped before Future completed.")
        return future.result()

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self.get_debug():
            _logger().debug("Close %r", self)
        self._mark_closed()
        self._cycle_until_closed = None
        if self._blocking_threshold() is not None:
            self._set_blocking_threshold(None)
            _watchdog.forget(self)
        self._remove_all_signal_handlers()
        self._close_child_watches()
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)
        self._close_native()

    def __del__(self, _warn: Callable[..., Any] = warnings.warn) -> None:
        try:
            closed = self.is_closed()
        except Exception:
            return
        if not closed:
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if not self.is_running():
                try:
                    self.close()
                except Exception:
                    pass

    # ---------------------------------------------------------------- diagnostics

    def set_blocking_threshold(self, seconds: float | str | None) -> None:
        """Report when one callback or task step keeps this loop busy longer than
        ``seconds`` (a number, or a string such as ``"50ms"``); ``None`` turns it off.

        A native watchdog thread notices while the loop is still blocked and reports the
        loop thread's stack at that moment (the line that blocks), naming the task or the
        callback; when the callback returns, one more report gives the total. Reports go to
        the handler set with ``set_blocking_handler``, else to the ``ferroloop`` logger as
        WARNINGs, rate-limited. Timing metrics (``metrics()``) are measured while it is on.
        """
        threshold = _watchdog.parse_duration(seconds)
        self._set_blocking_threshold(threshold)
        self._set_metrics_timing(threshold is not None)
        if threshold is None:
            _watchdog.forget(self)

    def get_blocking_threshold(self) -> float | None:
        """The watchdog's threshold in seconds, or None when it is off."""
        return self._blocking_threshold()

    def set_blocking_handler(
        self, handler: Callable[[_watchdog.BlockingRecord], Any] | None
    ) -> None:
        """Send blocking reports to ``handler(record)`` instead of the log. It is called on the
        watchdog's thread, never the loop's (``record.finished`` tells the report taken while
        blocked from the one made when the callback returned)."""
        if handler is not None and not callable(handler):
            raise TypeError(f"a blocking handler must be callable, got {handler!r}")
        self._blocking_handler = handler

    def set_metrics_timing(self, enabled: bool) -> None:
        """Measure poll time, callback time and loop lag for ``metrics()`` (on with the
        watchdog; costs a few clock reads per iteration)."""
        self._set_metrics_timing(bool(enabled))

    def metrics(self) -> dict[str, Any]:
        """The loop's metrics, field by field in the README ("Diagnostics")."""
        m = self._metrics_native()
        m["transports"] = sum(1 for t in list(self._transports.values()) if not t.is_closing())
        native = getattr(self._default_executor, "_native", None)
        if native is not None:
            queued, busy, workers = native._stats()
        else:
            queued = busy = workers = 0
        m["executor_queued"] = queued
        m["executor_busy"] = busy
        m["executor_workers"] = workers
        return m

    # ---------------------------------------------------------------- debug

    def set_debug(self, enabled: bool) -> None:
        self._set_debug_flag(bool(enabled))
        if self.is_running():
            self.call_soon_threadsafe(self._set_coroutine_origin_tracking, bool(enabled))

    def _set_coroutine_origin_tracking(self, enabled: bool) -> None:
        if bool(enabled) == bool(self._coroutine_origin_tracking_enabled):
            return
        if enabled:
            self._coroutine_origin_tracking_saved_depth = sys.get_coroutine_origin_tracking_depth()
            sys.set_coroutine_origin_tracking_depth(_DEBUG_STACK_DEPTH)
        else:
            sys.set_coroutine_origin_tracking_depth(
                self._coroutine_origin_tracking_saved_depth or 0
            )
        self._coroutine_origin_tracking_enabled = enabled

    def _check_slow_callback(self, handle: Handle, seconds: float) -> None:
        if seconds >= self.slow_callback_duration:
            _logger().warning(
                "Executing %s took %.3f seconds", _format.describe_for_log(handle), seconds
            )

    # ---------------------------------------------------------------- futures and tasks
    # create_future, create_task, set_task_factory and get_task_factory are native (LoopCore).
    if sys.version_info >= (3, 14):
        # 3.14: create_task(coro, **kwargs); the keywords (eager_start=, ...) go to asyncio.Task,
        # or exactly as given to the task factory, as asyncio's loop does.
        create_task = LoopCore._create_task_kwargs  # type: ignore[assignment]

    # ---------------------------------------------------------------- errors

    def get_exception_handler(self) -> Callable[..., Any] | None:
        return self._exception_handler

    def set_exception_handler(self, handler: Callable[..., Any] | None) -> None:
        if handler is not None and not callable(handler):
            raise TypeError(f"A callable object or None is expected, got {handler!r}")
        self._exception_handler = handler

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        message = context.get("message") or "Unhandled exception in event loop"
        exception = context.get("exception")
        exc_info: Any = False
        if exception is not None:
            exc_info = (type(exception), exception, exception.__traceback__)
        current = self._current_handle
        if "source_traceback" not in context and current is not None and current._source_traceback:
            context = dict(context)
            context["handle_traceback"] = current._source_traceback
        lines = [message]
        for key in sorted(context):
            if key in ("message", "exception"):
                continue
            value = context[key]
            if key == "source_traceback":
                text = "".join(traceback.format_list(value)).rstrip()
                value = "Object created at (most recent call last):\n" + text
            elif key == "handle_traceback":
                text = "".join(traceback.format_list(value)).rstrip()
                value = "Handle created at (most recent call last):\n" + text
            else:
                value = repr(value)
            lines.append(f"{key}: {value}")
        _logger().error("\n".join(lines), exc_info=exc_info)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        handler = self._exception_handler
        if handler is None:
            try:
                self.default_exception_handler(context)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                _logger().error("Exception in default exception handler", exc_info=True)
            return
        try:
            ctx = _context_of(context) if _HANDLER_IN_CONTEXT else None
            if ctx is not None:
                ctx.run(handler, self, context)
            else:
                handler(self, context)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            try:
                self.default_exception_handler(
                    {
                        "message": "Unhandled error in exception handler",
                        "exception": exc,
                        "context": context,
                    }
                )
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                _logger().error(
                    "Exception in default exception handler while handling an "
                    "unexpected error in custom exception handler",
                    exc_info=True,
                )

    def _report_callback_error(self, handle: Handle, exc: BaseException) -> None:
        source = _format.format_callback_source(handle._callback, handle._args, self.get_debug())
        context: dict[str, Any] = {
            "message": f"Exception in callback {source}",
            "exception": exc,
            "handle": handle,
        }
        if handle._source_traceback:
            context["source_traceback"] = handle._source_traceback
        self.call_exception_handler(context)

    # ---------------------------------------------------------------- async generators

    def _asyncgen_firstiter_hook(self, agen: Any) -> None:
        if self._asyncgens_shutdown_called:
            warnings.warn(
                f"asynchronous generator {agen!r} was scheduled after "
                f"loop.shutdown_asyncgens() call",
                ResourceWarning,
                stacklevel=2,
                source=self,
            )
        self._asyncgens.add(agen)

    def _asyncgen_finalizer_hook(self, agen: Any) -> None:
        self._asyncgens.discard(agen)
        if not self.is_closed():
            self.call_soon_threadsafe(self.create_task, agen.aclose())

    async def shutdown_asyncgens(self) -> None:
        self._asyncgens_shutdown_called = True
        if not len(self._asyncgens):
            return
        closing = list(self._asyncgens)
        self._asyncgens.clear()
        results = await tasks.gather(*[ag.aclose() for ag in closing], return_exceptions=True)
        for agen, result in zip(closing, results, strict=True):
            if isinstance(result, Exception):
                self.call_exception_handler(
                    {
                        "message": "an error occurred during closing of "
                        f"asynchronous generator {agen!r}",
                        "exception": result,
                        "asyncgen": agen,
                    }
                )

    # ---------------------------------------------------------------- executors

    def _check_default_executor(self) -> None:
        if self._executor_shutdown_called:
            raise RuntimeError("Executor shutdown has been called")

    def run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> Any:
        self._check_closed()
        if self.get_debug() and _format.is_coroutine_like(func):
            raise TypeError("coroutines cannot be used with run_in_executor()")
        if executor is None:
            self._check_default_executor()
            executor = self._default_executor
            if executor is None:
                executor = _DefaultExecutor()
                self._default_executor = executor
        if type(executor) is _DefaultExecutor:
            return executor._submit_to_loop(self, func, args)
        return futures.wrap_future(executor.submit(func, *args), loop=self)

    def set_default_executor(self, executor: Any) -> None:
        if not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            raise TypeError("executor must be ThreadPoolExecutor instance")
        self._default_executor = executor

    async def shutdown_default_executor(self, timeout: float | None = None) -> None:
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is None:
            return
        done = self.create_future()

        def shut_down() -> None:
            error: BaseException | None = None
            try:
                executor.shutdown(wait=True)
            except Exception as exc:
                error = exc
            if not self.is_closed():
                self.call_soon_threadsafe(_settle, done, error)

        thread = threading.Thread(target=shut_down, name="ferroloop-executor-shutdown")
        thread.start()
        try:
            if timeout is None:
                await done
            else:
                await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            warnings.warn(
                f"The executor did not finish joining its threads within {timeout} seconds.",
                RuntimeWarning,
                stacklevel=2,
            )
            executor.shutdown(wait=False)
        finally:
            if timeout is None or not thread.is_alive():
                thread.join()

    # ---------------------------------------------------------------- I/O callbacks

    def add_reader(self, fd: Any, callback: Callable[..., Any], *args: Any) -> None:
        self._ensure_fd_no_transport(fd)
        self._add_reader(fd, callback, *args)

    def remove_reader(self, fd: Any) -> bool:
        self._ensure_fd_no_transport(fd)
        return self._remove_reader(fd)

    def add_writer(self, fd: Any, callback: Callable[..., Any], *args: Any) -> None:
        self._ensure_fd_no_transport(fd)
        self._add_writer(fd, callback, *args)

    def remove_writer(self, fd: Any) -> bool:
        self._ensure_fd_no_transport(fd)
        return self._remove_writer(fd)

    # ---------------------------------------------------------------- transports

    @property
    def _selector(self) -> _SelectorView | None:
        """Read-only view of the reactor's registrations in the ``selectors`` API.

        asyncio's own transport classes (datagram, pipes) consult ``loop._selector`` in their
        ``repr()``; this answers them without exposing the native reactor. ``None`` once the
        loop is closed, as asyncio's selector loop has it.
        """
        return None if self.is_closed() else _SelectorView(self)

    def _make_socket_transport(
        self,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future | None = None,
        *,
        extra: dict[str, Any] | None = None,
        server: Any = None,
        context: Any = None,
    ) -> asyncio.Transport:
        # context: Python 3.15+ passes the one every protocol callback runs in.
        return SocketTransport(self, sock, protocol, waiter, extra, server, context)

    def _make_datagram_transport(
        self,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        address: Any = None,
        waiter: asyncio.Future | None = None,
        extra: dict[str, Any] | None = None,
    ) -> asyncio.DatagramTransport:
        return DatagramTransport(self, sock, protocol, address, waiter, extra)

    def _make_ssl_transport(
        self,
        rawsock: socket.socket,
        protocol: asyncio.BaseProtocol,
        sslcontext: Any,
        waiter: asyncio.Future | None = None,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
        ssl_handshake_timeout: float | None = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float | None = constants.SSL_SHUTDOWN_TIMEOUT,
        context: Any = None,
    ) -> asyncio.Transport:
        # TLS runs in asyncio's SSLProtocol (the ssl module's memory BIOs) over the native
        # socket transport, with a faster read path (_tls.py).
        ssl_protocol = _tls.SSLProtocol(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        SocketTransport(self, rawsock, ssl_protocol, extra=extra, server=server, context=context)
        return ssl_protocol._app_transport

    # ---------------------------------------------------------------- signals

    def _check_signal(self, sig: Any) -> None:
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    def add_signal_handler(self, sig: int, callback: Callable[..., Any], *args: Any) -> None:
        if _format.is_coroutine_like(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        if self._ssock is None:
            ssock, csock = socket.socketpair()
            ssock.setblocking(False)
            csock.setblocking(False)
            self._ssock, self._csock = ssock, csock
            self._add_reader(ssock.fileno(), self._read_signals)
        try:
            # Raises ValueError when not called from the main thread.
            signal.set_wakeup_fd(self._csock.fileno())
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc)) from None
        handle = self._make_handle(callback, *args)
        self._signal_handlers[sig] = handle
        try:
            signal.signal(sig, _sighandler_noop)
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers:
                try:
                    signal.set_wakeup_fd(-1)
                except (ValueError, OSError) as nexc:
                    _logger().info("set_wakeup_fd(-1) failed: %s", nexc)
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught") from None
            raise

    def _read_signals(self) -> None:
        assert self._ssock is not None
        while True:
            try:
                data = self._ssock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            for signum in data:
                if signum:
                    self._handle_signal(signum)

    def _handle_signal(self, sig: int) -> None:
        handle = self._signal_handlers.get(sig)
        if handle is None:
            return
        if handle.cancelled():
            self.remove_signal_handler(sig)
        else:
            self._add_callback(handle)

    def remove_signal_handler(self, sig: int) -> bool:
        self._check_signal(sig)
        try:
            del self._signal_handlers[sig]
        except KeyError:
            return False
        handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught") from None
            raise
        if not self._signal_handlers:
            try:
                signal.set_wakeup_fd(-1)
            except (ValueError, OSError) as exc:
                _logger().info("set_wakeup_fd(-1) failed: %s", exc)
        return True

    def _remove_all_signal_handlers(self) -> None:
        if self._signal_handlers:
            if sys.is_finalizing():
                warnings.warn(
                    f"Closing the loop {self!r} on interpreter shutdown "
                    f"stage, skipping signal handlers removal",
                    ResourceWarning,
                    stacklevel=2,
                    source=self,
                )
                self._signal_handlers.clear()
            else:
                for sig in list(self._signal_handlers):
                    self.remove_signal_handler(sig)
        if self._ssock is not None:
            self._remove_reader(self._ssock.fileno())
            self._ssock.close()
            self._ssock = None
        if self._csock is not None:
            self._csock.close()
            self._csock = None


def _take_asyncio_coroutine_names(cls: type) -> None:
    """Name each of ferroloop's own coroutine methods as asyncio's loop names its counterpart
    (``BaseEventLoop.shutdown_asyncgens``, not ``Loop.shutdown_asyncgens``). A coroutine takes
    its function's ``__qualname__``, and that name is what warnings show and filters match:
    ``asyncio.Runner.close()`` on a loop a test already closed makes a
    ``shutdown_asyncgens()`` coroutine it never awaits, and pytest-asyncio silences that
    warning with a filter on ``BaseEventLoop.shutdown_asyncgens``. Only ferroloop's own
    functions are renamed: the ones taken from asyncio (``_net.BORROWED``) are asyncio's
    objects, which keep their names whatever class asyncio's Unix loop finds a name on."""
    reference = unix_events._UnixSelectorEventLoop
    for klass in cls.__mro__:
        if not klass.__module__.startswith("ferroloop."):
            continue
        for name, func in vars(klass).items():
            theirs = getattr(reference, name, None)
            if (
                inspect.iscoroutinefunction(func)
                and func.__module__.startswith("ferroloop.")
                and inspect.iscoroutinefunction(theirs)
                and func.__qualname__ != theirs.__qualname__
            ):
                func.__qualname__ = theirs.__qualname__


_take_asyncio_coroutine_names(Loop)
