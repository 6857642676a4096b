"""Child side of the conformance runner: swap the event loop, then run one test module.

Started by ``run_conformance.py`` once per module (and again after a crash/hang, with the
tests already done passed via ``--skip-file``)::

    python tests/conformance/bootstrap.py --loop uvloop --module test_tasks \
        --results /tmp/x/results.jsonl

It can also be used by hand to debug a single test with the swapped loop::

    python tests/conformance/bootstrap.py --loop ferroloop --module test_events \
        -k '*test_create_server*' --results /dev/stdout

The swap (``install_loop``) MUST happen before the test module is imported, because test
modules bind names such as ``asyncio.SelectorEventLoop`` at class-definition time in a few
places.  See README.md for what is patched and why.

Results are written incrementally, one JSON object per line, with ``os.write`` on an
O_APPEND file descriptor (no Python buffering), so the parent sees every finished test even
if this process later segfaults, aborts or is killed because it hung.
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.events
import asyncio.unix_events
import faulthandler
import fnmatch
import importlib
import json
import os
import signal
import sys
import threading
import time
import traceback
import unittest
import warnings

LOOP_MODULES = {
    "uvloop": "uvloop",
    "rloop": "rloop",
    "ferroloop": "ferroloop",
}

_RESULTS_FD: int | None = None


def emit(event: dict) -> None:
    """Append one JSON line to the results file (unbuffered, crash-safe)."""
    line = (json.dumps(event, default=str) + "\n").encode("utf-8", "replace")
    if _RESULTS_FD is None:
        sys.stderr.write(line.decode())
        return
    while line:
        n = os.write(_RESULTS_FD, line)
        line = line[n:]


# Python 3.14 deprecated the policy API (asyncio.get/set_event_loop_policy,
# asyncio.DefaultEventLoopPolicy, AbstractEventLoopPolicy...; removal planned for 3.16) and
# keeps the machinery under private names, which its own test-suite uses: so does the harness,
# adding no deprecation warnings of its own.
_get_policy = getattr(asyncio.events, "_get_event_loop_policy", None) or (
    asyncio.events.get_event_loop_policy
)
_set_policy = getattr(asyncio.events, "_set_event_loop_policy", None) or (
    asyncio.events.set_event_loop_policy
)
_BASE_POLICY = vars(asyncio.events).get("_BaseDefaultEventLoopPolicy") or vars(asyncio.events).get(
    "BaseDefaultEventLoopPolicy"
)
_ABSTRACT_POLICY = vars(asyncio.events).get("_AbstractEventLoopPolicy") or vars(asyncio.events).get(
    "AbstractEventLoopPolicy"
)


def _qualname(obj: object) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


# --------------------------------------------------------------------------------------
# The swap
# --------------------------------------------------------------------------------------


def _resolve_loop(name: str):
    """Return (loop_factory, policy_class) for a third-party loop package."""
    mod = importlib.import_module(LOOP_MODULES[name])
    factory = getattr(mod, "new_event_loop", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.14+: policies are deprecated
        policy_cls = getattr(mod, "EventLoopPolicy", None)
    if factory is None and policy_cls is None:
        raise RuntimeError(f"{name} has neither new_event_loop() nor EventLoopPolicy")
    if policy_cls is None:
        # Synthesize a policy around the factory (same shape as uvloop's policy).
        class _SynthPolicy(_BASE_POLICY):
            def _loop_factory(self):
                return factory()

        _SynthPolicy.__name__ = _SynthPolicy.__qualname__ = f"{name}_EventLoopPolicy"
        policy_cls = _SynthPolicy
    if factory is None:

        def factory():
            return policy_cls().new_event_loop()

    return factory, policy_cls


def _with_child_watcher_api(policy_cls):
    """Policy shim: give a policy without the (Unix, 3.8-3.13) child-watcher API the one of
    asyncio's default Unix policy.

    test_events, test_subprocess, test_unix_events... call ``asyncio.set_child_watcher()``
    / ``policy.set_child_watcher()`` in setUp.  That API belongs to the *policy*, is
    deprecated since 3.12 and gone in 3.14; uvloop's policy (and possibly ferroloop's)
    inherits AbstractEventLoopPolicy's ``raise NotImplementedError`` for it, which would make
    every test of those classes error in setUp regardless of what the loop does.  The loop
    itself may ignore the watcher (uvloop, rloop track children themselves).
    """
    base_method = getattr(_ABSTRACT_POLICY, "set_child_watcher", None)
    unix = asyncio.unix_events._UnixDefaultEventLoopPolicy
    if base_method is None or not hasattr(unix, "set_child_watcher"):
        return policy_cls, False  # Python 3.14+: no child watchers at all
    if getattr(policy_cls, "set_child_watcher", None) is not base_method:
        return policy_cls, False  # the policy has its own (e.g. derives from asyncio's)

    class Policy(policy_cls):
        _watcher = None
        _init_watcher = unix._init_watcher
        get_child_watcher = unix.get_child_watcher
        set_child_watcher = unix.set_child_watcher

        def set_event_loop(self, loop):
            super().set_event_loop(loop)
            if self._watcher is not None and threading.current_thread() is threading.main_thread():
                self._watcher.attach_loop(loop)

    Policy.__module__ = policy_cls.__module__
    Policy.__name__ = policy_cls.__name__
    Policy.__qualname__ = f"{policy_cls.__qualname__}+child_watcher_shim"
    return Policy, True


def install_loop(name: str, shims: bool = True) -> dict:
    """Install loop ``name`` everywhere asyncio's test-suite obtains an event loop.

    Returns a dict describing what was installed (used for the sanity check).
    With ``name == "asyncio"`` nothing is patched (reference run).
    """
    if name == "asyncio":
        return {"patched": []}

    factory, policy_cls = _resolve_loop(name)
    policy_shimmed = False
    if shims:
        policy_cls, policy_shimmed = _with_child_watcher_api(policy_cls)

    # Probe the loop class once (for isinstance() support and the sanity check).
    probe = factory()
    loop_cls = type(probe)
    probe.close()

    orig_default_policy = asyncio.unix_events._UnixDefaultEventLoopPolicy

    # 1. asyncio.SelectorEventLoop(selector=None) -> the swapped loop.  test_events,
    #    test_sock_lowlevel and test_sendfile build SelectorEventLoop(SelectSelector()) /
    #    PollSelector() / EpollSelector(); the selector is ignored (the loop has its own
    #    poller), so those three test classes all exercise the swapped loop.
    class _SwappedSelectorEventLoopMeta(type):
        def __call__(cls, selector=None):
            if selector is not None:
                try:
                    selector.close()
                except Exception:
                    pass
            return factory()

        def __instancecheck__(cls, obj):
            return isinstance(obj, loop_cls)

        def __subclasscheck__(cls, sub):
            return issubclass(sub, loop_cls)

    class SelectorEventLoop(metaclass=_SwappedSelectorEventLoopMeta):
        """Stand-in for asyncio.SelectorEventLoop that builds the swapped loop."""

    SelectorEventLoop.__module__ = __name__
    SelectorEventLoop.__qualname__ = f"SelectorEventLoop[{name}]"

    # 2. new_event_loop(): keep the policy semantics (tests install their own policies and
    #    expect new_event_loop() to honour them) but if anybody managed to install
    #    asyncio's *original* default policy, still hand out the swapped loop.
    def new_event_loop():
        policy = _get_policy()
        if type(policy) is orig_default_policy:
            return factory()
        return policy.new_event_loop()

    new_event_loop.__doc__ = asyncio.events.new_event_loop.__doc__

    patched = []

    def patch(obj, attr, value):
        if hasattr(obj, attr):
            setattr(obj, attr, value)
            patched.append(f"{obj.__name__}.{attr}")

    # 3. DefaultEventLoopPolicy: asyncio.events._init_event_loop_policy() does
    #    ``from . import DefaultEventLoopPolicy`` every time the policy is None, i.e. after
    #    every ``asyncio.set_event_loop_policy(None)`` (tearDownModule of most test modules,
    #    test_utils, IsolatedAsyncioTestCase...).  Patching the name in the asyncio package
    #    makes that reset fall back to the swapped policy instead of asyncio's default.
    #    3.14+: the reset imports ``_DefaultEventLoopPolicy`` from asyncio.unix_events, and
    #    ``asyncio.DefaultEventLoopPolicy`` is a module __getattr__ that warns (tests check
    #    that) and returns that same name: patching it is enough.
    if "_DefaultEventLoopPolicy" in vars(asyncio.unix_events):
        patch(asyncio.unix_events, "_DefaultEventLoopPolicy", policy_cls)
    else:
        patch(asyncio, "DefaultEventLoopPolicy", policy_cls)
        patch(asyncio.unix_events, "DefaultEventLoopPolicy", policy_cls)
    patch(asyncio, "SelectorEventLoop", SelectorEventLoop)
    patch(asyncio.unix_events, "SelectorEventLoop", SelectorEventLoop)
    patch(asyncio, "EventLoop", SelectorEventLoop)  # 3.13+
    patch(asyncio.unix_events, "EventLoop", SelectorEventLoop)  # 3.13+
    patch(asyncio, "new_event_loop", new_event_loop)
    patch(asyncio.events, "new_event_loop", new_event_loop)

    # 4. And the policy itself.
    _set_policy(policy_cls())
    patched.append("asyncio.set_event_loop_policy()")

    shim_list = ["policy child-watcher API (asyncio.unix_events)"] if policy_shimmed else []
    return {"patched": patched, "shims": shim_list, "expected_loop_class": _qualname(loop_cls)}


class _NoExecutorAdapter:
    """Lets test_utils.TestCase.close_loop() handle a loop without ``_default_executor``."""

    _default_executor = None

    def __init__(self, loop):
        self._loop = loop

    def is_closed(self):
        return self._loop.is_closed()

    def close(self):
        self._loop.close()


def install_harness_shims() -> list[str]:
    """Make the *test harness* (not the tests) loop-agnostic.

    ``test.test_asyncio.utils.TestCase.close_loop`` -- the cleanup of every test that calls
    ``self.set_event_loop(loop)`` -- reads ``loop._default_executor`` (an attribute of
    asyncio.BaseEventLoop) to decide whether to shut the executor down.  On a loop without
    that attribute every such test would error in its cleanup, whatever it tested.  The
    shim does the same thing through the public API (``shutdown_default_executor()``) for
    loops that lack the attribute; loops that have it go through the original code.
    """
    from test.test_asyncio import utils as test_utils

    orig = test_utils.TestCase.close_loop

    def close_loop(loop):
        if hasattr(loop, "_default_executor"):
            return orig(loop)
        if not loop.is_closed():
            loop.run_until_complete(loop.shutdown_default_executor())
        return orig(_NoExecutorAdapter(loop))

    test_utils.TestCase.close_loop = staticmethod(close_loop)
    return ["test.test_asyncio.utils.TestCase.close_loop"]


def loop_sanity(stage: str) -> dict:
    """Report which loop class asyncio hands out right now."""
    loop = asyncio.new_event_loop()
    try:
        info = {
            "ev": "loop",
            "stage": stage,
            "new_event_loop": _qualname(loop),
            "policy": _qualname(_get_policy()),
        }
    finally:
        loop.close()
    sel = asyncio.SelectorEventLoop()
    try:
        info["SelectorEventLoop"] = _qualname(sel)
    finally:
        sel.close()
    # asyncio.set_event_loop_policy(None) must fall back to the swapped policy.
    saved = asyncio.events._event_loop_policy
    try:
        _set_policy(None)
        loop = _get_policy().new_event_loop()
        info["after_policy_reset"] = _qualname(loop)
        loop.close()
    finally:
        asyncio.events._event_loop_policy = saved
    return info


# --------------------------------------------------------------------------------------
# Incremental result recording
# --------------------------------------------------------------------------------------


def _short(err_text: str) -> str:
    lines = [ln for ln in err_text.strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else ""


class JsonLinesResult(unittest.TestResult):
    """Writes ``start``/``end`` events, one JSON line each, as tests run."""

    def __init__(self, test_timeout: float, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._test_timeout = test_timeout
        self._cur: dict | None = None

    # -- per-test lifecycle ------------------------------------------------------------
    def startTest(self, test):
        super().startTest(test)
        self._cur = {"id": test.id(), "outcome": None, "msg": "", "tb": "", "t0": time.monotonic()}
        emit({"ev": "start", "id": test.id()})
        if self._test_timeout > 0:
            # Dump all thread tracebacks to stderr (the log) shortly before the parent's
            # inactivity timeout kills us, so hangs can be diagnosed.
            faulthandler.dump_traceback_later(max(1.0, self._test_timeout - 3), exit=False)

    def stopTest(self, test):
        if self._test_timeout > 0:
            faulthandler.cancel_dump_traceback_later()
        cur = self._cur
        self._cur = None
        if cur is not None and cur["id"] == test.id():
            outcome = cur["outcome"] or "pass"
            emit(
                {
                    "ev": "end",
                    "id": cur["id"],
                    "outcome": outcome,
                    "dur": round(time.monotonic() - cur["t0"], 4),
                    "msg": cur["msg"],
                    "tb": cur["tb"][-6000:],
                }
            )
        super().stopTest(test)

    def _set(self, test, outcome: str, err=None, msg: str = "") -> bool:
        """Record outcome on the current test; returns False for fixture holders."""
        text = self._exc_info_to_string(err, test) if err is not None else ""
        cur = self._cur
        if cur is None or cur["id"] != test.id():
            # _ErrorHolder: setUpModule/setUpClass/tearDownClass/... failure or skip.
            emit(
                {
                    "ev": "fixture",
                    "id": test.id(),
                    "outcome": outcome,
                    "msg": msg or _short(text),
                    "tb": text[-6000:],
                }
            )
            return False
        rank = {None: 0, "pass": 1, "xfail": 1, "skip": 2, "fail": 3, "error": 4, "upass": 3}
        if rank.get(outcome, 0) >= rank.get(cur["outcome"], 0):
            cur["outcome"] = outcome
            cur["msg"] = msg or _short(text)
            cur["tb"] = text
        return True

    def addSuccess(self, test):
        super().addSuccess(test)
        self._set(test, "pass")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set(test, "fail", err)

    def addError(self, test, err):
        super().addError(test, err)
        self._set(test, "error", err)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._set(test, "skip", msg=str(reason)[:500])

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._set(test, "xfail", err)

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._set(test, "upass", msg="unexpected success")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            kind = "fail" if issubclass(err[0], test.failureException) else "error"
            text = self._exc_info_to_string(err, test)
            if self._cur is not None and self._cur["id"] == test.id():
                self._set(test, kind, err, msg=f"{subtest._subDescription()}: {_short(text)}")


def _flatten(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _flatten(item)
        else:
            yield item


def _match(test_id: str, patterns: list[str]) -> bool:
    for p in patterns:
        if any(c in p for c in "*?["):
            if fnmatch.fnmatchcase(test_id, p):
                return True
        elif p in test_id:
            return True
    return False


def main(argv=None) -> int:
    global _RESULTS_FD
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--loop", required=True, choices=["asyncio", *LOOP_MODULES])
    ap.add_argument("--module", required=True, help="e.g. test_tasks")
    ap.add_argument("--results", required=True, help="JSON-lines output file (appended)")
    ap.add_argument("--skip-file", help="file with test ids (one a line) not to run")
    ap.add_argument(
        "-k", dest="patterns", action="append", default=[], help="only run matching ids"
    )
    ap.add_argument("--test-timeout", type=float, default=0.0)
    ap.add_argument("--no-shims", action="store_true", help="do not install harness shims")
    args = ap.parse_args(argv)

    if args.results in ("-", "/dev/stdout"):
        _RESULTS_FD = 1
    else:
        _RESULTS_FD = os.open(args.results, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    faulthandler.enable(all_threads=True)
    # Started in the background by a non-interactive shell (`cmd &`), a process begins with
    # SIGINT ignored, and Python then leaves it ignored: test_runners' Ctrl-C tests would wait
    # forever. Give the tests the interpreter's usual handler.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

    if args.test_timeout > 0:
        # Tests wait for conditions with support.SHORT_TIMEOUT (30s; bound as a default
        # argument of test_utils.run_until at import time, hence set before the import).
        # Shorten it below the parent's inactivity timeout so a condition that never comes
        # true is an ordinary failure with a traceback instead of a killed process.  The
        # slowest passing test on asyncio takes ~2.5s.
        from test import support

        support.SHORT_TIMEOUT = min(support.SHORT_TIMEOUT, max(5.0, args.test_timeout / 2))
        support.LONG_TIMEOUT = min(support.LONG_TIMEOUT, max(5.0, args.test_timeout - 2))

    try:
        info = install_loop(args.loop, shims=not args.no_shims)
        if args.loop != "asyncio" and not args.no_shims:
            info["shims"] += install_harness_shims()
        sanity = loop_sanity("bootstrap")
    except BaseException as exc:  # noqa: BLE001 - report anything, then bail out
        emit(
            {
                "ev": "bootstrap_error",
                "msg": f"{type(exc).__name__}: {exc}",
                "tb": traceback.format_exc(),
            }
        )
        return 3
    sanity["patched"] = info["patched"]
    sanity["shims"] = info.get("shims", [])
    emit(sanity)
    print(
        f"[conformance] loop={args.loop} asyncio.new_event_loop() -> {sanity['new_event_loop']}"
        f" (policy {sanity['policy']})",
        file=sys.stderr,
        flush=True,
    )

    name = f"test.test_asyncio.{args.module}"
    suite = unittest.defaultTestLoader.loadTestsFromName(name)
    tests = list(_flatten(suite))
    if args.patterns:
        tests = [t for t in tests if _match(t.id(), args.patterns)]
    skip = set()
    if args.skip_file and os.path.exists(args.skip_file):
        with open(args.skip_file) as f:
            skip = {ln.strip() for ln in f if ln.strip()}
    emit({"ev": "collected", "ids": [t.id() for t in tests]})
    todo = unittest.TestSuite([t for t in tests if t.id() not in skip])

    result = JsonLinesResult(args.test_timeout)
    t0 = time.monotonic()
    todo.run(result)  # top-level run() also runs tearDownClass/tearDownModule

    after = loop_sanity("after")
    emit(after)
    emit({"ev": "done", "dur": round(time.monotonic() - t0, 3)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
