"""pytest plugin: run a library's own test suite on the event loop named by $FERROLOOP_COMPAT_LOOP.

Loaded with ``-p loop_plugin`` (scripts/compat/ on PYTHONPATH) by scripts/compat/run_compat.py.

* ``FERROLOOP_COMPAT_LOOP=ferroloop`` installs ``ferroloop.EventLoopPolicy()`` when the plugin
  is imported, before any conftest or test module; ``asyncio`` installs asyncio's default
  policy. Test harnesses that ask asyncio for a loop (``asyncio.new_event_loop()``,
  ``asyncio.run``, ``asyncio.Runner``, pytest-asyncio) then get that loop.
* Proof that the tests ran on that loop: every loop that starts running, in any thread, passes
  through ``asyncio.events._set_running_loop(loop)`` (asyncio's ``BaseEventLoop.run_forever``
  and ferroloop's ``Loop.run_forever`` both call it). The plugin wraps that function and
  records, for each test (setup, call and teardown), the kind of every loop that ran:
  ``asyncio`` (a ``BaseEventLoop``), ``ferroloop`` (a ``ferroloop.Loop``) or ``other:<class>``.
  A test during which a loop of another kind ran fails the session (exit status 3), and so
  does a session in which no test ran the named loop at all.
* ``FERROLOOP_COMPAT_REPORT=path`` receives a JSON report: each test's outcome (passed, failed,
  skipped) and the loop kinds that ran during it.
* pytest processes that a test starts (anyio's suite tests its pytest plugin with pytester's
  ``runpytest_subprocess``) load this plugin too, through ``$PYTEST_PLUGINS`` (run_compat.py
  sets it): they install the same policy and record every loop, and at exit append the kinds
  to ``<report>.children`` under the node id of the test that started them
  (``$FERROLOOP_COMPAT_TEST``); the session counts them as that test's loops. Such a process
  is told apart from the session by ``$FERROLOOP_COMPAT_SESSION_PID``; pytester's in-process
  runs (``runpytest``) share the session's policy and recorder.
"""

from __future__ import annotations

import asyncio
import asyncio.events
import atexit
import json
import os
import threading
from typing import Any

import pytest

import ferroloop

LOOP = os.environ.get("FERROLOOP_COMPAT_LOOP", "")
if LOOP not in ("asyncio", "ferroloop"):
    raise RuntimeError(f"FERROLOOP_COMPAT_LOOP must be 'asyncio' or 'ferroloop', not {LOOP!r}")

_POLICIES = {"asyncio": asyncio.DefaultEventLoopPolicy, "ferroloop": ferroloop.EventLoopPolicy}

# The session's process sets it; a pytest process started by a test inherits it.
_SESSION_PID = os.environ.setdefault("FERROLOOP_COMPAT_SESSION_PID", str(os.getpid()))
IS_CHILD = _SESSION_PID != str(os.getpid())
REPORT = os.environ.get("FERROLOOP_COMPAT_REPORT", "")
CHILDREN_REPORT = f"{REPORT}.children" if REPORT else ""


def _install_policy() -> None:
    asyncio.set_event_loop_policy(_POLICIES[LOOP]())


_install_policy()


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def loop_kind(loop: object) -> str:
    if isinstance(loop, ferroloop.Loop):
        return "ferroloop"
    if isinstance(loop, asyncio.BaseEventLoop):
        return "asyncio"
    return f"other:{_qualname(type(loop))}"


_lock = threading.Lock()
_current: str = "<outside any test>"  # the node id of the test being run
_loops_by_test: dict[str, dict[str, int]] = {}
_original_set_running_loop = asyncio.events._set_running_loop


def _recording_set_running_loop(loop: Any) -> None:
    if loop is not None:
        kind = loop_kind(loop)
        with _lock:
            kinds = _loops_by_test.setdefault(_current, {})
            kinds[kind] = kinds.get(kind, 0) + 1
    _original_set_running_loop(loop)


asyncio.events._set_running_loop = _recording_set_running_loop


def _write_child_record() -> None:
    """At a child process's exit: the loops it ran, for the test that started it."""
    with _lock:
        kinds: dict[str, int] = {}
        for counts in _loops_by_test.values():
            for kind, n in counts.items():
                kinds[kind] = kinds.get(kind, 0) + n
    record = {
        "test": os.environ.get("FERROLOOP_COMPAT_TEST", "<outside any test>"),
        "pid": os.getpid(),
        "loops": kinds,
    }
    with open(CHILDREN_REPORT, "a") as f:
        f.write(json.dumps(record) + "\n")


if IS_CHILD:
    if CHILDREN_REPORT:
        atexit.register(_write_child_record)
elif CHILDREN_REPORT and os.path.exists(CHILDREN_REPORT):
    os.unlink(CHILDREN_REPORT)  # a previous session's


FAILURE_TEXT = 3000  # characters kept from the end of a failed test's report


class _Recorder:
    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}
        # The end of each failure's report, so that the runner can show why a test failed
        # (CI keeps only what the runner prints).
        self.failures: dict[str, str] = {}
        self.order: list[str] = []
        self.deselected = 0

    @pytest.hookimpl(tryfirst=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        # Again, in case something replaced the policy between the import and now.
        _install_policy()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Any:
        global _current
        with _lock:
            _current = item.nodeid
        os.environ["FERROLOOP_COMPAT_TEST"] = item.nodeid  # for the processes it starts
        try:
            return (yield)
        finally:
            with _lock:
                _current = "<outside any test>"
            os.environ.pop("FERROLOOP_COMPAT_TEST", None)

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += len(items)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        nodeid = report.nodeid
        if nodeid not in self.outcomes:
            self.order.append(nodeid)
            self.outcomes[nodeid] = "passed"
        if report.failed:
            # An error in setup or teardown fails the test, as in pytest's own summary.
            self.outcomes[nodeid] = "failed"
            text = f"[{report.when}] {report.longreprtext}"
            self.failures[nodeid] = (self.failures.get(nodeid, "") + "\n" + text)[-FAILURE_TEXT:]
        elif report.skipped and self.outcomes[nodeid] != "failed":
            # xfail counts as skipped (it did not pass).
            self.outcomes[nodeid] = "skipped"
        elif report.when == "call" and hasattr(report, "wasxfail") and report.passed:
            self.outcomes[nodeid] = "passed"  # xpassed (non-strict)

    def foreign(self) -> dict[str, dict[str, int]]:
        return {
            test: kinds
            for test, kinds in _loops_by_test.items()
            if any(kind != LOOP for kind in kinds)
        }

    def ran_named_loop(self) -> list[str]:
        return [test for test, kinds in _loops_by_test.items() if LOOP in kinds]

    def merge_children(self) -> int:
        """Count the loops of the pytest processes tests started as those tests' loops."""
        if not CHILDREN_REPORT or not os.path.exists(CHILDREN_REPORT):
            return 0
        with open(CHILDREN_REPORT) as f:
            records = [json.loads(line) for line in f if line.strip()]
        with _lock:
            for record in records:
                kinds = _loops_by_test.setdefault(record["test"], {})
                for kind, n in record["loops"].items():
                    kinds[kind] = kinds.get(kind, 0) + n
        return len(records)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        children = self.merge_children()
        foreign = self.foreign()
        ran = self.ran_named_loop()
        report = {
            "loop": LOOP,
            "policy": _qualname(type(asyncio.get_event_loop_policy())),
            "tests": {
                nodeid: {
                    "outcome": self.outcomes[nodeid],
                    "loops": _loops_by_test.get(nodeid, {}),
                    **({"failure": self.failures[nodeid]} if nodeid in self.failures else {}),
                }
                for nodeid in self.order
            },
            "deselected": self.deselected,
            "loops_outside_tests": _loops_by_test.get("<outside any test>", {}),
            "child_processes": children,
            "tests_on_named_loop": len(ran),
            "tests_on_other_loops": foreign,
        }
        if REPORT:
            with open(REPORT, "w") as f:
                json.dump(report, f, indent=1)
        if foreign or (self.order and not ran):
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        foreign = self.foreign()
        ran = self.ran_named_loop()
        tr = terminalreporter
        tr.write_sep("=", f"loop check ({LOOP})")
        tr.write_line(
            f"{len(ran)} of {len(self.order)} tests ran {LOOP}'s loop; "
            f"{len(foreign)} ran another loop"
        )
        for test, kinds in sorted(foreign.items()):
            tr.write_line(f"  ran another loop: {test}: {kinds}", red=True)
        if self.order and not ran:
            tr.write_line(f"  no test ran {LOOP}'s loop: the swap did not take effect", red=True)


_registered = False


def pytest_configure(config: pytest.Config) -> None:
    # One recorder: the session's (not a child process's, nor a pytester in-process run's).
    global _registered
    if IS_CHILD or _registered:
        return
    _registered = True
    config.pluginmanager.register(_Recorder(), "ferroloop-compat-recorder")
