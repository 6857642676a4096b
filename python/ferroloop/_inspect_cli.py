"""``python -m ferroloop ps PID`` / ``pstree PID``: ask a process for its tasks and print them.

This module owns the client side of task dumps: finding the target's socket (the directories
``_inspect.py`` serves in, for the target's uid and ``XDG_RUNTIME_DIR``, read from
``/proc/PID/environ``), asking with a timeout, and rendering the answer as Python 3.14's
``python -m asyncio ps``/``pstree`` do, with ferroloop's additions (one row or tree per loop,
the task's state, the loop's thread). ``--json`` prints the answer as received.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ._inspect import ENV_VAR, MAX_ANSWER, PROTOCOL, candidate_dirs, socket_name

NOT_INSPECTABLE = (
    "process {pid} is not inspectable: start it with {env}=1 or call ferroloop.enable_inspect()"
)


class InspectError(Exception):
    """A task dump could not be had; the message says why, for the user."""


# ---------------------------------------------------------------------------------- fetching


def _target_xdg_runtime_dir(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        return None
    for item in environ.split(b"\0"):
        if item.startswith(b"XDG_RUNTIME_DIR="):
            return os.fsdecode(item.split(b"=", 1)[1])
    return None


def socket_candidates(pid: int) -> list[str]:
    """Where a process ``pid`` serving task dumps has its socket, most likely first."""
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
    except FileNotFoundError:
        raise InspectError(f"no process with PID {pid}") from None
    except OSError:
        uid = os.getuid()
    dirs: list[str] = []
    for xdg in (_target_xdg_runtime_dir(pid), os.environ.get("XDG_RUNTIME_DIR")):
        for d in candidate_dirs(xdg, uid):
            if d not in dirs:
                dirs.append(d)
    return [os.path.join(d, socket_name(pid)) for d in dirs]


def fetch_tasks(pid: int, timeout: float = 5.0) -> dict[str, Any]:
    """Ask process ``pid`` for its task snapshot (see ``_inspect.snapshot``)."""
    if pid <= 0:
        raise InspectError(f"no process with PID {pid}")
    paths = socket_candidates(pid)
    denied = False
    for path in paths:
        if not os.path.exists(path):
            continue
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            try:
                sock.connect(path)
            except (ConnectionRefusedError, FileNotFoundError):
                continue  # stale file: its process exited without removing it
            except PermissionError:
                denied = True
                continue
            except TimeoutError:
                raise InspectError(
                    f"process {pid} did not accept the connection within {timeout:g} s"
                ) from None
            return _exchange(sock, pid, timeout)
        finally:
            sock.close()
    if denied:
        raise InspectError(f"permission denied: process {pid}'s socket belongs to another user")
    raise InspectError(NOT_INSPECTABLE.format(pid=pid, env=ENV_VAR))


def _exchange(sock: socket.socket, pid: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    try:
        sock.sendall(json.dumps({"cmd": "tasks", "protocol": PROTOCOL}).encode() + b"\n")
        chunks = []
        size = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_ANSWER + 65536:
                raise InspectError(f"process {pid} sent an oversized answer")
    except TimeoutError:
        raise InspectError(
            f"process {pid} did not answer within {timeout:g} s "
            "(stopped, or a thread holds the GIL without releasing it)"
        ) from None
    except OSError as exc:
        raise InspectError(f"process {pid}: {exc}") from None
    try:
        answer = json.loads(b"".join(chunks).decode())
    except ValueError:
        raise InspectError(f"process {pid} sent an answer that is not JSON") from None
    if not isinstance(answer, dict):
        raise InspectError(f"process {pid} sent an unexpected answer")
    if "error" in answer:
        raise InspectError(f"process {pid}: {answer['error']}")
    return answer


# ------------------------------------------------------------------------------- rendering


def _frame_label(frame: Sequence[Any]) -> str:
    func, filename, line = frame
    return f"{func} {filename}:{line}" if filename else str(func)


def _chain(stack: Sequence[Sequence[Any]]) -> str:
    """Function names, innermost first: ``sleep -> worker -> main`` (as asyncio ps)."""
    return " -> ".join(str(f[0]) for f in reversed(stack))


def _state(task: dict[str, Any]) -> str:
    state = str(task.get("state", "?"))
    return f"{state} (cancelling)" if task.get("cancelling") else state


class _Graph:
    """One loop's tasks and who awaits whom (edges to tasks not in the snapshot dropped)."""

    def __init__(self, loop: dict[str, Any]) -> None:
        self.tasks: dict[str, dict[str, Any]] = {t["id"]: t for t in loop.get("tasks", ())}
        self.children: dict[str, list[str]] = {}
        self.parents: dict[str, list[str]] = {tid: [] for tid in self.tasks}
        for tid, task in self.tasks.items():
            kids = [c for c in task.get("awaits", ()) if c in self.tasks and c != tid]
            self.children[tid] = kids
            for kid in kids:
                self.parents[kid].append(tid)

    def roots(self) -> list[str]:
        return sorted(
            (tid for tid, ps in self.parents.items() if not ps),
            key=lambda tid: str(self.tasks[tid].get("name")),
        )

    def tree_order(self) -> list[str]:
        """Every task once, awaiters before what they await (cycles appended)."""
        seen: set[str] = set()
        order: list[str] = []

        def visit(tid: str) -> None:
            stack = [tid]
            while stack:
                cur = stack.pop()
                if cur in seen:
                    continue
                seen.add(cur)
                order.append(cur)
                stack.extend(reversed(self.children.get(cur, ())))

        for root in self.roots():
            visit(root)
        for tid in self.tasks:
            visit(tid)
        return order


def _thread_label(loop: dict[str, Any]) -> str:
    if loop.get("thread_id") is None:
        return "-"
    return str(loop.get("thread_name") or loop["thread_id"])


PS_HEADER = (
    "loop",
    "thread",
    "task id",
    "task name",
    "state",
    "coroutine stack",
    "awaiter chain",
    "awaiter name",
    "awaiter id",
)


def _loops(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The answer's loops, the main thread's first, then by thread name, idle loops last."""

    def key(loop: dict[str, Any]) -> tuple[bool, bool, str, str]:
        name = str(loop.get("thread_name") or "")
        return (loop.get("thread_id") is None, name != "MainThread", name, str(loop["id"]))

    return sorted(answer.get("loops", ()), key=key)


def ps_rows(answer: dict[str, Any]) -> list[list[str]]:
    """The ``ps`` table: one row per task and awaiter (a task awaited by two tasks: two rows)."""
    rows = []
    for loop in _loops(answer):
        graph = _Graph(loop)
        thread = _thread_label(loop)
        for tid in graph.tree_order():
            task = graph.tasks[tid]
            base = [loop["id"], thread, tid, str(task["name"]), _state(task)]
            base.append(_chain(task.get("stack", ())))
            if not graph.parents[tid]:
                rows.append([*base, "", "", "0x0"])
            for parent in graph.parents[tid]:
                ptask = graph.tasks[parent]
                chain = _chain(ptask.get("stack", ()))
                rows.append([*base, chain, str(ptask["name"]), parent])
        if loop.get("callback_stack"):
            chain = _chain(loop["callback_stack"])
            rows.append([loop["id"], thread, "-", "(callback)", "running", chain, "", "", ""])
    return rows


def render_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns as wide as their widest cell: long coroutine stacks widen the table rather
    than push the later columns out of line."""
    rows = list(rows)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    lines = [" ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("-" * len(lines[0]))
    for row in rows:
        lines.append(" ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def render_ps(answer: dict[str, Any]) -> str:
    return render_table(PS_HEADER, ps_rows(answer))


class _Node:
    __slots__ = ("label", "kids")

    def __init__(self, label: str) -> None:
        self.label = label
        self.kids: list[_Node] = []


def _task_node(graph: _Graph, tid: str, path: set[str], shown: set[str]) -> _Node:
    task = graph.tasks[tid]
    label = f"(T) {task['name']} [{_state(task)}]"
    if tid in path:
        return _Node(label + " (await cycle)")
    if tid in shown:
        return _Node(label + " (see above)")
    shown.add(tid)
    node = cur = _Node(label)
    for frame in task.get("stack", ()):
        nxt = _Node(f" {_frame_label(frame)}")
        cur.kids.append(nxt)
        cur = nxt
    path.add(tid)
    for kid in graph.children.get(tid, ()):
        cur.kids.append(_task_node(graph, kid, path, shown))
    path.discard(tid)
    return node


def _draw(node: _Node, prefix: str, last: bool, out: list[str]) -> None:
    # Iterative: a deep await chain must not hit the recursion limit while drawing.
    work = [(node, prefix, last)]
    while work:
        cur, pre, is_last = work.pop()
        out.append(f"{pre}{'└── ' if is_last else '├── '}{cur.label}")
        child_prefix = pre + ("    " if is_last else "│   ")
        n = len(cur.kids)
        for i in range(n - 1, -1, -1):
            work.append((cur.kids[i], child_prefix, i == n - 1))


def render_pstree(answer: dict[str, Any]) -> str:
    blocks = []
    for loop in _loops(answer):
        graph = _Graph(loop)
        where = "running" if loop.get("running") else "not running"
        thread = _thread_label(loop)
        head = f"loop {loop['id']}" + (f" on thread {thread}" if thread != "-" else "")
        out = [f"{head} ({where}, {len(graph.tasks)} tasks)"]
        shown: set[str] = set()
        nodes = []
        # Roots first; then whatever they did not reach (tasks in an await cycle).
        for tid in graph.roots() + graph.tree_order():
            if tid not in shown:
                nodes.append(_task_node(graph, tid, set(), shown))
        if loop.get("callback_stack"):
            node = cur = _Node("(C) callback [running]")
            for frame in loop["callback_stack"]:
                nxt = _Node(f" {_frame_label(frame)}")
                cur.kids.append(nxt)
                cur = nxt
            nodes.append(node)
        for i, node in enumerate(nodes):
            _draw(node, "", i == len(nodes) - 1, out)
        blocks.append("\n".join(out))
    return "\n\n".join(blocks)


# ------------------------------------------------------------------------------------ main

USAGE = "python -m ferroloop {ps,pstree} PID [--json] [--timeout SECONDS]"


def main(argv: Sequence[str]) -> int:
    """``argv``: ``["ps" | "pstree", PID, options...]``; returns the exit code."""
    command, rest = argv[0], list(argv[1:])
    parser = argparse.ArgumentParser(
        prog=f"python -m ferroloop {command}",
        description=(
            "Print every task of every ferroloop loop in a running process "
            f"(started with {ENV_VAR}=1 or having called ferroloop.enable_inspect())."
        ),
    )
    parser.add_argument("pid", type=int, help="the process to inspect")
    parser.add_argument("--json", action="store_true", help="print the raw answer as JSON")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the answer (default 5)"
    )
    args = parser.parse_args(rest)
    try:
        answer = fetch_tasks(args.pid, args.timeout)
    except InspectError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    print(render_ps(answer) if command == "ps" else render_pstree(answer))
    if answer.get("truncated"):
        print("(answer truncated: too many tasks; the rest are not shown)", file=sys.stderr)
    return 0
