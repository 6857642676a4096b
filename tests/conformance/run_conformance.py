#!/usr/bin/env python3
"""Run CPython's own asyncio test-suite (``test.test_asyncio``) against an event loop.

    python tests/conformance/run_conformance.py --loop ferroloop [-j 2] [--check]
    python tests/conformance/run_conformance.py --loop uvloop --modules test_tasks,test_events
    python tests/conformance/run_conformance.py --loop asyncio --modules all --update-reference

Each test module runs in its own subprocess (``bootstrap.py``) which swaps the requested
loop into asyncio *before* importing the module, then records one JSON line per finished
test.  A crash (segfault, abort) or a hang (no test finished for ``--test-timeout``
seconds; the whole process group is killed) is recorded against the test that was
running, and the module is restarted without the tests that already have an outcome, so
one bad test does not cost the rest of the module.  See README.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import fnmatch
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
BOOTSTRAP = HERE / "bootstrap.py"
FLOORS = HERE / "floors.json"  # see floors_file()
REFERENCE = HERE / "reference_counts.json"
PRIVATE = HERE / "private_tests.txt"

LOOPS = ("asyncio", "uvloop", "rloop", "ferroloop")
ID_PREFIX = "test.test_asyncio."

CORE_MODULES = [
    "test_tasks",
    "test_futures",
    "test_futures2",
    "test_locks",
    "test_queues",
    "test_taskgroups",
    "test_timeouts",
    "test_waitfor",
    "test_runners",
    "test_pep492",
    "test_context",
    "test_threads",
]
IO_MODULES = [
    "test_events",
    "test_sock_lowlevel",
    "test_sendfile",
    "test_subprocess",
    "test_streams",
    "test_server",
    "test_buffered_proto",
    "test_ssl",
    "test_sslproto",
]
DEFAULT_MODULES = CORE_MODULES + IO_MODULES
EXCLUDED_FROM_ALL = ("windows", "proactor")

PASS = {"pass", "xfail"}
FAIL = {"fail", "upass"}
ERROR = {"error", "crash", "timeout", "notrun"}
SKIP = {"skip"}

_ACTIVE: set[subprocess.Popen] = set()
_ACTIVE_LOCK = threading.Lock()
_PRINT_LOCK = threading.Lock()


def log(msg: str) -> None:
    with _PRINT_LOCK:
        print(msg, file=sys.stderr, flush=True)


def python_tag() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def floors_file() -> Path:
    """floors.json holds the floors for the Python it was recorded on (3.11, CI's main run);
    each other version keeps its own in floors-3.X.json (test counts differ by version)."""
    recorded = load_json(FLOORS, {}).get("python")
    if recorded in (None, python_tag()):
        return FLOORS
    return HERE / f"floors-{python_tag()}.json"


def all_modules() -> list[str]:
    spec = importlib.util.find_spec("test.test_asyncio")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("CPython's test.test_asyncio package is not installed for this python")
    pkgdir = Path(list(spec.submodule_search_locations)[0])
    names = sorted(p.stem for p in pkgdir.glob("test_*.py"))
    return [n for n in names if not any(x in n for x in EXCLUDED_FROM_ALL)]


def short_id(test_id: str) -> str:
    return test_id[len(ID_PREFIX) :] if test_id.startswith(ID_PREFIX) else test_id


# --------------------------------------------------------------------------------------
# private_tests.txt
# --------------------------------------------------------------------------------------


class PrivateList:
    """Parses private_tests.txt.  Line format::

        test_id [~ regex]  # reason

    ``test_id`` may omit the ``test.test_asyncio.`` prefix and may be an fnmatch pattern
    (``*`` ``?`` ``[``).  With ``~ regex`` a failure only counts as "private API" if the
    regex is found (re.search) in its message/traceback -- e.g. ``~ _stop_serving`` -- so a
    test that fails for another reason still shows up as a real failure."""

    def __init__(self, path: Path):
        self.entries: list[tuple[str, re.Pattern | None, str]] = []
        if not path.exists():
            return
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            spec, _, reason = line.partition("#")
            spec, reason = spec.strip(), reason.strip()
            tid, _, rx = spec.partition("~")
            tid, rx = tid.strip(), rx.strip()
            if not tid:
                continue
            if not tid.startswith(ID_PREFIX):
                tid = ID_PREFIX + tid
            self.entries.append((tid, re.compile(rx) if rx else None, reason))

    def reason(self, test_id: str, text: str | None = None) -> str | None:
        """Reason if ``test_id`` is listed (and its failure ``text`` matches, if given)."""
        for pat, rx, reason in self.entries:
            if pat == test_id or (
                any(c in pat for c in "*?[") and fnmatch.fnmatchcase(test_id, pat)
            ):
                if rx is None or text is None or rx.search(text):
                    return reason
        return None

    def classify(self, test_id: str, outcome: dict) -> str | None:
        if outcome["outcome"] in PASS or outcome["outcome"] in SKIP:
            return None
        return self.reason(test_id, f"{outcome.get('msg', '')}\n{outcome.get('tb', '')}")


# --------------------------------------------------------------------------------------
# Running one module
# --------------------------------------------------------------------------------------


@dataclass
class ModuleResult:
    module: str
    outcomes: dict[str, dict] = field(default_factory=dict)  # id -> {outcome,msg,tb,dur}
    collected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    incidents: list[dict] = field(default_factory=list)  # crashes / hangs
    loop_checks: list[dict] = field(default_factory=list)
    bootstrap_error: str | None = None
    swap_error: str | None = None
    seconds: float = 0.0
    attempts: int = 0

    def counts(self, private: PrivateList) -> dict:
        c = {"passed": 0, "failed": 0, "errors": 0, "private": 0, "skipped": 0}
        for tid, o in self.outcomes.items():
            oc = o["outcome"]
            if oc in PASS:
                c["passed"] += 1
            elif oc in SKIP:
                c["skipped"] += 1
            elif private.classify(tid, o) is not None:
                c["private"] += 1
            elif oc in FAIL:
                c["failed"] += 1
            else:
                c["errors"] += 1
        c["total"] = sum(c.values())
        return c


def _signame(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def _fixture_scope(holder_id: str) -> tuple[str, str]:
    """'setUpClass (test.test_asyncio.m.Cls)' -> ('setUpClass', 'test.test_asyncio.m.Cls')."""
    method, _, rest = holder_id.partition(" (")
    return method, rest.rstrip(")")


def expected_loop_prefix(loop: str) -> str:
    return "asyncio." if loop == "asyncio" else f"{loop}."


def run_module(module: str, loop: str, opts, workroot: Path) -> ModuleResult:
    res = ModuleResult(module)
    if opts.budget_deadline is not None and time.monotonic() > opts.budget_deadline:
        res.notes.append("NOT RUN: --budget exhausted")
        return res
    mdir = Path(tempfile.mkdtemp(prefix=f"{module}-", dir=workroot))
    results_path = mdir / "results.jsonl"
    skip_path = mdir / "skip.txt"
    log_path = mdir / "output.log"
    cwd = mdir / "cwd"
    cwd.mkdir()
    t_start = time.monotonic()
    deadline = t_start + opts.timeout
    if opts.budget_deadline is not None:
        deadline = min(deadline, opts.budget_deadline)
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONASYNCIODEBUG", None)
    offset = 0
    pending = b""

    def consume(current: list[str | None], state: dict) -> bool:
        """Read new result lines; returns True if any arrived."""
        nonlocal offset, pending
        try:
            with open(results_path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return False
        if not data:
            return False
        offset += len(data)
        pending += data
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            try:
                ev = json.loads(raw)
            except ValueError:
                continue
            kind = ev.get("ev")
            if kind == "start":
                current[0] = ev["id"]
            elif kind == "end":
                current[0] = None
                res.outcomes[ev["id"]] = {
                    "outcome": ev["outcome"],
                    "msg": ev.get("msg", ""),
                    "tb": ev.get("tb", ""),
                    "dur": ev.get("dur", 0.0),
                }
            elif kind == "fixture":
                method, scope = _fixture_scope(ev["id"])
                if method.startswith("setUp") and scope:
                    hit = False
                    for tid in res.collected:
                        if tid.startswith(scope + ".") and tid not in res.outcomes:
                            res.outcomes[tid] = {
                                "outcome": ev["outcome"],
                                "msg": f"{method}: {ev.get('msg', '')}",
                                "tb": ev.get("tb", ""),
                                "dur": 0.0,
                            }
                            hit = True
                    if hit:
                        continue
                res.outcomes[ev["id"]] = {
                    "outcome": ev["outcome"],
                    "msg": ev.get("msg", ""),
                    "tb": ev.get("tb", ""),
                    "dur": 0.0,
                }
            elif kind == "collected":
                if not res.collected:
                    res.collected = list(ev["ids"])
            elif kind == "loop":
                res.loop_checks.append(ev)
                prefix = expected_loop_prefix(loop)
                for key in ("new_event_loop", "SelectorEventLoop", "after_policy_reset"):
                    got = ev.get(key, "")
                    if not got.startswith(prefix):
                        res.swap_error = (
                            f"swap check failed ({ev.get('stage')}): {key} returned {got},"
                            f" expected a {prefix}* loop"
                        )
            elif kind == "bootstrap_error":
                res.bootstrap_error = ev.get("msg", "") + "\n" + ev.get("tb", "")
            elif kind == "done":
                state["done"] = True
        return True

    while True:
        res.attempts += 1
        outcomes_before = len(res.outcomes)
        skip_path.write_text("".join(t + "\n" for t in res.outcomes))
        cmd = [
            sys.executable,
            str(BOOTSTRAP),
            "--loop",
            loop,
            "--module",
            module,
            "--results",
            str(results_path),
            "--skip-file",
            str(skip_path),
            "--test-timeout",
            str(opts.test_timeout),
        ]
        for p in opts.patterns:
            cmd += ["-k", p]
        if opts.no_shims:
            cmd.append("--no-shims")
        with open(log_path, "ab") as logf:
            logf.write(f"\n===== attempt {res.attempts}: {' '.join(cmd)}\n".encode())
            logf.flush()
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        with _ACTIVE_LOCK:
            _ACTIVE.add(proc)
        current: list[str | None] = [None]
        state = {"done": False}
        last_activity = time.monotonic()
        killed_reason = None
        done_at = None
        try:
            while True:
                rc = proc.poll()
                if consume(current, state):
                    last_activity = time.monotonic()
                if rc is not None:
                    break
                now = time.monotonic()
                if state["done"]:
                    done_at = done_at or now
                    if now - done_at > opts.exit_timeout:
                        killed_reason = "exit-hang"
                        _kill_group(proc)
                        proc.wait()
                        break
                elif opts.test_timeout > 0 and now - last_activity > opts.test_timeout:
                    killed_reason = "timeout"
                    _kill_group(proc)
                    proc.wait()
                    break
                elif now > deadline:
                    killed_reason = "module-timeout"
                    _kill_group(proc)
                    proc.wait()
                    break
                time.sleep(0.2)
        finally:
            _kill_group(proc)  # leftover grandchildren (test servers, subprocesses)
            with _ACTIVE_LOCK:
                _ACTIVE.discard(proc)
        consume(current, state)
        rc = proc.returncode

        if res.bootstrap_error:
            res.notes.append("BOOTSTRAP FAILED")
            break
        if state["done"]:
            if killed_reason == "exit-hang":
                res.notes.append(
                    f"process did not exit within {opts.exit_timeout:.0f}s after the tests"
                )
                res.incidents.append(
                    {"kind": "exit-hang", "test": None, "log_tail": _tail(log_path)}
                )
            elif rc != 0:
                what = _signame(rc) if rc < 0 else f"rc={rc}"
                res.notes.append(f"crashed at interpreter exit ({what})")
                res.incidents.append(
                    {
                        "kind": "exit-crash",
                        "test": None,
                        "detail": what,
                        "log_tail": _tail(log_path),
                    }
                )
            break

        # Crash or hang in the middle of the module.
        if killed_reason in ("timeout", "module-timeout"):
            limit = opts.test_timeout if killed_reason == "timeout" else opts.timeout
            kind, detail = "timeout", f"hung, killed after {limit:.0f}s"
            if killed_reason == "module-timeout":
                detail = f"module time limit {opts.timeout:.0f}s reached"
        elif rc is not None and rc < 0:
            kind, detail = "crash", f"crashed ({_signame(rc)})"
        else:
            kind, detail = "crash", f"child exited early (rc={rc})"
        tid = current[0]
        progressed = len(res.outcomes) > outcomes_before
        if tid is None and not progressed:
            # Died outside startTest/stopTest (class/module fixture, GC between tests...)
            # without finishing anything: blame the next pending test so a restart makes
            # progress.
            pending_ids = [t for t in res.collected if t not in res.outcomes]
            if pending_ids:
                tid = pending_ids[0]
                detail += " (outside the test body; blamed on the next test)"
        res.incidents.append(
            {"kind": kind, "test": tid, "detail": detail, "log_tail": _tail(log_path)}
        )
        if tid is not None:
            res.outcomes[tid] = {"outcome": kind, "msg": detail, "tb": _tail(log_path), "dur": 0.0}
            res.notes.append(f"{detail} in {short_id(tid)}")
        else:
            res.notes.append(f"{detail} outside any test")
        if (
            (tid is None and not progressed)
            or killed_reason == "module-timeout"
            or res.attempts > opts.max_restarts
            or time.monotonic() > deadline
            or not res.collected
        ):
            if res.attempts > opts.max_restarts:
                res.notes.append(f"gave up after {res.attempts} attempts")
            break
        # else: restart the module without the tests that already have an outcome

    for tid in res.collected:
        if tid not in res.outcomes:
            res.outcomes[tid] = {
                "outcome": "notrun",
                "msg": "not run (module aborted)",
                "tb": "",
                "dur": 0.0,
            }
    res.seconds = time.monotonic() - t_start
    if opts.logs:
        dest = Path(opts.logs)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(log_path, dest / f"{loop}-{module}.log")
        shutil.copy(
            results_path, dest / f"{loop}-{module}.jsonl"
        ) if results_path.exists() else None
    shutil.rmtree(mdir, ignore_errors=True)
    return res


# --------------------------------------------------------------------------------------
# Floors / reference counts
# --------------------------------------------------------------------------------------


def load_json(path: Path, default):
    if path.exists():
        with open(path) as f:
            return json.load(f)
    return default


def write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def loop_version(loop: str) -> str:
    if loop == "asyncio":
        return platform.python_version()
    try:
        mod = __import__(loop)
        return str(getattr(mod, "__version__", "?"))
    except Exception as exc:  # noqa: BLE001
        return f"import failed: {exc}"


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------


def print_table(loop, modules, results, private, reference, compare, floors) -> None:
    ref_loops = reference.get("loops", {})
    compare = [c for c in compare if c != loop and c in ref_loops]
    head = ["module", "passed", "failed", "errors", "priv", "skipped", "total"]
    for c in compare:
        head.append(f"{c[:7]}")
    if compare:
        head.append("gap")
    if floors:
        head.append("floor")
    head += ["time", "notes"]
    rows = []
    tot = {k: 0 for k in ("passed", "failed", "errors", "private", "skipped", "total")}
    tot_ref = {c: 0 for c in compare}
    tot_floor = 0
    tot_time = 0.0
    for m in modules:
        r = results[m]
        c = r.counts(private)
        for k in tot:
            tot[k] += c[k]
        row = [m, c["passed"], c["failed"], c["errors"], c["private"], c["skipped"], c["total"]]
        for cl in compare:
            ref = ref_loops[cl].get(m, {}).get("passed")
            row.append("-" if ref is None else ref)
            tot_ref[cl] += ref or 0
        if compare:
            ref = ref_loops[compare[0]].get(m, {}).get("passed")
            row.append("-" if ref is None else ref - c["passed"])
        if floors:
            fl = floors.get(m)
            row.append("-" if fl is None else fl)
            tot_floor += fl or 0
        row.append(f"{r.seconds:.1f}s")
        tot_time += r.seconds
        notes = list(r.notes)
        if r.swap_error:
            notes.insert(0, "SWAP CHECK FAILED")
        row.append("; ".join(notes)[:110])
        rows.append(row)
    total_row = [
        "TOTAL",
        tot["passed"],
        tot["failed"],
        tot["errors"],
        tot["private"],
        tot["skipped"],
        tot["total"],
    ]
    for cl in compare:
        total_row.append(tot_ref[cl])
    if compare:
        total_row.append(tot_ref[compare[0]] - tot["passed"])
    if floors:
        total_row.append(tot_floor)
    total_row += [f"{tot_time:.1f}s", ""]
    table = [head] + [[str(x) for x in r] for r in rows] + [[str(x) for x in total_row]]
    widths = [max(len(r[i]) for r in table) for i in range(len(head) - 1)]

    def fmt(r):
        cells = [r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in range(1, len(widths))]
        return "  ".join(cells) + ("  " + r[-1] if r[-1] else "")

    print(f"\nconformance: loop={loop} ({loop_version(loop)}), python {platform.python_version()}")
    if compare:
        print(
            f"(columns {', '.join(compare)} = reference passed counts; gap = {compare[0]} - {loop})"
        )
    print(fmt(table[0]))
    print("-" * (sum(widths) + 2 * len(widths) + 5))
    for r in table[1:-1]:
        print(fmt(r))
    print("-" * (sum(widths) + 2 * len(widths) + 5))
    print(fmt(table[-1]))


_FRAME = re.compile(r'File "([^"]+)", line \d+, in (\S+)')


def failure_signature(o: dict) -> str:
    """Normalized failure reason used to group failures ("top failure reasons")."""
    msg = (o.get("msg") or o.get("outcome", "")).strip()
    msg = re.sub(r"0x[0-9a-fA-F]+", "0x…", msg)
    msg = re.sub(r"\b\d{3,}\b", "N", msg)
    msg = re.sub(r"<locals>\.\w+", "<locals>.…", msg)
    tb = o.get("tb") or ""
    frames = _FRAME.findall(tb)
    bare = re.fullmatch(r"[\w.]+(Error|Exception)|AssertionError: .{0,12}", msg) is not None
    if frames and (bare or msg.startswith("AttributeError")):
        # Where it was raised says more than a bare exception name.
        path, func = frames[-1]
        where = Path(path).name
        msg = f"{msg}  (raised in {where}:{func})"
    return msg[:200]


def print_reasons(modules, results, private, top: int) -> None:
    groups: dict[str, list[str]] = {}
    for m in modules:
        for tid, o in sorted(results[m].outcomes.items()):
            if o["outcome"] in PASS or o["outcome"] in SKIP or private.classify(tid, o):
                continue
            groups.setdefault(failure_signature(o), []).append(tid)
    if not groups:
        return
    print(f"\ntop failure reasons ({len(groups)} distinct, private API excluded):")
    for sig, ids in sorted(groups.items(), key=lambda kv: -len(kv[1]))[:top]:
        print(f"  {len(ids):4d}  {sig}\n        e.g. {short_id(ids[0])}")


def print_sections(modules, results, private, verbose: bool) -> None:
    priv_lines, incident_lines, fail_lines = [], [], []
    for m in modules:
        r = results[m]
        for tid, o in sorted(r.outcomes.items()):
            oc = o["outcome"]
            if oc in PASS or oc in SKIP:
                continue
            reason = private.classify(tid, o)
            if reason is not None:
                priv_lines.append(f"  {short_id(tid)}  [{oc}]  # {reason}")
            elif verbose:
                fail_lines.append(f"  {short_id(tid)}  [{oc}]  {o['msg'][:160]}")
        for inc in r.incidents:
            t = short_id(inc["test"]) if inc.get("test") else "(no test running)"
            incident_lines.append(f"  {m}: {inc['kind']}: {t}: {inc.get('detail', '')}")
    if priv_lines:
        print(f"\nfailed, private API ({len(priv_lines)}; listed in {PRIVATE.name}, still run):")
        print("\n".join(priv_lines))
    if incident_lines:
        print(f"\ncrashes / hangs ({len(incident_lines)}):")
        print("\n".join(incident_lines))
    if fail_lines:
        print(f"\nfailures ({len(fail_lines)}):")
        print("\n".join(fail_lines))


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--loop", choices=LOOPS, help="event loop to test (required unless --from-json)"
    )
    ap.add_argument(
        "--modules",
        default=None,
        help="comma-separated test_asyncio modules, or 'default', 'core', 'io', 'all' (default: default)",
    )
    ap.add_argument("-j", "--jobs", type=int, default=2, help="modules run in parallel (default 2)")
    ap.add_argument(
        "-k",
        dest="patterns",
        action="append",
        default=[],
        help="only tests whose id matches (substring or fnmatch); repeatable",
    )
    ap.add_argument(
        "--check", action="store_true", help="exit 1 if a module's passed count is below its floor"
    )
    ap.add_argument(
        "--update-floors", action="store_true", help="raise floors.json to this run's passed counts"
    )
    ap.add_argument("--force", action="store_true", help="with --update-floors: also lower floors")
    ap.add_argument(
        "--update-reference", action="store_true", help="record this run in reference_counts.json"
    )
    ap.add_argument("--json", metavar="FILE", help="write per-module and per-test results as JSON")
    ap.add_argument(
        "--compare",
        default="asyncio",
        help="reference loops shown beside the counts (default asyncio)",
    )
    ap.add_argument(
        "--timeout", type=float, default=300.0, help="per-module time limit, seconds (default 300)"
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="overall time limit: modules not finished by then are cut short/not run (default: none)",
    )
    ap.add_argument(
        "--test-timeout",
        type=float,
        default=20.0,
        help="kill a module's process if no test finishes for this long (default 20)",
    )
    ap.add_argument(
        "--exit-timeout",
        type=float,
        default=20.0,
        help="grace period for the child to exit after its tests",
    )
    ap.add_argument(
        "--max-restarts",
        type=int,
        default=30,
        help="restarts per module after crashes/hangs (default 30)",
    )
    ap.add_argument(
        "--no-shims", action="store_true", help="run without the test-harness shims (see README)"
    )
    ap.add_argument(
        "--logs", metavar="DIR", help="keep each module's output log and raw results here"
    )
    ap.add_argument(
        "--from-json",
        metavar="FILE",
        help="do not run anything: re-report (classify, --check, update files) a saved --json run",
    )
    ap.add_argument(
        "--reasons",
        type=int,
        default=15,
        metavar="N",
        help="print the N most common failure reasons, grouped (default 15; 0 = off)",
    )
    ap.add_argument(
        "-v", "--verbose", action="store_true", help="list every failing test with its message"
    )
    return ap.parse_args(argv)


def resolve_modules(spec: str) -> list[str]:
    groups = {"default": DEFAULT_MODULES, "core": CORE_MODULES, "io": IO_MODULES}
    out: list[str] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        if part == "all":
            names = all_modules()
        elif part in groups:
            names = groups[part]
        else:
            names = [part if part.startswith("test_") else f"test_{part}"]
        out += [n for n in names if n not in out]
    known = set(all_modules()) | set(DEFAULT_MODULES)
    bad = [m for m in out if m not in known]
    if bad:
        raise SystemExit(f"unknown test_asyncio module(s): {', '.join(bad)}")
    return out


def run_all(modules, opts, private, reference):
    """Run the modules; returns (results, wall_seconds) or an exit code."""
    # Longest modules first (better packing with -j), using recorded durations if any.
    durations = reference.get("loops", {}).get("asyncio", {})
    order = sorted(modules, key=lambda m: -durations.get(m, {}).get("seconds", 0.0))

    workroot = Path(tempfile.mkdtemp(prefix=f"conformance-{opts.loop}-"))
    results: dict[str, ModuleResult] = {}
    t0 = time.monotonic()
    opts.budget_deadline = t0 + opts.budget if opts.budget else None
    log(f"running {len(modules)} module(s) with --loop {opts.loop}, -j {opts.jobs}")
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, opts.jobs)) as pool:
            futs = {pool.submit(run_module, m, opts.loop, opts, workroot): m for m in order}
            for n, fut in enumerate(concurrent.futures.as_completed(futs), 1):
                m = futs[fut]
                r = fut.result()
                results[m] = r
                c = r.counts(private)
                extra = f"  [{'; '.join(r.notes)}]" if r.notes else ""
                log(
                    f"[{n}/{len(modules)}] {m}: {c['passed']} passed, {c['failed']} failed, "
                    f"{c['errors']} errors, {c['private']} private, {c['skipped']} skipped "
                    f"({r.seconds:.1f}s){extra}"
                )
                if r.bootstrap_error:
                    log(f"bootstrap failed for --loop {opts.loop}:\n{r.bootstrap_error}")
                    for f in futs:
                        f.cancel()
                    with _ACTIVE_LOCK:
                        for p in list(_ACTIVE):
                            _kill_group(p)
                    return 2
    except KeyboardInterrupt:
        with _ACTIVE_LOCK:
            for p in list(_ACTIVE):
                _kill_group(p)
        raise
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    wall = time.monotonic() - t0
    return results, wall


def load_results(path: Path):
    """Rebuild ModuleResults from a --json file (for --from-json)."""
    doc = json.loads(path.read_text())
    results: dict[str, ModuleResult] = {}
    for m, md in doc["modules"].items():
        r = ModuleResult(m)
        r.outcomes = {
            tid: {
                "outcome": t["outcome"],
                "msg": t.get("msg", ""),
                "tb": t.get("tb", ""),
                "dur": t.get("dur", 0.0),
            }
            for tid, t in md["tests"].items()
        }
        r.collected = list(r.outcomes)
        r.notes = md.get("notes", [])
        r.incidents = md.get("incidents", [])
        r.loop_checks = md.get("loop_checks", [])
        r.swap_error = md.get("swap_error")
        r.seconds = md.get("seconds", 0.0)
        r.attempts = md.get("attempts", 1)
        results[m] = r
    return results, doc.get("wall_seconds", 0.0)


def main(argv=None) -> int:
    opts = parse_args(argv)
    opts.modules_given = opts.modules is not None
    if opts.from_json:
        with open(opts.from_json) as f:
            saved_loop = json.load(f)["loop"]
        if opts.loop not in (None, saved_loop):
            raise SystemExit(f"--from-json file is a {saved_loop} run, not {opts.loop}")
        opts.loop = saved_loop
    elif opts.loop is None:
        raise SystemExit("--loop is required")
    modules = resolve_modules(opts.modules or "default")
    if opts.patterns and (opts.update_floors or opts.update_reference):
        raise SystemExit("-k runs a subset; refusing to update floors/reference counts from it")
    private = PrivateList(PRIVATE)
    reference = load_json(REFERENCE, {})
    floors_path = floors_file()
    floors_doc = load_json(floors_path, {})
    floors = floors_doc.get("loops", {}).get(opts.loop, {})
    if (opts.check or opts.update_floors) and floors_doc.get("python") not in (None, python_tag()):
        log(
            f"WARNING: floors.json was recorded on Python {floors_doc.get('python')}, running {python_tag()}"
        )

    if opts.from_json:
        results, wall = load_results(Path(opts.from_json))
        modules = [m for m in modules if m in results] if opts.modules_given else list(results)
    else:
        ran = run_all(modules, opts, private, reference)
        if isinstance(ran, int):
            return ran
        results, wall = ran

    compare = [c.strip() for c in opts.compare.split(",") if c.strip()]
    if opts.patterns:
        compare = []  # a -k subset is not comparable with whole-module reference counts
    print_table(
        opts.loop, modules, results, private, reference, compare, floors if opts.check else {}
    )
    print_sections(modules, results, private, opts.verbose)
    if opts.reasons:
        print_reasons(modules, results, private, opts.reasons)
    print(f"\nwall time: {wall:.1f}s with -j {opts.jobs}")

    rc = 0
    swap_errors = [(m, results[m].swap_error) for m in modules if results[m].swap_error]
    for m, err in swap_errors:
        print(f"ERROR: {m}: {err}")
        rc = 1
    if opts.loop != "asyncio" and not any(results[m].loop_checks for m in modules):
        print("ERROR: no loop sanity check was reported by any module")
        rc = 1

    if opts.json:
        doc = {
            "loop": opts.loop,
            "loop_version": loop_version(opts.loop),
            "python": platform.python_version(),
            "wall_seconds": round(wall, 2),
            "jobs": opts.jobs,
            "modules": {},
        }
        for m in modules:
            r = results[m]
            doc["modules"][m] = {
                **r.counts(private),
                "seconds": round(r.seconds, 2),
                "attempts": r.attempts,
                "notes": r.notes,
                "swap_error": r.swap_error,
                "loop_checks": r.loop_checks,
                "incidents": r.incidents,
                "tests": {
                    tid: {
                        "outcome": o["outcome"],
                        "private": private.classify(tid, o),
                        "dur": o.get("dur", 0.0),
                        "msg": o.get("msg", ""),
                        **({"tb": o.get("tb", "")} if o["outcome"] not in PASS | SKIP else {}),
                    }
                    for tid, o in sorted(r.outcomes.items())
                },
            }
        write_json(Path(opts.json), doc)
        print(f"wrote {opts.json}")

    if opts.check:
        if not floors:
            print(f"ERROR: --check: floors.json has no floors for {opts.loop}")
            rc = 1
        below = []
        for m in modules:
            fl = floors.get(m)
            if fl is None:
                print(f"note: no floor recorded for {m}")
                continue
            passed = results[m].counts(private)["passed"]
            if passed < fl:
                below.append(f"  {m}: {passed} passed < floor {fl}")
        if below:
            print("FLOOR CHECK FAILED:\n" + "\n".join(below))
            rc = 1
        elif floors:
            print("floor check OK")

    if opts.update_floors:
        if swap_errors:
            print("not updating floors: swap check failed")
        else:
            doc = floors_doc or {}
            doc["python"] = python_tag()
            doc.setdefault("loops", {})
            cur = doc["loops"].setdefault(opts.loop, {})
            for m in modules:
                passed = results[m].counts(private)["passed"]
                old = cur.get(m)
                if old is None or passed > old or opts.force:
                    cur[m] = passed
                    if old != passed:
                        print(f"floor {opts.loop}/{m}: {old} -> {passed}")
                elif passed < old:
                    print(
                        f"floor {opts.loop}/{m}: kept {old} (run had {passed}; use --force to lower)"
                    )
            write_json(floors_path, doc)
            print(f"wrote {floors_path}")

    if opts.update_reference:
        if swap_errors:
            print("not updating reference counts: swap check failed")
        else:
            reference.setdefault("loops", {})
            reference.setdefault("versions", {})
            reference["python"] = platform.python_version()
            reference["versions"][opts.loop] = loop_version(opts.loop)
            reference.setdefault("recorded", {})[opts.loop] = datetime.date.today().isoformat()
            cur = reference["loops"].setdefault(opts.loop, {})
            for m in modules:
                c = results[m].counts(private)
                cur[m] = {**c, "seconds": round(results[m].seconds, 1)}
            write_json(REFERENCE, reference)
            print(f"wrote {REFERENCE}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
