"""Shared benchmark runner for ferroloop.

A benchmark script (e.g. ``bench/bench_core.py``) registers *rows* with :func:`row` and calls
:func:`main`. Each row is a function ``fn(loop, quick) -> float | Result`` that runs one workload
on the given (fresh, not running) event loop and returns operations per second (higher is better).

The parent process never runs a loop itself. For every (round, row, loop) it starts a fresh
subprocess ``python SCRIPT --worker LOOP --row ROW [--quick]`` that builds a new loop, runs the
row once and prints one JSON line. Rounds are interleaved (round 1 runs every loop, then round 2,
...) and the loop order is rotated each round so that no loop always goes first. Per row and loop
the report gives the best round, the spread ``(max - min) / best`` and the ratio to uvloop.

A row registered with ``native=True`` runs no Python event loop at all (e.g. a pure-Rust server
as a "ceiling"): it runs once per round under the pseudo-loop name ``native`` and gets
``loop=None``; ``ref=KEY`` names the row whose baseline cell its ratio column compares with.

Rows signal "this loop does not support the API" by raising :class:`NotSupported` (or by the
loop raising ``NotImplementedError``/``AttributeError``); the cell is then shown as ``n/a`` and the
run goes on. Any other exception, a crash or a timeout of the worker shows as ``error``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import gc
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

# --------------------------------------------------------------------------------------------
# Loops

# name -> (module, factory attribute)
LOOPS: dict[str, tuple[str, str]] = {
    "asyncio": ("asyncio", "new_event_loop"),
    "uvloop": ("uvloop", "new_event_loop"),
    "rloop": ("rloop", "new_event_loop"),
    "ferroloop": ("ferroloop", "new_event_loop"),
    # ferroloop with diagnostics on (bench/_variants.py); only when named in --loops.
    "ferroloop-watchdog": ("_variants", "watchdog_loop"),
    "ferroloop-metrics": ("_variants", "metrics_loop"),
}
DEFAULT_LOOPS = ["asyncio", "uvloop", "rloop", "ferroloop"]
BASELINE = "uvloop"
# Pseudo-loop name under which ``native`` rows (no Python event loop) run and are reported.
NATIVE = "native"

# Full mode: each row runs about this long per (round, loop); quick mode is for a demo.
TARGET_S_FULL = 0.6
TARGET_S_QUICK = 0.25
ROUNDS_FULL = 5
ROUNDS_QUICK = 3

_RESULT_PREFIX = "@@FERROLOOP-BENCH "


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    module, attr = LOOPS[name]
    return getattr(importlib.import_module(module), attr)()


def package_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------------
# Rows


class NotSupported(Exception):
    """Raised by a row when the loop under test lacks an API the row needs."""


@dataclass
class Result:
    """What a row returns: ops/s plus an optional short human-readable detail."""

    ops: float
    detail: str = ""
    # Anything else worth keeping in the --json output (e.g. the load generator's report).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    key: str  # CLI name, e.g. "call_soon"
    title: str  # shown in tables, e.g. "timer schedule+cancel"
    unit: str  # e.g. "ops/s", "tasks/s"
    fn: Callable[[asyncio.AbstractEventLoop, bool], float | Result]
    doc: str = ""
    native: bool = False  # runs without a Python event loop, once per round (loop=None)
    ref: str | None = None  # native rows: compare with this row's baseline cell


def row_loops(r: Row, loops: list[str]) -> list[str]:
    """The loops a row runs on: every loop, or only the pseudo-loop ``native``."""
    return [NATIVE] if r.native else loops


ROWS: dict[str, Row] = {}


def row(
    key: str,
    title: str | None = None,
    unit: str = "ops/s",
    *,
    native: bool = False,
    ref: str | None = None,
):
    """Decorator registering a row function ``fn(loop, quick) -> float | Result``.

    ``native=True``: the row uses no Python event loop; it runs once per round (``loop`` is
    None) and is reported under the pseudo-loop ``native``. ``ref``: for such a row, the key of
    the row whose baseline (uvloop) cell its ratio column is computed against.
    """

    def deco(fn):
        if key in ROWS:
            raise ValueError(f"duplicate row {key!r}")
        doc = (fn.__doc__ or "").strip()
        ROWS[key] = Row(key, title or key, unit, fn, doc, native, ref)
        return fn

    return deco


def target_seconds(quick: bool) -> float:
    return TARGET_S_QUICK if quick else TARGET_S_FULL


@dataclass
class Measurement:
    ops: int = 0
    seconds: float = 0.0
    batch_times: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0


def measure(
    loop: asyncio.AbstractEventLoop,
    batch: Callable[[int], Awaitable[float]],
    n: int,
    quick: bool,
    *,
    warmup_n: int | None = None,
    target_s: float | None = None,
    min_batches: int = 1,
    max_batches: int = 10_000,
) -> Measurement:
    """Run ``batch(n)`` on ``loop`` repeatedly until about ``target_s`` seconds were measured.

    ``batch(n)`` is a coroutine function that performs ``n`` operations and returns the elapsed
    time in seconds, timed by itself inside the running loop (so that starting and stopping the
    loop is not counted). One warm-up batch of ``warmup_n`` (default ``n // 10``) ops runs first.
    At least ``min_batches`` and at most ``max_batches`` measured batches run.
    """
    if target_s is None:
        target_s = target_seconds(quick)
    gc.collect()
    loop.run_until_complete(batch(max(1, warmup_n if warmup_n is not None else n // 10)))
    gc.collect()
    m = Measurement()
    while (m.seconds < target_s or len(m.batch_times) < min_batches) and len(
        m.batch_times
    ) < max_batches:
        dt = loop.run_until_complete(batch(n))
        m.ops += n
        m.seconds += dt
        m.batch_times.append(dt)
    return m


# --------------------------------------------------------------------------------------------
# Worker side


def _emit(payload: dict[str, Any]) -> None:
    sys.stdout.write(_RESULT_PREFIX + json.dumps(payload) + "\n")
    sys.stdout.flush()


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    try:
        if not loop.is_closed():
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            except Exception:
                pass
            loop.close()
    finally:
        asyncio.set_event_loop(None)


def _run_native(row_key: str, quick: bool) -> int:
    try:
        res = ROWS[row_key].fn(None, quick)  # type: ignore[arg-type]
        if not isinstance(res, Result):
            res = Result(float(res))
        payload = {"status": "ok", "ops": res.ops, "detail": res.detail, "loop_type": None}
        if res.extra:
            payload["extra"] = res.extra
    except BaseException as exc:  # noqa: BLE001 - report everything to the parent
        status = "n/a" if isinstance(exc, NotSupported | NotImplementedError) else "error"
        if status == "error":
            sys.stderr.write(traceback.format_exc(limit=6))
        payload = {"status": status, "error": f"{type(exc).__name__}: {exc}"}
    _emit(payload)
    return 0


def run_worker(loop_name: str, row_key: str | None, quick: bool) -> int:
    """Run one row on a fresh loop (or, with ``row_key=None``, just probe the loop)."""
    if loop_name == NATIVE and row_key is not None:
        return _run_native(row_key, quick)
    try:
        loop = new_loop(loop_name)
    except Exception as exc:  # import error or factory failure
        _emit({"status": "missing", "error": f"{type(exc).__name__}: {exc}"})
        return 0
    info = {"loop_type": f"{type(loop).__module__}.{type(loop).__qualname__}"}
    if row_key is None:
        _close_loop(loop)
        _emit({"status": "ok", **info})
        return 0
    asyncio.set_event_loop(loop)
    try:
        res = ROWS[row_key].fn(loop, quick)
        if not isinstance(res, Result):
            res = Result(float(res))
        payload = {"status": "ok", "ops": res.ops, "detail": res.detail, **info}
        if res.extra:
            payload["extra"] = res.extra
    except BaseException as exc:  # noqa: BLE001 - report everything to the parent
        # "n/a": the loop lacks the API (a missing loop attribute or NotImplementedError);
        # anything else, e.g. an AttributeError deep inside the loop, is an error.
        missing_attr = isinstance(exc, AttributeError) and getattr(exc, "obj", None) is loop
        if isinstance(exc, NotSupported | NotImplementedError) or missing_attr:
            status = "n/a"
        else:
            status = "error"
            sys.stderr.write(traceback.format_exc(limit=6))
        payload = {"status": status, "error": f"{type(exc).__name__}: {exc}", **info}
    # Report before closing so that a loop that hangs or crashes on close keeps its result.
    _emit(payload)
    try:
        _close_loop(loop)
    except Exception:
        sys.stderr.write(traceback.format_exc(limit=6))
    return 0


# --------------------------------------------------------------------------------------------
# Parent side


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    env.pop("PYTHONDEVMODE", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _spawn(
    script: str, loop_name: str, row_key: str | None, quick: bool, timeout: float
) -> dict[str, Any]:
    cmd = [sys.executable, script, "--worker", loop_name]
    if row_key is not None:
        cmd += ["--row", row_key]
    if quick:
        cmd.append("--quick")
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=_worker_env()
        )
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout, stderr, rc = _text(exc.stdout), _text(exc.stderr), None
    for line in reversed(stdout.splitlines()):
        if line.startswith(_RESULT_PREFIX):
            return json.loads(line[len(_RESULT_PREFIX) :])
    if rc is None:
        return {"status": "error", "error": f"timeout after {timeout:.0f} s"}
    tail = (stderr.strip().splitlines() or ["<no output>"])[-1]
    return {"status": "error", "error": f"worker exited with {rc}: {tail}"}


def _text(b: bytes | str | None) -> str:
    if b is None:
        return ""
    return b if isinstance(b, str) else b.decode(errors="replace")


def _read_cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit(path: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", path, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _package_mtime(module: str) -> float | None:
    """Newest mtime among a loop package's files (without importing it), to detect rebuilds."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    paths = []
    for d in spec.submodule_search_locations or []:
        try:
            paths += [os.path.join(d, f) for f in os.listdir(d)]
        except OSError:
            pass
    if spec.origin and os.path.exists(spec.origin):
        paths.append(spec.origin)
    mtimes = []
    for path in paths:
        try:
            mtimes.append(os.stat(path).st_mtime)
        except OSError:
            pass
    return max(mtimes) if mtimes else None


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def machine_info(loops: list[str], script: str) -> dict[str, Any]:
    versions = {}
    for name in LOOPS:
        if name != "asyncio":
            versions[name] = package_version(name)
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": _read_cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "packages": versions,
        "git_commit": _git_commit(os.path.dirname(script)),
        "loadavg_start": _loadavg(),
    }


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    extras: list[dict[str, Any]] = field(default_factory=list)  # Result.extra per value
    failures: list[str] = field(default_factory=list)
    status: str = "ok"

    @property
    def best(self) -> float | None:
        return max(self.values) if self.values else None

    @property
    def spread(self) -> float | None:
        if len(self.values) < 2:
            return None
        return (max(self.values) - min(self.values)) / max(self.values) * 100.0

    @property
    def best_detail(self) -> str:
        if not self.values:
            return ""
        return self.details[self.values.index(max(self.values))]


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    suffix = ""
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            x, suffix = x / div, suf
            break
    digits = 2 if x < 10 else 1 if x < 100 else 0
    return f"{x:.{digits}f}{suffix}"


def _cell_text(cell: Cell) -> str:
    return {"n/a": "n/a", "error": "error"}.get(cell.status, fmt_rate(cell.best))


def _ratio(cell: Cell, base: Cell | None) -> str:
    if base is None or cell.best is None or base.best is None or base.best == 0:
        return "-"
    return f"{cell.best / base.best:.2f}x"


def _spread_text(cell: Cell) -> str:
    return "-" if cell.spread is None else f"{cell.spread:.1f}%"


def _base_cell(r: Row, cells: dict, baseline: str | None) -> Cell | None:
    """The cell a row's ratio is computed against: its own baseline loop's, or for a native
    row the baseline cell of its ``ref`` row."""
    if not baseline:
        return None
    return cells.get((r.ref if r.native else r.key, baseline))


def render_text(rows: list[Row], loops: list[str], cells: dict, baseline: str | None) -> str:
    header = ["row", "loop", "best", "median", "unit", "spread"]
    header.append(f"vs {baseline}" if baseline else "ratio")
    right = {2, 3, 5, 6}
    table = [header]
    for r in rows:
        base = _base_cell(r, cells, baseline)
        for i, name in enumerate(row_loops(r, loops)):
            c = cells[r.key, name]
            median = fmt_rate(statistics.median(c.values)) if c.values else "-"
            line = [r.title if i == 0 else "", name, _cell_text(c), median, r.unit]
            line += [_spread_text(c), _ratio(c, base)]
            if c.best_detail:
                line.append(c.best_detail)
            table.append(line)
    widths = [max(len(t[i]) for t in table) for i in range(len(header))]
    out = []
    for j, t in enumerate(table):
        parts = [
            v if i >= len(widths) else v.rjust(widths[i]) if i in right else v.ljust(widths[i])
            for i, v in enumerate(t)
        ]
        out.append("  ".join(parts).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def render_notes(rows: list[Row], loops: list[str], cells: dict) -> list[str]:
    notes = []
    for r in rows:
        for name in row_loops(r, loops):
            c = cells[r.key, name]
            if c.failures:
                uniq = sorted(set(c.failures))
                if c.status == "ok":
                    what = f"{len(c.failures)} of {len(c.failures) + len(c.values)} rounds failed"
                else:
                    what = c.status
                    uniq = [u.split(": ", 1)[1] if ": " in u else u for u in uniq]
                notes.append(f"{r.title} / {name}: {what} ({'; '.join(uniq)})")
    return notes


def render_markdown(
    rows: list[Row],
    loops: list[str],
    cells: dict,
    baseline: str | None,
    meta: dict,
    epilogue: list[str] | None = None,
) -> str:
    lines = []
    pk = ", ".join(f"{k} {v or '?'}" for k, v in meta["packages"].items() if k in loops)
    lines.append(
        f"Best of {meta['rounds']} interleaved rounds{' (quick mode)' if meta['quick'] else ''}; "
        f"cells: best rate, ratio to {baseline or 'n/a'}, spread (max-min)/best. "
        f"Higher is better."
    )
    lines.append("")
    lines.append(
        f"Machine: {meta['cpu_model']}, {meta['cpu_count']} CPUs; Python {meta['python']}; "
        f"{pk}; {meta['date']}."
    )
    lines.append("")
    cols = loops + ([NATIVE] if any(r.native for r in rows) else [])
    lines.append("| row | unit | " + " | ".join(cols) + " |")
    lines.append("|---|---|" + "---:|" * len(cols))
    for r in rows:
        base = _base_cell(r, cells, baseline)
        parts = []
        for name in cols:
            c = cells.get((r.key, name))
            if c is None:
                parts.append("")
                continue
            if c.best is None:
                parts.append(_cell_text(c))
                continue
            s = f"**{fmt_rate(c.best)}**"
            if base is not None and base.best:
                s += f" ({_ratio(c, base)})"
            if c.spread is not None:
                s += f" ±{c.spread:.0f}%"
            if c.best_detail:
                s += f"<br>{c.best_detail}"
            parts.append(s)
        lines.append(f"| {r.title} | {r.unit} | " + " | ".join(parts) + " |")
    notes = render_notes(rows, loops, cells)
    if notes:
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
    if epilogue:
        lines.append("")
        lines.append("```text")
        lines.extend(epilogue)
        lines.append("```")
    return "\n".join(lines) + "\n"


def _parse_list(s: str | None) -> list[str] | None:
    if s is None:
        return None
    return [x.strip() for x in s.split(",") if x.strip()]


def build_parser(
    description: str, default_rounds: tuple[int, int] = (ROUNDS_FULL, ROUNDS_QUICK)
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="short run for a demo (~1 minute)")
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"interleaved rounds (default {default_rounds[0]}, quick {default_rounds[1]})",
    )
    p.add_argument(
        "--loops",
        default=None,
        help=f"comma-separated loops from {','.join(LOOPS)} (default: all; explicitly "
        "requested loops that cannot be imported are an error)",
    )
    p.add_argument("--rows", default=None, help="comma-separated row keys (default: all)")
    p.add_argument("--list", action="store_true", help="list rows and exit")
    p.add_argument("--json", metavar="PATH", help="write raw results and machine info as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write a markdown table")
    p.add_argument("--timeout", type=float, default=None, help="per-worker timeout in seconds")
    p.add_argument("--worker", metavar="LOOP", help=argparse.SUPPRESS)
    p.add_argument("--row", metavar="ROW", help=argparse.SUPPRESS)
    return p


# ``epilogue(rows, loops, cells, baseline) -> lines`` printed under the table (and added to the
# markdown), e.g. ratios that the generic table cannot show.
Epilogue = Callable[[list[Row], list[str], dict, str | None], list[str]]


def main(
    argv: list[str] | None = None,
    description: str = "ferroloop benchmarks",
    epilogue: Epilogue | None = None,
    default_rounds: tuple[int, int] = (ROUNDS_FULL, ROUNDS_QUICK),
    meta_extra: dict[str, Any] | None = None,
) -> int:
    args = build_parser(description, default_rounds).parse_args(argv)
    main_mod = sys.modules["__main__"]
    script = os.path.abspath(getattr(main_mod, "__file__", sys.argv[0]))

    if args.worker:
        if args.worker not in LOOPS and args.worker != NATIVE:
            print(f"unknown loop {args.worker!r}", file=sys.stderr)
            return 2
        if args.row is not None and args.row not in ROWS:
            print(f"unknown row {args.row!r}", file=sys.stderr)
            return 2
        return run_worker(args.worker, args.row, args.quick)

    if args.list:
        for r in ROWS.values():
            print(f"{r.key:16} {r.title:28} {r.unit:10} {r.doc.splitlines()[0] if r.doc else ''}")
        return 0

    explicit = args.loops is not None
    loops = _parse_list(args.loops) or list(DEFAULT_LOOPS)
    unknown = [x for x in loops if x not in LOOPS]
    if unknown:
        print(f"error: unknown loop(s): {', '.join(unknown)}; known: {', '.join(LOOPS)}")
        return 2
    row_keys = _parse_list(args.rows) or list(ROWS)
    bad = [x for x in row_keys if x not in ROWS]
    if bad:
        print(f"error: unknown row(s): {', '.join(bad)}; known: {', '.join(ROWS)}")
        return 2
    rows = [ROWS[k] for k in row_keys]
    rounds = args.rounds or (default_rounds[1] if args.quick else default_rounds[0])
    if rounds < 1:
        print("error: --rounds must be >= 1")
        return 2
    timeout = args.timeout or (30.0 if args.quick else 120.0)

    # Probe every loop in a subprocess: importable and constructible?
    available = []
    loop_types = {}
    for name in loops:
        res = _spawn(script, name, None, args.quick, timeout=60)
        if res.get("status") == "ok":
            available.append(name)
            loop_types[name] = res.get("loop_type")
        elif explicit:
            print(f"error: requested loop {name!r} is not available: {res.get('error')}")
            return 2
        else:
            print(f"note: skipping loop {name!r} (not available: {res.get('error')})")
    loops = available
    if not loops:
        print("error: no loop available")
        return 2
    baseline = BASELINE if BASELINE in loops else None

    meta = machine_info(loops, script)
    meta.update(
        {
            "quick": args.quick,
            "rounds": rounds,
            "target_seconds_per_measurement": target_seconds(args.quick),
            "loops": loops,
            "loop_types": loop_types,
            "baseline": baseline,
            **(meta_extra or {}),
        }
    )
    mtimes_start = {name: _package_mtime(LOOPS[name][0]) for name in loops if name != "asyncio"}
    print(
        f"# {meta['cpu_model']} | {meta['cpu_count']} CPUs | Python {meta['python']} | "
        + " | ".join(f"{k} {v}" for k, v in meta["packages"].items() if k in loops)
    )
    n_native = sum(r.native for r in rows)
    print(
        f"# {len(rows) - n_native} rows x {len(loops)} loops"
        + (f" + {n_native} native rows" if n_native else "")
        + f" x {rounds} rounds{' (quick)' if args.quick else ''}, one subprocess each"
    )
    load = meta["loadavg_start"]
    if load is not None and load > 0.75 * (meta["cpu_affinity"] or meta["cpu_count"] or 1):
        print(f"# warning: load average {load:.2f} at start: other processes will add noise")

    cells = {(r.key, name): Cell() for r in rows for name in row_loops(r, loops)}
    raw = []
    t_start = time.perf_counter()
    for rnd in range(rounds):
        order = loops[rnd % len(loops) :] + loops[: rnd % len(loops)]
        print(f"round {rnd + 1}/{rounds}: order {', '.join(order)}", flush=True)
        for r in rows:
            for name in row_loops(r, order):
                res = _spawn(script, name, r.key, args.quick, timeout)
                res.update({"round": rnd + 1, "row": r.key, "loop": name})
                raw.append(res)
                c = cells[r.key, name]
                if res["status"] == "ok":
                    c.values.append(float(res["ops"]))
                    c.details.append(res.get("detail", ""))
                    c.extras.append(res.get("extra") or {})
                else:
                    c.failures.append(f"{res['status']}: {res.get('error', '')}")
    elapsed = time.perf_counter() - t_start
    changed = [
        name
        for name, mt in mtimes_start.items()
        if mt is not None and _package_mtime(LOOPS[name][0]) != mt
    ]
    meta["rebuilt_during_run"] = changed
    for c in cells.values():
        if not c.values and c.failures:
            c.status = "n/a" if all(f.startswith("n/a") for f in c.failures) else "error"

    print()
    print(render_text(rows, loops, cells, baseline))
    notes = render_notes(rows, loops, cells)
    if notes:
        print()
        for n in notes:
            print(f"note: {n}")
    extra_lines = epilogue(rows, loops, cells, baseline) if epilogue else []
    if extra_lines:
        print()
        print("\n".join(extra_lines))
    for name in changed:
        print(f"warning: {name}'s files changed during the run (rebuilt?): rounds mix builds")
    print(f"\n(total {elapsed:.1f} s)")

    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(render_markdown(rows, loops, cells, baseline, meta, extra_lines))
        print(f"wrote {args.markdown}")
    if args.json:
        summary = {}
        for r in rows:
            for name in row_loops(r, loops):
                c = cells[r.key, name]
                base = _base_cell(r, cells, baseline)
                summary.setdefault(r.key, {})[name] = {
                    "status": c.status,
                    "best": c.best,
                    "median": statistics.median(c.values) if c.values else None,
                    "spread_pct": c.spread,
                    "ratio_to_baseline": (
                        c.best / base.best
                        if base is not None and c.best is not None and base.best
                        else None
                    ),
                    "values": c.values,
                    "detail": c.best_detail,
                    "failures": c.failures,
                }
        doc = {
            "meta": {**meta, "elapsed_seconds": round(elapsed, 2), "loadavg_end": _loadavg()},
            "rows": {
                r.key: {"title": r.title, "unit": r.unit, "doc": r.doc, "native": r.native}
                for r in rows
            },
            "summary": summary,
            "raw": raw,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    # A row that never succeeded on some loop (other than "n/a") makes the run fail.
    return 1 if any(c.status == "error" for c in cells.values()) else 0
