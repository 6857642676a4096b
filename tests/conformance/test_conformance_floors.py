"""CI entry point: CPython's asyncio test-suite on ferroloop must not regress below floors.

Skipped unless ``FERROLOOP_CONFORMANCE=1``.  Runs::

    python tests/conformance/run_conformance.py --loop ferroloop --check -j $JOBS

Optional environment: ``FERROLOOP_CONFORMANCE_JOBS`` (default 2),
``FERROLOOP_CONFORMANCE_MODULES`` (default: the default module set),
``FERROLOOP_CONFORMANCE_BUDGET`` (seconds, default 900),
``FERROLOOP_CONFORMANCE_JSON`` (path: also write the per-test JSON report there).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parent / "run_conformance.py"

pytestmark = pytest.mark.skipif(
    os.environ.get("FERROLOOP_CONFORMANCE") != "1",
    reason="set FERROLOOP_CONFORMANCE=1 to run CPython's asyncio suite against ferroloop",
)


@pytest.mark.timeout(1800)
def test_conformance_floors():
    cmd = [
        sys.executable,
        str(RUNNER),
        "--loop",
        "ferroloop",
        "--check",
        "-j",
        os.environ.get("FERROLOOP_CONFORMANCE_JOBS", "2"),
        "--budget",
        os.environ.get("FERROLOOP_CONFORMANCE_BUDGET", "900"),
    ]
    if os.environ.get("FERROLOOP_CONFORMANCE_MODULES"):
        cmd += ["--modules", os.environ["FERROLOOP_CONFORMANCE_MODULES"]]
    if os.environ.get("FERROLOOP_CONFORMANCE_JSON"):
        cmd += ["--json", os.environ["FERROLOOP_CONFORMANCE_JSON"]]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(proc.stdout)
    print(proc.stderr[-5000:], file=sys.stderr)
    assert proc.returncode == 0, (
        f"conformance check failed (rc={proc.returncode}); see the report above.\n"
        + proc.stdout[-3000:]
    )
