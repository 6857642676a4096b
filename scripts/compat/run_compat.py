#!/usr/bin/env python3
"""Run real libraries' own test suites on asyncio's loop and on ferroloop, and compare.

    .venv-compat/bin/python scripts/compat/run_compat.py [--suite asyncpg,redis,anyio]
        [--loop asyncio,ferroloop] [--no-check] [--json FILE]

Normally started by scripts/compat.sh, which installs the pinned libraries into .venv-compat
and unpacks their sdists' tests into .venv-compat/suites/<dist>-<version>/.

Each (suite, loop) pair is one pytest process in the suite's directory, with
scripts/compat/loop_plugin.py loaded: it installs the loop's policy before anything else
and records the kind of every loop that runs during each test; a test that ran any other
loop, or a run in which no test ran the named loop, fails the run. The exclusions and floors
come from tests/compat/floors.json:

  ignore            paths not collected (need infrastructure absent here), with reasons
  deselect_markers  pytest markers deselected, with reasons
  deselect_keywords pytest -k keywords deselected (parameter ids such as a backend's), with
                    reasons
  deselect          node-id prefixes deselected, with reasons
  deselect_when     per condition of this machine (CONDITIONS below), node ids deselected
                    when it holds, with the reason (tests that fail on every loop there)
  fail_everywhere   tests that run but cannot pass here on any loop, with reasons
  allowed_differences
                    tests allowed to pass on asyncio and not on ferroloop, with reasons
  min_passed        per loop, the fewest passed tests a healthy run has

Exclusions apply to both loops alike. The check (exit status 1 when it fails): every test that
passes on asyncio passes on ferroloop (a test that fails on ferroloop is run once more there
first, and reported as flaky if it then passes), except allowed_differences; each loop passed
at least min_passed tests; each run's loop check held.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime
import importlib.metadata
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
FLOORS = ROOT / "tests" / "compat" / "floors.json"
COMPAT_VENV = Path(os.environ.get("FERROLOOP_COMPAT_VENV", ROOT / ".venv-compat"))
SUITES_DIR = COMPAT_VENV / "suites"
RESULTS_DIR = COMPAT_VENV / "results"
LOOPS = ("asyncio", "ferroloop")


def log(msg: str = "") -> None:
    print(msg, flush=True)


def read_services() -> dict[str, str]:
    """The servers' URLs: the environment first, then scripts/services.sh's env file."""
    values: dict[str, str] = {}
    path = Path(
        os.environ.get(
            "FERROLOOP_SERVICES_ENV",
            Path(os.environ.get("FERROLOOP_SERVICES_DIR", "/tmp/ferroloop-services"))
            / "services.env",
        )
    )
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                values[key] = value
    for key in ("FERROLOOP_PG_URL", "FERROLOOP_REDIS_URL"):
        if os.environ.get(key):
            values[key] = os.environ[key]
    return values


def localhost_lacks_ipv6() -> bool:
    """True when 'localhost' does not resolve to ::1 (an /etc/hosts without '::1 localhost')."""
    try:
        return not socket.getaddrinfo("localhost", 0, socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return True


# Conditions of this machine that floors.json's deselect_when can name.
CONDITIONS = {"no_ipv6_localhost": localhost_lacks_ipv6}


# ------------------------------------------------------------------------------ suites


@dataclass
class Suite:
    name: str  # key in floors.json
    dist: str  # PyPI name
    floors: dict[str, Any]
    services: dict[str, str]
    version: str = ""
    directory: Path = Path()

    def __post_init__(self) -> None:
        self.version = self.floors["version"]
        self.directory = SUITES_DIR / f"{self.dist}-{self.version}"

    test_path = "tests"

    def options(self) -> list[str]:
        """pytest options for every run of the suite (exclusions apart)."""
        return []

    def env(self) -> dict[str, str]:
        return {}

    def exclusion_args(self) -> list[str]:
        args: list[str] = []
        for path in self.floors.get("ignore", {}):
            args += ["--ignore", path]
        markers = list(self.floors.get("deselect_markers", {}))
        if markers:
            args += ["-m", " and ".join(f"not {m}" for m in markers)]
        keywords = list(self.floors.get("deselect_keywords", {}))
        if keywords:
            args += ["-k", " and ".join(f"not {k}" for k in keywords)]
        for prefix in self.floors.get("deselect", {}):
            args += ["--deselect", prefix]
        for condition in self.conditions():
            for test in self.floors["deselect_when"][condition]["tests"]:
                args += ["--deselect", test]
        return args

    def conditions(self) -> list[str]:
        """The conditions of floors.json's deselect_when that hold on this machine."""
        return [c for c in self.floors.get("deselect_when", {}) if CONDITIONS[c]()]

    def run_env_remove(self) -> list[str]:
        """Variables of this environment the suite's processes must not see."""
        return []

    def snapshot(self) -> Any:
        """State of the server before a run, for cleanup()."""
        return None

    def cleanup(self, before: Any) -> list[str]:
        """Remove what a run left on the server (so the next loop starts alike); say what."""
        return []

    def server_description(self) -> str:
        return ""


class AsyncpgSuite(Suite):
    """asyncpg's unittest-based suite (tests/), against services.sh's PostgreSQL.

    With PGHOST set, asyncpg's harness (asyncpg._testbase) uses the running server instead of
    creating a temporary cluster; tests that need a cluster of their own (its TLS and HBA
    set-ups, adversity proxies, hot standby) skip themselves as "unmanaged cluster" /
    "using remote cluster", or are deselected in floors.json. The harness creates its loops
    with asyncio.new_event_loop() in TestCase.setUpClass, so the policy decides the loop.
    """

    def pg(self) -> urllib.parse.SplitResult:
        return urllib.parse.urlsplit(self.services["FERROLOOP_PG_URL"])

    def env(self) -> dict[str, str]:
        url = self.pg()
        return {
            "PGHOST": url.hostname or "127.0.0.1",
            "PGPORT": str(url.port or 5432),
            "PGUSER": urllib.parse.unquote(url.username or ""),
            "PGPASSWORD": urllib.parse.unquote(url.password or ""),
            # The suite assumes the default database is 'postgres' (pools are created with
            # database='postgres' next to connections made with the defaults).
            "PGDATABASE": "postgres",
            # The suite's own clusters have no TLS; services.sh's server offers it, and
            # asyncpg's default sslmode (prefer) would upgrade every connection.
            "PGSSLMODE": "disable",
        }

    def options(self) -> list[str]:
        # No pytest-asyncio (the suite does not use it), and no pytest warning capture: the
        # recorded warnings keep their source objects alive, which breaks the suite's GC
        # tests (TestConnectionGC) on every loop; unittest, the suite's own runner, keeps none.
        return ["-p", "no:asyncio", "-p", "no:warnings", "--timeout", "120"]

    async def _query(self, sql: str) -> list[Any]:
        import asyncpg

        con = await asyncpg.connect(**self._connect_kwargs())
        try:
            return [tuple(r) for r in await con.fetch(sql)]
        finally:
            await con.close()

    def _connect_kwargs(self) -> dict[str, Any]:
        env = self.env()
        return {
            "host": env["PGHOST"],
            "port": int(env["PGPORT"]),
            "user": env["PGUSER"],
            "password": env["PGPASSWORD"],
            "database": "postgres",
            "ssl": False,
        }

    def _state(self) -> tuple[set[str], set[str]]:
        dbs = asyncio.run(self._query("SELECT datname FROM pg_database"))
        roles = asyncio.run(self._query("SELECT rolname FROM pg_roles"))
        return {d for (d,) in dbs}, {r for (r,) in roles}

    def snapshot(self) -> Any:
        return self._state()

    def cleanup(self, before: Any) -> list[str]:
        dbs_before, roles_before = before
        dbs, roles = self._state()

        async def drop() -> None:
            import asyncpg

            con = await asyncpg.connect(**self._connect_kwargs())
            try:
                for db in sorted(dbs - dbs_before):
                    await con.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
                for role in sorted(roles - roles_before):
                    await con.execute(f'DROP OWNED BY "{role}"')
                    await con.execute(f'DROP ROLE IF EXISTS "{role}"')
            finally:
                await con.close()

        if not (dbs - dbs_before or roles - roles_before):
            return []
        asyncio.run(drop())
        return [f"cleanup: dropped {sorted(dbs - dbs_before)} {sorted(roles - roles_before)}"]

    def server_description(self) -> str:
        (version,) = asyncio.run(self._query("SHOW server_version"))[0]
        url = self.pg()
        return f"PostgreSQL {version.split()[0]} at {url.hostname}:{url.port}"


PG_WRAPPER = """#!/usr/bin/env bash
# Written by scripts/compat/run_compat.py: runs PostgreSQL's {name} as the 'postgres' user
# (the server binaries refuse root), handing it the directories asyncpg's harness made as root.
set -euo pipefail
prev=""
for a in "$@"; do
  case "$prev" in -D | --pgdata) [ -d "$a" ] && chown -R postgres:postgres "$a" ;; esac
  case "$a" in --pgdata=*) [ -d "${{a#--pgdata=}}" ] && chown -R postgres:postgres "${{a#--pgdata=}}" ;; esac
  prev="$a"
done
exec setpriv --reuid postgres --regid postgres --init-groups -- {real} "$@"
"""


def pg_bindir() -> Path:
    """PostgreSQL's server binaries, found as scripts/services.sh finds them."""
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and (Path(out.stdout.strip()) / "initdb").is_file():
            return Path(out.stdout.strip())
    except FileNotFoundError:
        pass
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise RuntimeError("PostgreSQL's server binaries not found (scripts/services.sh install)")
    return found[-1].parent


class AsyncpgClustersSuite(AsyncpgSuite):
    """asyncpg's suite as its authors run it: on temporary clusters its harness creates.

    Not part of the default run (it takes about 3 minutes per loop): the tests that the
    default run skips as "unmanaged cluster" / "using remote cluster" (TLS and pg_hba set-ups,
    the adversity proxy, hot standby) run here. The harness finds PostgreSQL through
    $PGINSTALLATION; as root, the server binaries there are wrappers that run the real ones as
    the 'postgres' user (initdb and postgres refuse root).
    """

    def env(self) -> dict[str, str]:
        real = pg_bindir()
        wrappers = RESULTS_DIR / "pg-bin"
        wrappers.mkdir(parents=True, exist_ok=True)
        as_root = os.geteuid() == 0
        for name in ("pg_ctl", "postgres", "initdb", "pg_basebackup", "pg_resetwal"):
            target = wrappers / name
            target.unlink(missing_ok=True)
            if as_root:
                target.write_text(PG_WRAPPER.format(name=name, real=real / name))
                target.chmod(0o755)
            else:
                target.symlink_to(real / name)
        pg_config = wrappers / "pg_config"
        pg_config.write_text(
            "#!/usr/bin/env bash\n"
            f'{real / "pg_config"} "$@" | sed "s|^BINDIR = .*|BINDIR = {wrappers}|"\n'
        )
        pg_config.chmod(0o755)
        return {"PGINSTALLATION": str(wrappers)}

    def run_env_remove(self) -> list[str]:
        return ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSSLMODE"]

    def snapshot(self) -> Any:
        return None

    def cleanup(self, before: Any) -> list[str]:
        return []  # the harness destroys its clusters at exit

    def server_description(self) -> str:
        real = pg_bindir()
        out = subprocess.run([real / "postgres", "--version"], capture_output=True, text=True)
        version = out.stdout.split()[2] if len(out.stdout.split()) > 2 else "?"
        return f"temporary clusters of PostgreSQL {version}"


class RedisSuite(Suite):
    """redis-py's asyncio suite (tests/test_asyncio, pytest-asyncio), against services.sh's Redis.

    pytest-asyncio's runners call asyncio.Runner without a loop factory, so the policy
    decides the loop.
    """

    test_path = "tests/test_asyncio"

    def options(self) -> list[str]:
        return ["--redis-url", self.services["FERROLOOP_REDIS_URL"]]

    def _client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.services["FERROLOOP_REDIS_URL"])

    def snapshot(self) -> Any:
        with self._client() as r:
            return set(r.acl_users())

    def cleanup(self, before: Any) -> list[str]:
        with self._client() as r:
            users = set(r.acl_users()) - before
            for user in users:
                r.acl_deluser(user)
            r.flushall()
        return [f"cleanup: deleted ACL users {sorted(users)}"] if users else []

    def server_description(self) -> str:
        with self._client() as r:
            version = r.info("server")["redis_version"]
        url = urllib.parse.urlsplit(self.services["FERROLOOP_REDIS_URL"])
        return f"Redis {version} at {url.hostname}:{url.port}"


class AnyioSuite(Suite):
    """anyio's suite (tests/, on anyio's own pytest plugin), its asyncio backend; no server.

    anyio's asyncio backend runs each test with asyncio.Runner(loop_factory=None) unless a test
    parameter passes a loop_factory, so the policy decides the loop; the parameters that pass
    one (anyio's [asyncio+uvloop]) and the trio backend's are deselected in floors.json. Its
    non-parametrised tests that make a loop do it with asyncio.new_event_loop() (the policy
    again); its pytest-plugin tests that run pytest in a subprocess get the loop through
    $PYTEST_PLUGINS (see loop_plugin.py). The suite's pyproject.toml supplies its pytest
    options (-p anyio, -p no:asyncio, ...).
    """

    def options(self) -> list[str]:
        return ["--timeout", "60"]

    def server_description(self) -> str:
        return "asyncio backend, no server"


SUITE_CLASSES: dict[str, type[Suite]] = {
    "asyncpg": AsyncpgSuite,
    "redis": RedisSuite,
    "anyio": AnyioSuite,
    "asyncpg-clusters": AsyncpgClustersSuite,
}
SUITE_DISTS = {
    "asyncpg": "asyncpg",
    "redis": "redis",
    "anyio": "anyio",
    "asyncpg-clusters": "asyncpg",
}


# ------------------------------------------------------------------------------ running


@dataclass
class Run:
    suite: str
    loop: str
    exit_code: int
    seconds: float
    log_path: Path
    report: dict[str, Any] = field(default_factory=dict)
    timed_out: bool = False

    @property
    def outcomes(self) -> dict[str, str]:
        return {t: v["outcome"] for t, v in self.report.get("tests", {}).items()}

    def failure(self, test: str, lines: int = 25) -> list[str]:
        """The last lines of a failed test's report, as the plugin recorded them."""
        text = self.report.get("tests", {}).get(test, {}).get("failure", "")
        return [line for line in text.splitlines() if line.strip()][-lines:]

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes.values() if o == outcome)

    def loop_check_problems(self) -> list[str]:
        problems = []
        if self.timed_out:
            problems.append(f"timed out after {self.seconds:.0f} s")
        if not self.report:
            problems.append("no report (pytest did not finish; see the log)")
            return problems
        if self.exit_code not in (0, 1):
            problems.append(f"pytest exit status {self.exit_code}")
        foreign = self.report.get("tests_on_other_loops", {})
        if foreign:
            problems.append(f"{len(foreign)} tests ran another loop than {self.loop}'s")
        if not self.report.get("tests_on_named_loop"):
            problems.append(f"no test ran {self.loop}'s loop")
        return problems


def run_pytest(suite: Suite, loop: str, extra: list[str], tag: str, timeout: float) -> Run:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    report_path = RESULTS_DIR / f"{suite.name}-{loop}{tag}.json"
    log_path = RESULTS_DIR / f"{suite.name}-{loop}{tag}.log"
    report_path.unlink(missing_ok=True)
    env = dict(os.environ)
    for key in suite.run_env_remove():
        env.pop(key, None)
    env.update(suite.env())
    env["FERROLOOP_COMPAT_LOOP"] = loop
    env["FERROLOOP_COMPAT_REPORT"] = str(report_path)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    # pytest processes that the tests start (pytester's runpytest_subprocess) load the plugin
    # too: they run the same loop, and report theirs (loop_plugin.py).
    env["PYTEST_PLUGINS"] = "loop_plugin"
    env.pop("FERROLOOP_COMPAT_SESSION_PID", None)
    env.pop("FERROLOOP_COMPAT_TEST", None)
    env.pop("PYTHONASYNCIODEBUG", None)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "loop_plugin",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rfE",
        "--tb=short",
        *extra,
    ]
    start = time.monotonic()
    timed_out = False
    with open(log_path, "w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=suite.directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
    seconds = time.monotonic() - start
    run = Run(suite.name, loop, code, seconds, log_path, timed_out=timed_out)
    if report_path.is_file():
        run.report = json.loads(report_path.read_text())
    return run


def matches(test: str, prefixes: dict[str, str]) -> str | None:
    for prefix, reason in prefixes.items():
        if test.startswith(prefix):
            return reason
    return None


def summary_line(run: Run) -> str:
    deselected = run.report.get("deselected", 0)
    return (
        f"{run.loop}: {run.count('passed')} passed, {run.count('failed')} failed, "
        f"{run.count('skipped')} skipped ({deselected} deselected) in {run.seconds:.0f} s"
    )


def loop_proof_line(run: Run) -> str:
    foreign = run.report.get("tests_on_other_loops", {})
    children = run.report.get("child_processes", 0)
    return (
        f"loop check: {run.report.get('tests_on_named_loop', 0)} of {len(run.outcomes)} tests "
        f"ran {run.loop}'s loop ({run.report.get('policy', '?')}), "
        f"{len(foreign)} ran another loop"
        + (f" (counting {children} pytest processes the tests started)" if children else "")
    )


@dataclass
class SuiteOutcome:
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)

    def log(self, msg: str) -> None:
        self.lines.append(msg)


def run_suite(suite: Suite, loops: list[str], timeout: float) -> SuiteOutcome:
    """Run one suite on each loop in turn and compare; the output is returned, not printed
    (suites run concurrently)."""
    out = SuiteOutcome()
    floors = suite.floors
    name = suite.name
    installed = importlib.metadata.version(suite.dist)
    if installed != suite.version:
        out.failures.append(
            f"{name}: {suite.dist} {installed} installed, floors.json has {suite.version}"
        )
        return out
    if not suite.directory.is_dir():
        out.failures.append(f"{name}: no test suite at {suite.directory} (run scripts/compat.sh)")
        return out
    server = suite.server_description()
    out.log(f"== {suite.dist} {suite.version}: its own test suite ({server})")
    conditions = suite.conditions()
    for condition in conditions:
        entry = floors["deselect_when"][condition]
        out.log(f"  {condition}: {len(entry['tests'])} tests deselected ({entry['reason']})")
    runs: dict[str, Run] = {}
    base_args = [suite.test_path, *suite.options(), *suite.exclusion_args()]
    for loop in loops:
        before = suite.snapshot()
        run = run_pytest(suite, loop, base_args, "", timeout)
        for line in suite.cleanup(before):
            out.log(f"    {line}")
        runs[loop] = run
        out.log(f"  {summary_line(run)}")
        out.log(f"    {loop_proof_line(run)}")
        for problem in run.loop_check_problems():
            out.failures.append(f"{name} on {loop}: {problem} (log: {run.log_path})")
        for test, kinds in sorted(run.report.get("tests_on_other_loops", {}).items())[:20]:
            out.log(f"    ran another loop: {test}: {kinds}")
        floor = floors.get("min_passed", {}).get(loop)
        if floor is not None and run.report and run.count("passed") < floor:
            out.failures.append(
                f"{name} on {loop}: {run.count('passed')} passed, fewer than the floor "
                f"{floor} (log: {run.log_path})"
            )

    out.result = {
        "version": suite.version,
        "server": server,
        "conditions": conditions,
        "loops": {
            loop: {
                "passed": run.count("passed"),
                "failed": run.count("failed"),
                "skipped": run.count("skipped"),
                "deselected": run.report.get("deselected", 0),
                "seconds": round(run.seconds, 1),
                "tests_on_named_loop": run.report.get("tests_on_named_loop", 0),
                "tests_on_other_loops": len(run.report.get("tests_on_other_loops", {})),
            }
            for loop, run in runs.items()
        },
    }
    if "asyncio" not in runs or "ferroloop" not in runs:
        return out
    a, f = runs["asyncio"].outcomes, runs["ferroloop"].outcomes
    if not a or not f:
        return out

    fail_everywhere = floors.get("fail_everywhere", {})
    unexpected = [t for t, o in a.items() if o == "failed" and not matches(t, fail_everywhere)]
    if unexpected:
        out.log(f"  warning: {len(unexpected)} tests fail on asyncio and are not listed in")
        out.log("  fail_everywhere (an environment difference? list them with a reason):")
        for t in unexpected:
            out.log(f"    {t}")
    now_passing = sorted(
        prefix
        for prefix in fail_everywhere
        if any(t.startswith(prefix) and o == "passed" for t, o in a.items())
    )
    if now_passing:
        out.log("  note: listed in fail_everywhere but passing on asyncio now:")
        for prefix in now_passing:
            out.log(f"    {prefix}")

    missing = sorted(t for t, o in a.items() if o == "passed" and f.get(t) != "passed")
    flaky: list[str] = []
    rerun: Run | None = None
    if missing and len(missing) <= 100:
        out.log(f"  {len(missing)} tests pass on asyncio but not on ferroloop: running them again")
        before = suite.snapshot()
        rerun = run_pytest(suite, "ferroloop", [*suite.options(), *missing], "-rerun", timeout)
        for line in suite.cleanup(before):
            out.log(f"    {line}")
        flaky = [t for t in missing if rerun.outcomes.get(t) == "passed"]
        missing = [t for t in missing if t not in flaky]
    allowed = floors.get("allowed_differences", {})
    out.log(f"  pass on asyncio, not on ferroloop: {len(missing) or 'none'}")
    for t in missing:
        reason = matches(t, allowed)
        outcome = f.get(t, "not run")
        out.log(f"    {t} ({f'allowed: {reason}' if reason else outcome})")
        if not reason:
            out.failures.append(f"{name}: {t} passes on asyncio, {outcome} on ferroloop")
            # Why, from the last run that failed it (the log files stay on the CI machine).
            for source in (rerun, runs["ferroloop"]):
                lines = source.failure(t) if source else []
                if lines:
                    out.log(f"      why ({'rerun' if source is rerun else 'first run'}):")
                    for line in lines:
                        out.log(f"        | {line}")
                    break
    if flaky:
        out.log(f"  failed on ferroloop, then passed when run again (flaky): {len(flaky)}")
        for t in flaky:
            out.log(f"    {t}")
            for line in runs["ferroloop"].failure(t, lines=12):
                out.log(f"        | {line}")
    out.result["asyncio_only_passes"] = missing
    out.result["flaky_on_ferroloop"] = flaky
    out.result["ferroloop_only_passes"] = sorted(
        t for t, o in f.items() if o == "passed" and a.get(t) != "passed"
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="asyncpg,redis,anyio", help="comma-separated suites")
    parser.add_argument("--loop", default="asyncio,ferroloop", help="comma-separated loops")
    parser.add_argument("--floors", type=Path, default=FLOORS)
    parser.add_argument("--no-check", action="store_true", help="report only; exit 0")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "summary.json")
    parser.add_argument(
        "--run-timeout", type=float, default=900, help="seconds for one suite on one loop"
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="one suite after the other (by default the suites, which use different servers, "
        "run at the same time; each runs its loops one after the other)",
    )
    args = parser.parse_args()

    floors = json.loads(args.floors.read_text())
    services = read_services()
    suite_names = [s for s in args.suite.split(",") if s]
    loops = [loop for loop in args.loop.split(",") if loop]
    for loop in loops:
        if loop not in LOOPS:
            parser.error(f"unknown loop {loop!r}")
    need = {"asyncpg": "FERROLOOP_PG_URL", "redis": "FERROLOOP_REDIS_URL"}
    for name in suite_names:
        if name not in SUITE_CLASSES:
            parser.error(f"unknown suite {name!r} (known: {', '.join(SUITE_CLASSES)})")
        if name in need and need[name] not in services:
            log(f"compat: no {need[name]}: start the servers with scripts/services.sh start")
            return 2

    summary: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "suites": {},
    }
    start = time.monotonic()
    suites = [
        SUITE_CLASSES[name](name, SUITE_DISTS[name], floors[name], services) for name in suite_names
    ]
    failures: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(1 if args.sequential else len(suites)) as pool:
        futures = {
            pool.submit(run_suite, suite, loops, args.run_timeout): suite for suite in suites
        }
        for future in concurrent.futures.as_completed(futures):
            outcome = future.result()
            for line in outcome.lines:
                log(line)
            failures += outcome.failures
            if outcome.result:
                summary["suites"][futures[future].name] = outcome.result

    summary["seconds"] = round(time.monotonic() - start, 1)
    summary["failures"] = failures
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=1) + "\n")
    log(f"== compat: {summary['seconds']:.0f} s; summary in {args.json}")
    if failures:
        log("compat check FAILED:")
        for failure in failures:
            log(f"  {failure}")
        return 0 if args.no_check else 1
    log("compat check passed: every test that passes on asyncio passes on ferroloop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
