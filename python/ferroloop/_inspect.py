"""Task dumps from outside the process: the server side of ``python -m ferroloop ps/pstree``.

This module owns the opt-in inspection server and the task snapshot it answers with:

* ``enable_inspect()`` (also ``FERROLOOP_INSPECT=1`` in the environment, read when ferroloop is
  imported and when ``ferroloop.new_event_loop()`` makes a loop) starts one daemon thread that
  serves a Unix socket ``<pid>.sock`` in a per-user directory (``$XDG_RUNTIME_DIR/ferroloop/``,
  else ``/tmp/ferroloop-<uid>/``; the directory is 0700, the socket 0600, the peer's uid is
  checked too), removed at interpreter exit.
* On a request the thread takes the GIL and snapshots every task of every loop in
  ``ferroloop._loop.live_loops()``: name, coroutine, state, coroutine stack (plus, for the task
  that is running right now, the plain frames it is executing: what blocks the loop), and the
  tasks each task awaits. The answer is one JSON document, capped in size.
* After ``os.fork()`` the child does not keep the parent's server: the inherited socket is
  closed (the parent's file is left alone) and a server for the child's pid starts when the
  child makes its first loop with ``ferroloop.new_event_loop()`` or calls ``enable_inspect()``.

Only public or long-stable attributes are read, the same on Python 3.11 to 3.13:
``asyncio.all_tasks(loop)``, ``asyncio.current_task(loop)``, ``Task.get_name/get_coro/
cancelling``, the ``cr_frame``/``cr_await`` (``gi_*``, ``ag_*``) chains of coroutine objects,
``Task._fut_waiter`` (the future a task is blocked on: another task, a ``gather`` whose
``_children`` are the gathered tasks, or a plain future), ``Future._callbacks`` (a
``TaskGroup``'s children carry its ``_on_task_done``, whose ``_parent_task`` awaits them, as
Python 3.14 records it) and ``sys._current_frames()``. Awaits that go through a plain future
(``asyncio.wait``, ``as_completed``, ``shield``, queues, locks) show the task waiting, not on
whom. Nothing here calls user code: objects are identified by exact type, never by ``repr``.

The client side (connecting, rendering the table and the tree) is ``_inspect_cli.py``.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import socket
import stat
import struct
import sys
import threading
import time
import types
from typing import Any

ENV_VAR = "FERROLOOP_INSPECT"
PROTOCOL = 1

# Caps: the server never sends more than MAX_ANSWER bytes (tasks past the budget are left out
# and the answer says ``"truncated": true``), a stack keeps its outermost and innermost frames,
# strings (task names can be anything) are cut.
MAX_ANSWER = 4 * 1024 * 1024
MAX_REQUEST = 4096
MAX_FRAMES_OUTER = 16
MAX_FRAMES_INNER = 48
MAX_CHAIN = 1024
MAX_STR = 300
# A client that connects and then says nothing does not hold the server longer than this.
CLIENT_TIMEOUT = 5.0

_TRUTHY = frozenset({"1", "true", "yes", "on"})


def env_requests_inspect() -> bool:
    """Whether ``FERROLOOP_INSPECT`` asks for the inspection server."""
    return os.environ.get(ENV_VAR, "").strip().lower() in _TRUTHY


# ------------------------------------------------------------------------------ socket paths


def candidate_dirs(xdg_runtime_dir: str | None, uid: int) -> list[str]:
    """The directories a process of ``uid`` may serve its socket in, preferred first."""
    dirs = []
    if xdg_runtime_dir and os.path.isabs(xdg_runtime_dir):
        dirs.append(os.path.join(xdg_runtime_dir, "ferroloop"))
    dirs.append(f"/tmp/ferroloop-{uid}")
    return dirs


def socket_name(pid: int) -> str:
    return f"{pid}.sock"


def _private_dir(path: str) -> bool:
    """Make ``path`` a directory only this user can enter (0700); False if it cannot be."""
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        return False
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        return False  # a symlink or someone else's directory: never serve there
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return True


# ----------------------------------------------------------------------------------- server


class _Server:
    """One listening socket and the daemon thread accepting on it, for one pid."""

    def __init__(self, path: str, sock: socket.socket) -> None:
        self.pid = os.getpid()
        self.path = path
        self.sock = sock
        self.inode = os.stat(path).st_ino
        self.thread = threading.Thread(target=self._serve, name="ferroloop-inspect", daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                if self.sock.fileno() < 0:
                    return  # closed
                time.sleep(0.1)  # out of descriptors, say: do not spin
                continue
            try:
                with conn:
                    _handle(conn)
            except Exception:  # a failed answer must never end the server
                continue

    def remove_file(self) -> None:
        """Unlink the socket file if it is still the one this server bound."""
        try:
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        except OSError:
            pass


_lock = threading.Lock()
_server: _Server | None = None
# Inspection was asked for in this process (by the environment or enable_inspect()): a forked
# child restarts the server when it makes a loop.
_wanted = False
_hooks_installed = False


def enable_inspect() -> str:
    """Serve task dumps to ``python -m ferroloop ps/pstree PID``; return the socket's path.

    Starts (once per process) a daemon thread serving ``<pid>.sock`` in
    ``$XDG_RUNTIME_DIR/ferroloop/`` or ``/tmp/ferroloop-<uid>/`` (directory 0700, socket 0600:
    only the same user can ask). The thread answers with a snapshot of every task of every
    ferroloop loop in the process; it takes the GIL only while it builds an answer. The socket
    is removed at interpreter exit. Calling it again returns the same path.
    """
    global _server, _wanted
    with _lock:
        _wanted = True
        _install_hooks()
        if _server is not None and _server.pid == os.getpid():
            return _server.path
        _server = _start()
        return _server.path


def _start() -> _Server:
    pid = os.getpid()
    problems = []
    for d in candidate_dirs(os.environ.get("XDG_RUNTIME_DIR"), os.getuid()):
        path = os.path.join(d, socket_name(pid))
        if len(os.fsencode(path)) >= 108:
            problems.append(f"{path}: path too long for a Unix socket")
            continue
        if not _private_dir(d):
            problems.append(f"{d}: not a private directory of this user")
            continue
        _remove_stale(d)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                os.unlink(path)  # stale: an earlier process with this pid, or a dropped server
            except FileNotFoundError:
                pass
            sock.bind(path)
            os.chmod(path, 0o600)
            sock.listen(8)
            server = _Server(path, sock)
        except OSError as exc:
            sock.close()
            problems.append(f"{path}: {exc}")
            continue
        server.thread.start()
        return server
    raise OSError("ferroloop: cannot serve task dumps: " + "; ".join(problems))


def _remove_stale(directory: str) -> None:
    """Remove the sockets of processes that are gone (killed before their atexit ran)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        stem, dot, ext = name.partition(".")
        if dot and ext == "sock" and stem.isdigit() and not os.path.exists(f"/proc/{stem}"):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_at_exit)
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _at_exit() -> None:
    server = _server
    if server is not None and server.pid == os.getpid():
        server.remove_file()


def _after_fork_in_child() -> None:
    # The child has no server thread; the listening socket it inherited is the parent's (its
    # file too: leave that alone). Drop both; on_loop_created() serves this pid again.
    global _server, _lock
    _lock = threading.Lock()  # another thread of the parent may have held it
    server, _server = _server, None
    if server is not None:
        try:
            server.sock.close()
        except OSError:
            pass


def on_loop_created() -> None:
    """``ferroloop.new_event_loop()`` calls this: honour ``FERROLOOP_INSPECT`` set late, and
    serve a forked child's pid. Cheap when inspection is off or already serving."""
    server = _server
    if server is not None and server.pid == os.getpid():
        return
    if _wanted or env_requests_inspect():
        enable_from_env(force=True)


def enable_from_env(force: bool = False) -> None:
    """Start the server if ``FERROLOOP_INSPECT`` asks for it (or ``force``), warning instead
    of raising when it cannot: importing ferroloop or making a loop must not fail for it."""
    if not (force or env_requests_inspect()):
        return
    try:
        enable_inspect()
    except Exception as exc:
        import warnings

        warnings.warn(str(exc), RuntimeWarning, stacklevel=2)


def _handle(conn: socket.socket) -> None:
    import json

    conn.settimeout(CLIENT_TIMEOUT)
    if not _peer_allowed(conn):
        return
    request = b""
    while b"\n" not in request and len(request) < MAX_REQUEST:
        chunk = conn.recv(MAX_REQUEST)
        if not chunk:
            break
        request += chunk
    try:
        cmd = json.loads(request.decode()).get("cmd")
    except (ValueError, AttributeError, UnicodeDecodeError):
        cmd = None
    if cmd == "tasks":
        try:
            answer: dict[str, Any] = snapshot()
        except Exception as exc:
            answer = {"protocol": PROTOCOL, "error": f"snapshot failed: {exc!r}"[:MAX_STR]}
    else:
        answer = {"protocol": PROTOCOL, "error": "unknown request"}
    data = json.dumps(answer, separators=(",", ":")).encode()
    if len(data) > MAX_ANSWER:
        data = json.dumps({"protocol": PROTOCOL, "error": "answer too large"}).encode()
    conn.sendall(data)


def _peer_allowed(conn: socket.socket) -> bool:
    """The socket's mode already keeps other users out; check the peer's uid as well."""
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return True
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (os.getuid(), 0)


# --------------------------------------------------------------------------------- snapshot


def _cut(s: str) -> str:
    return s if len(s) <= MAX_STR else s[: MAX_STR - 1] + "…"


def _frame_info(frame: types.FrameType) -> list[Any]:
    code = frame.f_code
    return [_cut(code.co_qualname), _cut(code.co_filename), frame.f_lineno or 0]


def _coro_frames(coro: Any) -> list[types.FrameType]:
    """The frames of a coroutine and of what it awaits, outermost first.

    Follows ``cr_await`` (``gi_yieldfrom``, ``ag_await``) through coroutines, generators and
    async generators, by exact type: other awaitables (asyncio's future iterator, a user's
    ``__await__`` object) end the chain without any of their code running.
    """
    frames = []
    while coro is not None and len(frames) < MAX_CHAIN:
        kind = type(coro)
        if kind is types.CoroutineType:
            frame, coro = coro.cr_frame, coro.cr_await
        elif kind is types.GeneratorType:
            frame, coro = coro.gi_frame, coro.gi_yieldfrom
        elif kind is types.AsyncGeneratorType:
            frame, coro = coro.ag_frame, coro.ag_await
        else:
            break
        if frame is None:
            break
        frames.append(frame)
    return frames


def _frames_above(top: types.FrameType | None, stop: Any) -> list[types.FrameType] | None:
    """Frames from ``top`` down to (excluding) the first one ``stop(frame)`` accepts,
    outermost first; None when no frame is accepted."""
    frames = []
    frame = top
    while frame is not None and len(frames) < MAX_CHAIN:
        if stop(frame):
            frames.reverse()
            return frames
        frames.append(frame)
        frame = frame.f_back
    return None


def _cap_stack(frames: list[types.FrameType]) -> list[list[Any]]:
    if len(frames) > MAX_FRAMES_OUTER + MAX_FRAMES_INNER:
        omitted = len(frames) - MAX_FRAMES_OUTER - MAX_FRAMES_INNER
        return (
            [_frame_info(f) for f in frames[:MAX_FRAMES_OUTER]]
            + [[f"... {omitted} frames ...", "", 0]]
            + [_frame_info(f) for f in frames[-MAX_FRAMES_INNER:]]
        )
    return [_frame_info(f) for f in frames]


def _coro_name(coro: Any) -> str:
    kind = type(coro)
    if kind is types.CoroutineType:
        return _cut(coro.cr_code.co_qualname)
    if kind is types.GeneratorType:
        return _cut(coro.gi_code.co_qualname)
    return _cut(kind.__qualname__)


def _gathered(fut: Any, out: list[asyncio.Future[Any]], depth: int = 0) -> None:
    """The tasks (and nested gathers' tasks) a ``gather`` future waits for."""
    gathering = getattr(asyncio.tasks, "_GatheringFuture", None)
    if gathering is None or not isinstance(fut, gathering) or depth > 32:
        return
    for child in list(getattr(fut, "_children", ()) or ()):
        if isinstance(child, asyncio.Task):
            out.append(child)
        else:
            _gathered(child, out, depth + 1)


def _awaited(task: asyncio.Task[Any]) -> tuple[list[asyncio.Future[Any]], str | None]:
    """What a task is blocked on: the tasks it awaits, and a short name for the future."""
    waiter = getattr(task, "_fut_waiter", None)
    if waiter is None:
        return [], None
    if isinstance(waiter, asyncio.Task):
        return [waiter], "Task"
    children: list[asyncio.Future[Any]] = []
    _gathered(waiter, children)
    return children, _cut(type(waiter).__qualname__)


def _task_group_parent(task: asyncio.Task[Any]) -> asyncio.Task[Any] | None:
    """The task whose ``TaskGroup`` created ``task`` (its ``_on_task_done`` is a callback)."""
    for entry in list(getattr(task, "_callbacks", None) or ()):
        callback = entry[0] if isinstance(entry, tuple) else entry
        owner = getattr(callback, "__self__", None) if type(callback) is types.MethodType else None
        if isinstance(owner, asyncio.TaskGroup):
            parent = getattr(owner, "_parent_task", None)
            if isinstance(parent, asyncio.Task):
                return parent
    return None


def _loop_snapshot(
    loop: Any,
    thread_names: dict[int, str],
    current_frames: dict[int, types.FrameType],
    budget: list[int],
) -> tuple[dict[str, Any], bool]:
    from ._loop import Loop

    thread_id = loop._thread_id
    tasks = list(asyncio.all_tasks(loop))
    current = asyncio.current_task(loop)
    top = current_frames.get(thread_id) if thread_id is not None else None
    run_forever_code = Loop.run_forever.__code__

    # TaskGroup edges are found from the child's side; index them by parent.
    tg_children: dict[int, list[str]] = {}
    for task in tasks:
        parent = _task_group_parent(task)
        if parent is not None:
            tg_children.setdefault(id(parent), []).append(hex(id(task)))

    out_tasks = []
    truncated = False
    for task in tasks:
        coro = task.get_coro()
        frames = _coro_frames(coro)
        if task is current:
            state = "running"
            if top is not None and frames:
                innermost = frames[-1]
                # What the running task executes now (plain calls: what blocks the loop).
                above = _frames_above(top, lambda f, inner=innermost: f is inner)
                if above:
                    frames = frames + above
        elif getattr(task, "_fut_waiter", None) is not None:
            state = "waiting"
        else:
            state = "ready"
        awaited, waiting_on = _awaited(task)
        awaits = [hex(id(t)) for t in awaited]
        for child in tg_children.get(id(task), ()):
            if child not in awaits:
                awaits.append(child)
        stack = _cap_stack(frames)
        entry = {
            "id": hex(id(task)),
            "name": _cut(str(task.get_name())),
            "coro": _coro_name(coro),
            "state": state,
            "cancelling": task.cancelling(),
            "stack": stack,
            "awaits": awaits,
            "waiting_on": waiting_on,
        }
        cost = 200 + len(entry["name"]) + len(entry["coro"]) + 20 * len(awaits)
        cost += sum(len(f[0]) + len(f[1]) + 16 for f in stack)
        if cost > budget[0]:
            truncated = True
            break
        budget[0] -= cost
        out_tasks.append(entry)

    callback_stack: list[list[Any]] = []
    if current is None and top is not None and loop.is_running():
        # No task runs: a plain callback may (frames above the loop's run_forever).
        above = _frames_above(top, lambda f: f.f_code is run_forever_code)
        if above:
            callback_stack = _cap_stack(above)
    return (
        {
            "id": hex(id(loop)),
            "thread_id": thread_id,
            "thread_name": thread_names.get(thread_id) if thread_id is not None else None,
            "running": loop.is_running(),
            "tasks": out_tasks,
            "callback_stack": callback_stack,
        },
        truncated,
    )


def snapshot() -> dict[str, Any]:
    """Every task of every live ferroloop loop in this process, as a JSON-ready dict."""
    from ._loop import live_loops

    thread_names = {t.ident: t.name for t in threading.enumerate() if t.ident is not None}
    current_frames = sys._current_frames()
    budget = [MAX_ANSWER - 64 * 1024]
    loops = []
    truncated = False
    try:
        for loop in live_loops():
            try:
                entry, cut = _loop_snapshot(loop, thread_names, current_frames, budget)
            except Exception as exc:  # a loop closing under us: report, keep the others
                entry = {"id": hex(id(loop)), "error": _cut(repr(exc)), "tasks": []}
                cut = False
            loops.append(entry)
            if cut:
                truncated = True
                break
    finally:
        del current_frames
    return {
        "protocol": PROTOCOL,
        "pid": os.getpid(),
        "python": sys.version.split()[0],
        "argv": [_cut(a) for a in sys.argv[:8]],
        "truncated": truncated,
        "loops": loops,
    }
