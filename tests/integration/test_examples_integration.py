"""Run the application examples in examples/apps/ on asyncio's loop and on ferroloop.

Each one is run the way a user would run it::

    python examples/apps/NAME.py ...                  # asyncio's loop (the reference)
    python -m ferroloop examples/apps/NAME.py ...     # the same program on ferroloop

Both runs must exit with status 0, print the same stdout, report (FERROLOOP_EXAMPLE_CHECK=1)
the loop they ran on, and write none of asyncio's complaints to stderr. The ETL job needs the
PostgreSQL and Redis servers of scripts/services.sh and is run twice per loop: the second run
must load nothing twice.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _support import import_or_skip

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = {"asyncio": [], "ferroloop": ["-m", "ferroloop"]}
RUN_TIMEOUT = 60
STDERR_PROBLEMS = [
    "Traceback (most recent call last)",
    "Task was destroyed but it is pending",
    "Task exception was never retrieved",
    "Exception in callback",
    "was never awaited",
    "Unclosed",
    "unclosed",
]
LOOP_LINE = re.compile(r"^loop: (\S+)$", re.MULTILINE)

_reference: dict[tuple[str, ...], str] = {}


def run_example(loop_name: str, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, *LAUNCH[loop_name], f"examples/apps/{script}", *args]
    env = dict(os.environ, FERROLOOP_EXAMPLE_CHECK="1")
    env.pop("PYTHONASYNCIODEBUG", None)
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd[1:])} did not finish in {RUN_TIMEOUT} s\n{exc.stderr}")
    described = (
        f"command: python {' '.join(cmd[1:])}\nexit code: {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
    assert proc.returncode == 0, described
    loops = LOOP_LINE.findall(proc.stderr)
    assert len(loops) == 1 and loops[0].startswith(loop_name), described
    for problem in STDERR_PROBLEMS:
        assert problem not in proc.stderr, f"{problem!r} on stderr\n{described}"
    assert proc.stdout.strip(), described
    return proc


def same_as_asyncio(key: tuple[str, ...], loop_name: str, stdout: str) -> None:
    if loop_name == "asyncio":
        _reference[key] = stdout
    elif key in _reference:
        assert stdout == _reference[key], (
            f"stdout differs from asyncio's\n--- asyncio ---\n{_reference[key]}\n"
            f"--- {loop_name} ---\n{stdout}"
        )


def test_crawler(loop_name: str) -> None:
    import_or_skip("aiohttp")
    proc = run_example(loop_name, "crawler.py")
    assert "crawled 1000 pages with at most 50 requests at a time" in proc.stdout
    assert "503 answers retried: 11" in proc.stdout
    assert "sequential:" in proc.stderr and "extrapolated to 1000 pages" in proc.stderr
    same_as_asyncio(("crawler",), loop_name, proc.stdout)


def test_blocking_service(loop_name: str) -> None:
    import_or_skip("aiohttp")
    proc = run_example(loop_name, "blocking_service.py")
    assert "registered: 16 users" in proc.stdout
    assert "GET /stats: {'users': 16, 'logins': 16}" in proc.stdout
    assert "event loop kept running during the blocking calls: True" in proc.stdout
    same_as_asyncio(("blocking_service",), loop_name, proc.stdout)


def test_etl_twice(loop_name: str, pg_url: str, redis_url: str) -> None:
    import_or_skip("asyncpg")
    import_or_skip("redis")
    rows = 2000
    common = [
        "--rows",
        str(rows),
        "--batch",
        "200",
        "--workers",
        "2",
        "--namespace",
        f"it_etl_{loop_name}",
        "--pg-url",
        pg_url,
        "--redis-url",
        redis_url,
    ]
    first = run_example(loop_name, "etl.py", *common, "--reset")
    second = run_example(loop_name, "etl.py", *common)
    ok = f"check: source {rows}, postgres {rows}, redis {rows}, missing 0, same content in both: True -> OK"
    assert f"postgres: {rows} new rows, 0 updated" in first.stdout
    assert f"redis: {rows} new ids" in first.stdout
    assert ok in first.stdout
    # Run again: every row is upserted, none added twice.
    assert f"postgres: 0 new rows, {rows} updated" in second.stdout
    assert "redis: 0 new ids" in second.stdout
    assert ok in second.stdout
    checksum = [line for line in first.stdout.splitlines() if line.startswith("checksum:")]
    assert checksum and checksum[0] in second.stdout
    assert f"{rows}/{rows} rows 100%" in first.stderr  # the progress bar got to the end
    same_as_asyncio(("etl", "first"), loop_name, first.stdout)
    same_as_asyncio(("etl", "second"), loop_name, second.stdout)
