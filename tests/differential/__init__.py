"""Differential property tests: the same random operation sequence on asyncio's loop and on
ferroloop, compared event by event.

Each test is a Hypothesis ``RuleBasedStateMachine`` (a subclass of :class:`DiffMachine`). The
machine owns two :class:`World` objects, one per loop kind; every rule applies the same
operation to both worlds in lockstep (``self.each(...)``) and then compares their traces: the
list of observable events each world recorded (a callback ran with these arguments, a future
finished with this result, a protocol received these bytes, the exception handler was called
with this context, an operation returned this value or raised this exception...). The first
difference fails the example; Hypothesis then shrinks the operation sequence and prints it.

Determinism: each world's ``loop.time`` is a virtual :class:`Clock` that only the machine
advances, so timers fire when the machine says, never by the wall clock; the loop is stepped
one iteration at a time (``call_soon(stop)`` + ``run_forever()``, so it never blocks), and
data written to a socket by the test is in the peer's kernel buffer before the next step.
Timers are given distinct deadlines, except where a rule deliberately creates ties (asyncio
orders those arbitrarily): tied timers record ``"tie"`` events, compared as a multiset per
run. Everything else is compared exactly, after :func:`scrub` has removed what legitimately
differs between two loops (object addresses, task names, port numbers).

Set ``FERROLOOP_DIFF_SELFCHECK=1`` to run both worlds on asyncio's loop: any difference then
is non-determinism in a machine, not a ferroloop defect. ``FERROLOOP_HYPOTHESIS_PROFILE``
selects the settings profile (``ci``, the default, or ``long``), and
``FERROLOOP_HYPOTHESIS_EXAMPLES`` overrides its example count; see README.md here.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import re
import socket
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test

import ferroloop

# ---------------------------------------------------------------- settings profiles

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# max_examples of a profile is the budget of a machine of weight 1 (see run_machine).
# "ci": part of every test run; derandomized, so that a run explores the same examples as the
# last one did (a red CI means a change, not bad luck) -- exploring is the long run's job.
settings.register_profile(
    "ci",
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    database=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=list(HealthCheck),
)
# "long": random examples, many more of them and longer programs.
settings.register_profile(
    "long",
    max_examples=1000,
    stateful_step_count=60,
    deadline=None,
    # Failing examples are remembered (and replayed first) between long runs; /target is
    # git-ignored.
    database=DirectoryBasedExampleDatabase(os.path.join(_ROOT, "target", "hypothesis")),
    print_blob=True,
    suppress_health_check=list(HealthCheck),
)
PROFILE = os.environ.get("FERROLOOP_HYPOTHESIS_PROFILE", "ci")
SELFCHECK = os.environ.get("FERROLOOP_DIFF_SELFCHECK", "0") == "1"

# pytest-timeout's per-test limit (pyproject: 120 s) does not fit a long run.
MACHINE_MARKS = [pytest.mark.timeout(0 if PROFILE != "ci" else 120)]


def run_machine(machine: type[RuleBasedStateMachine], weight: float = 1.0) -> None:
    """Runs a machine with the selected profile; weight scales the profile's max_examples
    (a machine whose examples are slow gets fewer)."""
    base = settings.get_profile(PROFILE)
    examples = int(os.environ.get("FERROLOOP_HYPOTHESIS_EXAMPLES", base.max_examples))
    with _on_one_cpu(getattr(machine, "world_class", World).network):
        run_state_machine_as_test(
            machine,
            settings=settings(base, max_examples=max(1, int(examples * weight))),
        )


@contextlib.contextmanager
def _on_one_cpu(pin: bool) -> Iterator[None]:
    """Keeps the calling thread on the CPU it runs on (World.settle_network needs it)."""
    if not pin or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    here = _current_cpu()
    try:
        os.sched_setaffinity(0, {here if here in before else min(before)})
    except OSError:  # not allowed here (a sandbox): settle_network still helps, unpinned
        yield
        return
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _current_cpu() -> int:
    """The CPU this thread runs on (field 39 of /proc/thread-self/stat), or -1."""
    try:
        with open("/proc/thread-self/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return -1


# ---------------------------------------------------------------- the worlds

FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "ferroloop": ferroloop.new_event_loop,
}

# The two worlds of every example: (reference, candidate).
KINDS = ("asyncio", "asyncio") if SELFCHECK else ("asyncio", "ferroloop")

# A context variable that callbacks, tasks and done callbacks record.
cv: contextvars.ContextVar[Any] = contextvars.ContextVar("fl_diff_cv", default="unset")

MS = 0.001
US = 0.0000001  # a tenth of a microsecond: timer offsets (see the machines)


class Clock:
    """The loops' time(): moves only when the machine advances it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now


_ADDR = re.compile(r" at 0x[0-9a-fA-F]+")
_TASK = re.compile(r"Task-\d+")
_PORT = re.compile(r"('127\.0\.0\.1', )\d+")
# Source positions ("created at /x/y.py:12", also cut short by reprlib: "...y.py:12>"). In
# debug mode asyncio's own create_future() shows its line in base_events.py, ferroloop's
# (native) the caller's: a finding of its own (test_diff_futures.py::
# test_debug_future_created_at), not repeated by every machine.
_CREATED = re.compile(r"\S*\.py:\d+")


def scrub(value: Any) -> Any:
    """What is compared of a value: strings lose object addresses, task numbers (asyncio
    numbers tasks process-wide, so the second world's are higher), source positions and
    loopback port numbers; containers are scrubbed element by element."""
    if isinstance(value, str):
        value = _TASK.sub("Task-N", _ADDR.sub(" at 0x?", value))
        return _PORT.sub(r"\1PORT", _CREATED.sub("?.py:?", value))
    if isinstance(value, tuple):
        return tuple(scrub(v) for v in value)
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def describe_exc(exc: BaseException | None) -> Any:
    if exc is None:
        return None
    return (type(exc).__name__, scrub(str(exc)))


class World:
    """One loop and everything a machine made on it, with the trace of what was observed."""

    def __init__(self, kind: str, debug: bool = False) -> None:
        self.kind = kind
        self.loop = FACTORIES[kind]()
        self.loop.set_debug(debug)
        self.clock = Clock()
        self.loop.time = self.clock.time  # type: ignore[method-assign]
        self.trace: list[tuple] = []
        self.objs: dict[int, Any] = {}
        self.sockets: list[socket.socket] = []
        self.loop.set_exception_handler(self._exception_handler)

    # ------------------------------------------------------------ recording

    def record(self, *event: Any) -> None:
        self.trace.append(event)

    def _exception_handler(self, loop, context: dict) -> None:
        self.record(
            "handler",
            scrub(context.get("message")),
            tuple(sorted(k for k in context if k not in ("source_traceback", "handle_traceback"))),
            describe_exc(context.get("exception")),
        )

    # ------------------------------------------------------------ stepping

    def run_once(self) -> None:
        """One iteration: what is ready now, I/O already readable, timers due."""
        if self.network:
            self.settle_network()
        self.loop.call_soon(self.loop.stop)
        self.loop.run_forever()

    # Worlds whose sockets talk over loopback TCP/UDP set this: before each iteration every
    # packet this thread sent has reached its socket (see settle_network).
    network = False
    _markers: tuple[socket.socket, socket.socket] | None = None

    def settle_network(self) -> None:
        """Waits until the kernel has delivered every packet this thread sent so far.

        A loopback send queues the packet on this CPU's backlog, usually processed before
        sendto() returns, but under load the kernel may defer it (to ksoftirqd); one world
        would then see a datagram in this iteration and the other in the next (a CI failure
        of the datagram machine). The backlog is a queue per CPU and run_machine() keeps the
        thread on one CPU, so a marker datagram's arrival means that everything sent before
        it was processed; a second marker covers what that processing sent (an ICMP error
        for a closed port, a TCP ACK)."""
        if self._markers is None:
            rx = self.sock(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            rx.bind(("127.0.0.1", 0))
            rx.settimeout(5.0)
            tx = self.sock(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            tx.connect(rx.getsockname())
            self._markers = (rx, tx)
        rx, tx = self._markers
        for _ in range(2):
            tx.send(b"m")
            rx.recv(16)

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    def run_until(self, predicate: Callable[[], bool], limit: int = 50) -> bool:
        for _ in range(limit):
            if predicate():
                return True
            self.run_once()
        return predicate()

    def sock(self, s: socket.socket) -> socket.socket:
        self.sockets.append(s)
        return s

    # ------------------------------------------------------------ teardown

    def before_close(self) -> None:
        """Subclasses close transports, retrieve exceptions, cancel tasks here."""

    def dispose(self) -> None:
        loop = self.loop
        try:
            if not loop.is_closed():
                self.before_close()
                for _ in range(3):
                    self.run_once()
                loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            for s in self.sockets:
                s.close()
            if not loop.is_closed():
                loop.close()
            asyncio.set_event_loop(None)


class TraceMismatch(AssertionError):
    pass


def short(value: Any) -> Any:
    """For messages: long bytes shortened to their start, length and checksum."""
    if isinstance(value, bytes | bytearray) and len(value) > 24:
        return f"<{bytes(value[:12])!r}... {len(value)} bytes, crc {zlib.crc32(value):08x}>"
    if isinstance(value, tuple):
        return tuple(short(v) for v in value)
    if isinstance(value, list):
        return [short(v) for v in value]
    return value


def _tie_runs_sorted(trace: list[tuple]) -> list[tuple]:
    """Consecutive "tie" events (timers that share a deadline on purpose) as a multiset."""
    out: list[tuple] = []
    run: list[tuple] = []
    for ev in trace + [("end",)]:
        if ev[0] == "tie":
            run.append(ev)
            continue
        if run:
            out.extend(sorted(run, key=repr))
            run = []
        if ev[0] != "end":
            out.append(ev)
    return out


class DiffMachine(RuleBasedStateMachine):
    """Two worlds in lockstep; every rule goes through each(), which compares the traces."""

    world_class: type[World] = World
    debug = False

    def __init__(self) -> None:
        super().__init__()
        self._ids = 0
        self.worlds: list[World] = []
        for kind in KINDS:
            self.worlds.append(self.world_class(kind, self.debug))

    def new_id(self) -> int:
        self._ids += 1
        return self._ids

    def normalise(self, trace: list[tuple]) -> list[tuple]:
        return _tie_runs_sorted(scrub(trace))

    def each(self, op: str | Callable[..., Any], *args: Any, record: bool = True) -> None:
        """Applies op (a World method name, or a function of the world) to every world:
        its return value (unless None, or record is False) or the exception it raised becomes
        an event; then the traces are compared."""
        for w in self.worlds:
            fn = getattr(w, op) if isinstance(op, str) else (lambda *a, w=w: op(w, *a))
            if w.network:
                w.settle_network()  # what the previous op sent has arrived (a peer reads it)
            try:
                result = fn(*args)
            except Exception as exc:
                w.record("raised", getattr(op, "__name__", op), describe_exc(exc))
            else:
                if record and result is not None:
                    w.record("ret", getattr(op, "__name__", op), result)
        self.compare()

    def compare(self) -> None:
        a, b = self.worlds
        ta, tb = self.normalise(a.trace), self.normalise(b.trace)
        if ta == tb:
            return
        i = next((i for i, (x, y) in enumerate(zip(ta, tb, strict=False)) if x != y), None)
        if i is None:
            i = min(len(ta), len(tb))
        lo = max(0, i - 8)
        lines = [f"traces differ at event {i} ({a.kind} | {b.kind}):"]
        for j in range(lo, max(len(ta), len(tb))):
            x = short(ta[j]) if j < len(ta) else "-"
            y = short(tb[j]) if j < len(tb) else "-"
            mark = "  " if x == y else "!!"
            lines.append(f"{mark} {j}: {x!r}\n{' ' * (len(str(j)) + 5)}{y!r}")
            if j > i + 12:
                break
        raise TraceMismatch("\n".join(lines))

    def teardown(self) -> None:
        errors = []
        for w in self.worlds:
            try:
                w.dispose()
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
        if errors:
            raise errors[0]


def pattern(tag: int, size: int) -> bytes:
    """size bytes that tell where they came from (a write's id) and where they are in it."""
    head = f"<{tag}:".encode()
    body = (head + bytes(range(48, 58)) * (size // 10 + 1))[:size]
    return body
