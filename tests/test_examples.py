"""Run every program in examples/ on asyncio's own loop and on ferroloop.

Each example is an ordinary asyncio program with deterministic stdout. It is run
as a subprocess twice, the way a user would run it:

    python examples/NAME.py                 # asyncio's default loop (the reference)
    python -m ferroloop examples/NAME.py    # the same program on ferroloop

Both runs must exit with status 0 and print the same stdout. With
FERROLOOP_EXAMPLE_CHECK=1 every example reports on stderr which loop class it ran
on ("loop: <module>"), so the test can tell that ferroloop really was in use.

ferroloop is a required part of the project: if it cannot be imported, the
ferroloop cases fail (they are never skipped).
"""

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = ROOT / "examples"
EXAMPLES = sorted(path.name for path in EXAMPLES_DIR.glob("*.py") if not path.name.startswith("_"))

# How each loop is selected on the command line.
LOOPS = {
    "asyncio": [],
    "ferroloop": ["-m", "ferroloop"],
}
# Expected prefix of type(asyncio.get_running_loop()).__module__ for each loop.
EXPECTED_LOOP_MODULE = {
    "asyncio": "asyncio",
    "ferroloop": "ferroloop",
}
# Each example takes well under 5 s; this only guards against hangs.
RUN_TIMEOUT = 50

# Things asyncio writes to stderr when a program has a hidden problem even
# though it exits with status 0.
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


@functools.cache
def run_example(name: str, loop: str) -> subprocess.CompletedProcess:
    """Run examples/<name> on `loop` (cached: the asyncio run is the reference)."""
    cmd = [sys.executable, *LOOPS[loop], f"examples/{name}"]
    env = dict(os.environ, FERROLOOP_EXAMPLE_CHECK="1")
    env.pop("PYTHONASYNCIODEBUG", None)
    try:
        return subprocess.run(
            cmd,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{' '.join(cmd[1:])} did not finish within {RUN_TIMEOUT}s\n"
            f"--- stdout ---\n{exc.stdout}\n--- stderr ---\n{exc.stderr}"
        )


def describe(proc: subprocess.CompletedProcess) -> str:
    cmd = " ".join(str(part) for part in proc.args[1:])
    return (
        f"command: python {cmd}\nexit code: {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )


def test_examples_are_discovered() -> None:
    assert len(EXAMPLES) >= 8, f"expected the example programs in {EXAMPLES_DIR}, found {EXAMPLES}"


def test_readme_lists_every_example() -> None:
    readme = (EXAMPLES_DIR / "README.md").read_text()
    for name in EXAMPLES:
        assert f"python examples/{name}" in readme, f"{name} is missing from examples/README.md"
        assert f"python -m ferroloop examples/{name}" in readme, (
            f"the ferroloop command for {name} is missing from examples/README.md"
        )


# Examples that need a package of scripts/requirements-integration.txt (installed for the
# main interpreter only; the runs on other Python versions skip them).
REQUIRES = {"blocking_server.py": "aiohttp"}


@pytest.mark.parametrize("loop", list(LOOPS))
@pytest.mark.parametrize("name", EXAMPLES, ids=[name.removesuffix(".py") for name in EXAMPLES])
def test_example(name: str, loop: str) -> None:
    if name in REQUIRES:
        pytest.importorskip(
            REQUIRES[name], reason="pip install -r scripts/requirements-integration.txt"
        )
    proc = run_example(name, loop)
    assert proc.returncode == 0, f"example failed on {loop}\n{describe(proc)}"

    loops_seen = LOOP_LINE.findall(proc.stderr)
    assert len(loops_seen) == 1, f"expected one 'loop: ...' line on stderr\n{describe(proc)}"
    assert loops_seen[0].startswith(EXPECTED_LOOP_MODULE[loop]), (
        f"example ran on a loop from module {loops_seen[0]!r}, expected {loop}\n{describe(proc)}"
    )

    for problem in STDERR_PROBLEMS:
        assert problem not in proc.stderr, (
            f"{problem!r} on stderr when running on {loop}\n{describe(proc)}"
        )

    assert proc.stdout.strip(), f"example printed nothing\n{describe(proc)}"

    if loop != "asyncio":
        reference = run_example(name, "asyncio")
        assert reference.returncode == 0, f"reference run on asyncio failed\n{describe(reference)}"
        assert proc.stdout == reference.stdout, (
            f"stdout differs between asyncio and {loop}\n"
            f"--- asyncio stdout ---\n{reference.stdout}\n--- {loop} run ---\n{describe(proc)}"
        )
