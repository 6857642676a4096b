"""Task dumps from outside the process (ferroloop only): ``python -m ferroloop ps/pstree PID``.

A child process runs known tasks on two ferroloop loops (one in the main thread: a task
awaiting another task, a gather of two tasks, a TaskGroup; one in another thread, blocked in
a plain call) with ``FERROLOOP_INSPECT=1``; the commands must show every task's name,
coroutine, state and who awaits whom, and the frame the blocked loop is stuck in.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ferroloop
from ferroloop import _inspect, _inspect_cli

TARGET = textwrap.dedent(
    """
    import asyncio, os, sys, threading
    import ferroloop

    entered = threading.Event()
    release = threading.Event()

    def blocker():  # a plain call that keeps its loop from running
        entered.set()
        release.wait(60)

    async def blocked_main():
        asyncio.current_task().set_name("blocked")
        await asyncio.sleep(0)
        blocker()

    def second_loop():
        ferroloop.run(blocked_main())

    async def worker():
        await asyncio.sleep(3600)

    async def waiter(task):
        await task

    async def leaf():
        await asyncio.sleep(3600)

    async def gatherer():
        await asyncio.gather(
            asyncio.create_task(leaf(), name="left"), asyncio.create_task(leaf(), name="right")
        )

    async def group():
        async with asyncio.TaskGroup() as tg:
            tg.create_task(leaf(), name="grouped")

    async def main():
        if os.environ.get("EXPLICIT"):
            print("path", ferroloop.enable_inspect(), flush=True)
        asyncio.current_task().set_name("main")
        loop = asyncio.get_running_loop()
        w = asyncio.create_task(worker(), name="worker")
        tasks = [
            w,
            asyncio.create_task(waiter(w), name="waiter"),
            asyncio.create_task(gatherer(), name="gatherer"),
            asyncio.create_task(group(), name="group"),
        ]
        thread = threading.Thread(target=second_loop, name="second-loop")
        thread.start()
        await loop.run_in_executor(None, entered.wait, 10)
        await asyncio.sleep(0.05)
        print("ready", os.getpid(), flush=True)
        await loop.run_in_executor(None, sys.stdin.read)  # until the test closes stdin
        release.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        thread.join()

    ferroloop.run(main())
    print("done", flush=True)
    """
)


class Target:
    """The child process running TARGET; its stdin closed ends it cleanly."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        script = tmp_path / "target.py"
        script.write_text(TARGET)
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.strip())
            if line.startswith("ready"):
                return
        self.proc.kill()
        raise AssertionError(f"target did not start: {self.lines} {self.proc.stderr.read()}")

    def finish(self) -> str:
        """Close stdin; the target stops its loops and exits; its stdout's rest."""
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != _inspect.ENV_VAR}
    env.update(extra)
    return env


@pytest.fixture
def runtime_dir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
def target(tmp_path: Path, runtime_dir: Path) -> Iterator[Target]:
    t = Target(tmp_path, _env(FERROLOOP_INSPECT="1", XDG_RUNTIME_DIR=str(runtime_dir)))
    try:
        yield t
    finally:
        t.kill()


def ferroloop_cmd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    # The client's own environment does not name the target's XDG_RUNTIME_DIR: it finds it.
    env = _env()
    env.pop("XDG_RUNTIME_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "ferroloop", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def parse_table(text: str) -> list[dict[str, str]]:
    """The ps table as dicts, cut at the header's column starts."""
    lines = text.splitlines()
    header = lines[0]
    names = list(_inspect_cli.PS_HEADER)
    starts = [header.index(n) for n in names]
    rows = []
    for line in lines[2:]:
        cells = [
            line[s : (starts[i + 1] if i + 1 < len(starts) else None)].strip()
            for i, s in enumerate(starts)
        ]
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


def parse_tree(text: str) -> dict[str, list[tuple[int, str]]]:
    """pstree output per loop header: (depth, label) of each line under it."""
    trees: dict[str, list[tuple[int, str]]] = {}
    current: list[tuple[int, str]] = []
    for line in text.splitlines():
        if line.startswith("loop "):
            current = trees.setdefault(line, [])
        elif line.strip():
            marker = max(line.find("└── "), line.find("├── "))
            current.append((marker // 4, line[marker + 4 :]))
    return trees


def task_parents(lines: list[tuple[int, str]]) -> dict[str, str | None]:
    """Task name -> the name of the task it hangs under in the tree (None for a root)."""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []  # enclosing task lines
    for depth, label in lines:
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if label.startswith("(T) "):
            name = label[4:].split(" [")[0]
            parents[name] = stack[-1][1] if stack else None
            stack.append((depth, name))
    return parents


def test_ps_table(target: Target) -> None:
    res = ferroloop_cmd("ps", str(target.pid))
    assert res.returncode == 0, res.stderr
    rows = parse_table(res.stdout)
    by_name: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_name.setdefault(row["task name"], []).append(row)
    expected = {"main", "worker", "waiter", "gatherer", "left", "right", "group", "grouped"}
    assert expected | {"blocked"} == set(by_name)

    main_loop = {r["loop"] for n in expected for r in by_name[n]}
    assert len(main_loop) == 1
    assert {r["thread"] for n in expected for r in by_name[n]} == {"MainThread"}
    (blocked,) = by_name["blocked"]
    assert blocked["loop"] not in main_loop
    assert blocked["thread"] == "second-loop"
    # The loop that blocks: its task is running, in the plain call that blocks it.
    assert blocked["state"] == "running"
    assert blocked["coroutine stack"].endswith("Event.wait -> blocker -> blocked_main")

    def awaiters(name: str) -> set[str]:
        return {r["awaiter name"] for r in by_name[name]}

    assert awaiters("worker") == {"waiter"}
    assert awaiters("left") == awaiters("right") == {"gatherer"}
    assert awaiters("grouped") == {"group"}
    for root in ("main", "waiter", "gatherer", "group"):
        assert awaiters(root) == {""}
        assert by_name[root][0]["awaiter id"] == "0x0"
    (worker,) = by_name["worker"]
    assert worker["state"] == "waiting"
    assert worker["coroutine stack"] == "sleep -> worker"
    assert worker["awaiter chain"] == "waiter"
    assert worker["awaiter id"] == by_name["waiter"][0]["task id"]
    assert by_name["grouped"][0]["awaiter chain"].endswith("TaskGroup.__aexit__ -> group")
    assert by_name["left"][0]["coroutine stack"] == "sleep -> leaf"


def test_pstree(target: Target) -> None:
    res = ferroloop_cmd("pstree", str(target.pid))
    assert res.returncode == 0, res.stderr
    trees = parse_tree(res.stdout)
    assert len(trees) == 2
    (main_head,) = [h for h in trees if "MainThread" in h]
    (second_head,) = [h for h in trees if "second-loop" in h]
    assert "(running, 8 tasks)" in main_head
    parents = task_parents(trees[main_head])
    assert parents == {
        "main": None,
        "waiter": None,
        "worker": "waiter",
        "gatherer": None,
        "left": "gatherer",
        "right": "gatherer",
        "group": None,
        "grouped": "group",
    }
    labels = [label for _, label in trees[main_head]]
    assert "(T) worker [waiting]" in labels
    # Between a task and the task it awaits: the awaiting coroutine's frame, with its place.
    waiter_at = labels.index("(T) waiter [waiting]")
    assert labels[waiter_at + 1].startswith(" waiter ") and "target.py:" in labels[waiter_at + 1]
    assert labels[waiter_at + 2] == "(T) worker [waiting]"
    assert labels[waiter_at + 3].startswith(" worker ")
    assert labels[waiter_at + 4].startswith(" sleep ")

    second = [label for _, label in trees[second_head]]
    assert second[0] == "(T) blocked [running]"
    assert [s.split()[0] for s in second[1:4]] == ["blocked_main", "blocker", "Event.wait"]


def test_json_answer(target: Target) -> None:
    res = ferroloop_cmd("ps", str(target.pid), "--json")
    assert res.returncode == 0, res.stderr
    answer = json.loads(res.stdout)
    assert answer["pid"] == target.pid
    assert answer["truncated"] is False
    tasks = {t["name"]: t for loop in answer["loops"] for t in loop["tasks"]}
    assert tasks["worker"]["coro"] == "worker"
    assert tasks["waiter"]["awaits"] == [tasks["worker"]["id"]]
    assert tasks["waiter"]["waiting_on"] == "Task"
    assert sorted(tasks["gatherer"]["awaits"]) == sorted(
        [tasks["left"]["id"], tasks["right"]["id"]]
    )
    assert tasks["gatherer"]["waiting_on"] == "_GatheringFuture"
    assert tasks["group"]["awaits"] == [tasks["grouped"]["id"]]
    func, filename, line = tasks["worker"]["stack"][0]
    assert func == "worker" and filename.endswith("target.py") and line > 0


def test_socket_permissions_and_cleanup(target: Target, runtime_dir: Path) -> None:
    directory = runtime_dir / "ferroloop"
    sock = directory / f"{target.pid}.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert directory.stat().st_uid == os.getuid()
    out = target.finish()
    assert "done" in out
    assert not sock.exists()
    res = ferroloop_cmd("ps", str(target.pid))
    assert res.returncode == 1
    assert "no process with PID" in res.stderr or "not inspectable" in res.stderr


def test_enable_inspect_call_uses_tmp_dir(tmp_path: Path) -> None:
    env = _env(EXPLICIT="1")
    env.pop("XDG_RUNTIME_DIR", None)
    t = Target(tmp_path, env)
    try:
        path = Path(t.lines[0].split(" ", 1)[1])
        assert path == Path(f"/tmp/ferroloop-{os.getuid()}/{t.pid}.sock")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        res = ferroloop_cmd("ps", str(t.pid))
        assert res.returncode == 0, res.stderr
        assert "worker" in res.stdout
        t.finish()
        assert not path.exists()
    finally:
        t.kill()


def test_not_inspectable(tmp_path: Path) -> None:
    t = Target(tmp_path, _env())
    try:
        started = time.monotonic()
        for command in ("ps", "pstree"):
            res = ferroloop_cmd(command, str(t.pid))
            assert res.returncode == 1
            assert res.stdout == ""
            assert res.stderr.strip() == (
                f"process {t.pid} is not inspectable: start it with FERROLOOP_INSPECT=1 "
                "or call ferroloop.enable_inspect()"
            )
        assert time.monotonic() - started < 20
    finally:
        t.kill()


def test_no_such_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    res = ferroloop_cmd("ps", str(proc.pid))
    assert res.returncode == 1
    assert res.stderr.strip() == f"no process with PID {proc.pid}"
    res = ferroloop_cmd("pstree", "0")
    assert res.returncode == 1


def test_stale_socket_is_not_inspectable(runtime_dir: Path) -> None:
    # A process killed before its atexit ran leaves its socket file: nobody answers on it.
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, ferroloop; print(flush=True); sys.stdin.read()"],
        env=_env(FERROLOOP_INSPECT="1", XDG_RUNTIME_DIR=str(runtime_dir)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        sock = runtime_dir / "ferroloop" / f"{proc.pid}.sock"
        assert sock.exists()
        os.kill(proc.pid, signal.SIGSTOP)  # alive, but its server cannot answer
        res = ferroloop_cmd("ps", str(proc.pid), "--timeout", "0.5")
        assert res.returncode == 1
        assert "did not answer within 0.5 s" in res.stderr
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert sock.exists()
        # The next process serving in that directory sweeps the dead one's socket away.
        later = subprocess.run(
            [sys.executable, "-c", "import ferroloop"],
            env=_env(FERROLOOP_INSPECT="1", XDG_RUNTIME_DIR=str(runtime_dir)),
            timeout=30,
        )
        assert later.returncode == 0
        assert not sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


FORK_TARGET = textwrap.dedent(
    """
    import asyncio, os, sys
    import ferroloop

    async def parked(name):
        asyncio.current_task().set_name(name)
        await asyncio.sleep(3600)

    async def main(name):
        task = asyncio.create_task(parked(name))
        await asyncio.sleep(0.05)
        # Each process writes its own file: two processes printing to one pipe can
        # interleave their writes.
        pid_file = os.path.join(sys.argv[1], f"{name}.pid")
        with open(pid_file + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(pid_file + ".tmp", pid_file)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        task.cancel()

    path = ferroloop.enable_inspect()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        sys.stdin = os.fdopen(r)
        # No server for the child's pid until it makes a loop; the parent's socket stays.
        assert not os.path.exists(path.replace(str(os.getppid()), str(os.getpid())))
        assert os.path.exists(path)
        ferroloop.run(main("in-child"))
        sys.exit(0)  # atexit handlers run: the child's socket goes
    os.close(r)
    ferroloop.run(main("in-parent"))
    os.close(w)
    os.waitpid(pid, 0)
    """
)


def test_fork_child_serves_its_own_pid(tmp_path: Path, runtime_dir: Path) -> None:
    script = tmp_path / "fork_target.py"
    script.write_text(FORK_TARGET)
    proc = subprocess.Popen(
        [sys.executable, "-W", "ignore::DeprecationWarning", str(script), str(tmp_path)],
        env=_env(XDG_RUNTIME_DIR=str(runtime_dir)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        files = [tmp_path / "in-parent.pid", tmp_path / "in-child.pid"]
        deadline = time.monotonic() + 30
        while not all(f.exists() for f in files):
            assert time.monotonic() < deadline, "the target did not start"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        parent_pid, child = (int(f.read_text()) for f in files)
        assert parent_pid == proc.pid
        for pid, name in ((proc.pid, "in-parent"), (child, "in-child")):
            res = ferroloop_cmd("ps", str(pid), "--json")
            assert res.returncode == 0, res.stderr
            answer = json.loads(res.stdout)
            assert answer["pid"] == pid
            names = {t["name"] for loop in answer["loops"] for t in loop["tasks"]}
            assert name in names
            assert ({"in-parent", "in-child"} - {name}).isdisjoint(names)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert not (runtime_dir / "ferroloop" / f"{proc.pid}.sock").exists()
        assert not (runtime_dir / "ferroloop" / f"{child}.sock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# ------------------------------------------------------------- in-process: snapshot and caps


def test_snapshot_truncates_past_the_budget(
    ferroloop_loop: ferroloop.Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    async def parked() -> None:
        await asyncio.sleep(3600)

    async def main() -> dict[str, Any]:
        for i in range(200):
            asyncio.create_task(parked(), name=f"t{i}")
        await asyncio.sleep(0)
        full = _inspect.snapshot()
        monkeypatch.setattr(_inspect, "MAX_ANSWER", 64 * 1024 + 5000)
        cut = _inspect.snapshot()
        for t in asyncio.all_tasks():
            if t is not asyncio.current_task():
                t.cancel()
        return {"full": full, "cut": cut}

    res = ferroloop_loop.run_until_complete(main())
    mine = [lp for lp in res["full"]["loops"] if lp["id"] == hex(id(ferroloop_loop))]
    assert len(mine[0]["tasks"]) == 201
    assert mine[0]["tasks"][0]["state"] in ("running", "waiting")
    assert res["cut"]["truncated"] is True
    assert 0 < sum(len(lp["tasks"]) for lp in res["cut"]["loops"]) < 201


def test_long_stacks_and_names_are_capped(ferroloop_loop: ferroloop.Loop) -> None:
    import asyncio

    async def deep(n: int) -> None:
        if n:
            await deep(n - 1)
        else:
            await asyncio.sleep(3600)

    async def main() -> dict[str, Any]:
        task = asyncio.create_task(deep(200), name="x" * 10_000)
        await asyncio.sleep(0)
        snap = _inspect.snapshot()
        task.cancel()
        return snap

    snap = ferroloop_loop.run_until_complete(main())
    (entry,) = [t for lp in snap["loops"] for t in lp["tasks"] if t["coro"].endswith("deep")]
    assert len(entry["name"]) == _inspect.MAX_STR
    assert len(entry["stack"]) == _inspect.MAX_FRAMES_OUTER + _inspect.MAX_FRAMES_INNER + 1
    assert entry["stack"][_inspect.MAX_FRAMES_OUTER][0].startswith("... ")
    assert entry["stack"][-1][0] == "sleep"


def test_tree_marks_await_cycles() -> None:
    answer = {
        "loops": [
            {
                "id": "0x1",
                "thread_id": None,
                "running": False,
                "tasks": [
                    {"id": "0xa", "name": "a", "state": "waiting", "stack": [], "awaits": ["0xb"]},
                    {"id": "0xb", "name": "b", "state": "waiting", "stack": [], "awaits": ["0xa"]},
                ],
            }
        ]
    }
    text = _inspect_cli.render_pstree(answer)
    assert "(await cycle)" in text
    assert text.splitlines()[0] == "loop 0x1 (not running, 2 tasks)"
    assert len(_inspect_cli.ps_rows(answer)) == 2
