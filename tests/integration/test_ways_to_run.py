"""The ways to run an application on ferroloop (README, "Running an application"), each as a
user does it: a real program or server command in a child process, real HTTP requests to it,
then the signal a user (Ctrl-C: SIGINT) or a service manager (SIGTERM) sends. The program must
have served on the loop asked for (every answer names its loop's module) and must stop cleanly:
exit status 0, its shutdown steps done, no traceback. Each also runs on asyncio's loop, the
reference: the same program or command without ferroloop.

Here: ``ferroloop.run(main())``, ``asyncio.Runner(loop_factory=ferroloop.new_event_loop)``,
``asyncio.run(main(), loop_factory=ferroloop.new_event_loop)`` (3.12+) in a program
(``_ways_app.py``, standard library only); aiohttp's ``web.run_app`` (``loop=``, under
``python -m ferroloop``, and aiohttp's ``python -m aiohttp.web``); gunicorn with uvicorn-worker's
``UvicornWorker`` (``_ways_workers.py``) and with gunicorn's own ``asgi`` worker; Sanic's
multi-process runner under ``python -m ferroloop``.

Elsewhere: ``uvicorn --loop ferroloop:new_event_loop`` and ``python -m ferroloop -m uvicorn``
(test_uvicorn_integration.py), Sanic's single-process runner under ``python -m ferroloop``
(test_sanic_integration.py), the entry points in process and ``python -m ferroloop`` on short
programs (tests/test_entrypoints.py).

The child runs in a session of its own: Ctrl-C is SIGINT to that whole process group, as a
terminal sends it (gunicorn's and Sanic's workers get it too), SIGTERM goes to the main process
only, as ``kill PID`` or a service manager sends it; and whatever the child leaves is killed
with it at the end, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _support import free_port, import_or_skip

HERE = Path(__file__).resolve().parent
APP = str(HERE / "_ways_app.py")
# Generous: a loaded 2-core machine starts gunicorn with two workers in a few seconds.
START_TIMEOUT = 45.0
STOP_TIMEOUT = 30.0
SIGNALS = {"ctrl-c": signal.SIGINT, "sigterm": signal.SIGTERM}


async def http_get(port: int, path: str) -> dict[str, Any]:
    """GET over a new connection (``Connection: close``); the JSON body of a 200 answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head:
        raise ConnectionResetError("closed without an answer")  # still starting
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].split(" ")[1] == "200", raw
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    assert "chunked" not in headers.get("transfer-encoding", ""), raw
    return json.loads(body[: int(headers["content-length"])])


def launch(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=HERE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def kill_all(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole session (it leads it), workers included."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def serve_and_stop(
    run: Any,
    args: list[str],
    port: int,
    sig: signal.Signals,
    paths: list[str],
    workers: int = 0,
    settle: float = 0.0,
) -> tuple[list[dict[str, Any]], str, int]:
    """Start ``python ARGS``; once it answers, GET each of ``paths``; with ``workers``, GET
    the last path again (a new connection each time) until that many processes (their ``pid``)
    have answered; wait ``settle`` seconds; then send ``sig`` (SIGINT to the process group,
    SIGTERM to the process).

    Returns the answers, the program's output and its exit status.
    """
    proc = launch(args)
    try:

        async def scenario() -> list[dict[str, Any]]:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + START_TIMEOUT
            while True:
                try:
                    first = await http_get(port, paths[0])
                    break
                except (OSError, asyncio.IncompleteReadError):
                    if proc.poll() is not None:
                        raise RuntimeError(f"exited with {proc.returncode}") from None
                    if loop.time() > deadline:
                        raise RuntimeError(f"not answering after {START_TIMEOUT} s") from None
                    await asyncio.sleep(0.05)
            answers = [first, *[await http_get(port, path) for path in paths[1:]]]
            while len({a.get("pid") for a in answers} - {None}) < workers:
                if loop.time() > deadline:
                    raise RuntimeError(f"fewer than {workers} workers answered: {answers}")
                answers.append(await http_get(port, paths[-1]))
            await asyncio.sleep(settle)
            return answers

        try:
            answers = run(scenario, timeout=START_TIMEOUT + 15, compare=False)
        except BaseException:
            kill_all(proc)
            print(proc.communicate()[0])  # shown with the failure
            raise
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # Ctrl-C: a terminal signals the whole process group
        else:
            proc.send_signal(sig)  # as `kill PID`, or a service manager stopping the service
        try:
            output, _ = proc.communicate(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            kill_all(proc)
            output, _ = proc.communicate()
            pytest.fail(f"still running {STOP_TIMEOUT} s after {sig.name}:\n{output}")
        return answers, output, proc.returncode
    finally:
        kill_all(proc)
        if proc.poll() is None:
            proc.communicate()


def check_stopped_cleanly(output: str, status: int, expected: list[str]) -> None:
    assert status == 0, output
    assert "Traceback" not in output, output
    missing = [line for line in expected if line not in output]
    assert not missing, f"missing {missing} in:\n{output}"


# --------------------------------------------------------------------------------------------
# A program that names its loop: ferroloop.run, asyncio.Runner, asyncio.run(loop_factory=)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig_name", list(SIGNALS))
@pytest.mark.parametrize("way", ["run", "runner", "run-loop-factory"])
def test_program_entry_point(run: Any, loop_name: str, way: str, sig_name: str) -> None:
    """``python _ways_app.py WAY --ferroloop``: ``ferroloop.run(main())``,
    ``asyncio.Runner(loop_factory=ferroloop.new_event_loop)`` or ``asyncio.run(main(),
    loop_factory=ferroloop.new_event_loop)``; without ``--ferroloop`` asyncio's own. Ctrl-C goes
    through ``asyncio.Runner``'s SIGINT handling (``main()`` cancelled, its ``finally`` closes
    the server, then ``KeyboardInterrupt``); SIGTERM through ``loop.add_signal_handler``."""
    if way == "run-loop-factory" and sys.version_info < (3, 12):
        pytest.skip("asyncio.run(loop_factory=) is 3.12+")
    port = free_port()
    args = [APP, way, "--port", str(port)] + (["--ferroloop"] if loop_name == "ferroloop" else [])
    answers, output, status = serve_and_stop(run, args, port, SIGNALS[sig_name], ["/"] * 3)
    assert all(a["loop"].startswith(loop_name) for a in answers), (answers, output)
    assert all(a["way"] == way and a["executor_pid"] == a["pid"] for a in answers), answers
    module = answers[0]["loop"]
    stopping = {
        "ctrl-c": ["cancelled (Ctrl-C): stopping", "KeyboardInterrupt after a clean stop"],
        "sigterm": ["SIGTERM: stopping"],
    }[sig_name]
    check_stopped_cleanly(
        output, status, [f"serving on {module}", *stopping, "server closed", "exited"]
    )


# --------------------------------------------------------------------------------------------
# aiohttp's web.run_app
# --------------------------------------------------------------------------------------------

AIOHTTP_LAUNCHERS = {
    # web.run_app(app, loop=ferroloop.new_event_loop()); asyncio: web.run_app(app)
    "run_app-loop": {
        "asyncio": [APP, "aiohttp"],
        "ferroloop": [APP, "aiohttp", "--ferroloop"],
    },
    # the unmodified program calling web.run_app(app), under python -m ferroloop
    "python-m-ferroloop": {
        "asyncio": [APP, "aiohttp"],
        "ferroloop": ["-m", "ferroloop", APP, "aiohttp"],
    },
    # aiohttp's own command line, python -m aiohttp.web -H HOST -P PORT module:function
    "aiohttp-web-cli": {
        "asyncio": ["-m", "aiohttp.web"],
        "ferroloop": ["-m", "ferroloop", "-m", "aiohttp.web"],
    },
}


@pytest.mark.parametrize(
    "launcher,sig_name",
    [
        ("run_app-loop", "ctrl-c"),
        ("run_app-loop", "sigterm"),
        ("python-m-ferroloop", "ctrl-c"),
        ("aiohttp-web-cli", "sigterm"),
    ],
)
def test_aiohttp_run_app(run: Any, loop_name: str, launcher: str, sig_name: str) -> None:
    """``web.run_app`` makes its loop with ``asyncio.new_event_loop()`` unless given ``loop=``:
    so ``loop=ferroloop.new_event_loop()``, or ``python -m ferroloop`` around the unmodified
    program (or around ``python -m aiohttp.web``). It stops on SIGINT and SIGTERM alike, running
    the application's cleanup."""
    import_or_skip("aiohttp")
    port = free_port()
    args = list(AIOHTTP_LAUNCHERS[launcher][loop_name])
    if launcher == "aiohttp-web-cli":
        args += ["-H", "127.0.0.1", "-P", str(port), "_ways_app:make_aiohttp_app"]
    else:
        args += ["--port", str(port)]
    answers, output, status = serve_and_stop(run, args, port, SIGNALS[sig_name], ["/"] * 3)
    assert all(a["loop"].startswith(loop_name) for a in answers), (answers, output)
    module = answers[0]["loop"]
    last = "Stopped" if launcher == "aiohttp-web-cli" else "run_app returned"
    check_stopped_cleanly(output, status, [f"startup on {module}", "cleanup done", last])


# --------------------------------------------------------------------------------------------
# gunicorn
# --------------------------------------------------------------------------------------------

GUNICORN_LAUNCHERS = {
    # uvicorn-worker's UvicornWorker with CONFIG_KWARGS {"loop": "ferroloop:new_event_loop"}
    # (_ways_workers.py); asyncio: the same with {"loop": "asyncio"}.
    "uvicorn-worker": {
        "asyncio": ["-m", "gunicorn", "-k", "_ways_workers.AsyncioWorker"],
        "ferroloop": ["-m", "gunicorn", "-k", "_ways_workers.FerroloopWorker"],
    },
    # gunicorn's own ASGI worker makes its loop with asyncio.new_event_loop() when told
    # --asgi-loop asyncio (its default, auto, takes uvloop where installed); python -m
    # ferroloop's policy reaches the workers, which gunicorn forks.
    "gunicorn-asgi": {
        "asyncio": ["-m", "gunicorn", "-k", "asgi", "--asgi-loop", "asyncio"],
        "ferroloop": [
            *("-m", "ferroloop", "-m", "gunicorn"),
            *("-k", "asgi", "--asgi-loop", "asyncio"),
        ],
    },
}


@pytest.mark.parametrize(
    "launcher,sig_name",
    [
        ("uvicorn-worker", "sigterm"),
        ("uvicorn-worker", "ctrl-c"),
        ("gunicorn-asgi", "sigterm"),
    ],
)
def test_gunicorn(run: Any, loop_name: str, launcher: str, sig_name: str) -> None:
    """gunicorn serving ``_apps:starlette_app`` with two workers: both the lifespan and the
    requests ran on the loop asked for; SIGTERM is gunicorn's graceful stop, SIGINT its quick
    one, and both shut the application down (lifespan) before the master exits."""
    import_or_skip("gunicorn")
    import_or_skip("starlette")
    if launcher == "uvicorn-worker":
        import_or_skip("uvicorn_worker")
    port = free_port()
    args = [
        *GUNICORN_LAUNCHERS[launcher][loop_name],
        *("--workers", "2", "--bind", f"127.0.0.1:{port}"),
        # Not the shared control socket in $HOME (gunicorn 25.1+): tests may run side by side.
        "--no-control-socket",
        "_apps:starlette_app",
    ]
    answers, output, status = serve_and_stop(
        run, args, port, SIGNALS[sig_name], ["/", "/nodelay"], workers=2
    )
    # Both forked workers made their loops: the right kind.
    assert all(a["loop"].startswith(loop_name) for a in answers), (answers, output)
    assert answers[0]["events"] == [f"startup on {answers[0]['loop']}"], answers
    expected = ["Shutting down: Master"]
    if launcher == "uvicorn-worker":
        expected.append("Application shutdown complete")
    check_stopped_cleanly(output, status, expected)


# --------------------------------------------------------------------------------------------
# Sanic's multi-process runner
# --------------------------------------------------------------------------------------------


def test_sanic_workers(run: Any, loop_name: str) -> None:
    """``app.run(workers=2)`` under ``python -m ferroloop``, with ``Sanic.start_method =
    "fork"``: Sanic's default start method, spawn, starts each worker as a new interpreter, in
    which the policy that ``python -m ferroloop`` set does not exist (the workers would run
    asyncio's loop); forked workers keep it."""
    import_or_skip("sanic")
    launcher = {"asyncio": [], "ferroloop": ["-m", "ferroloop"]}[loop_name]
    # SIGTERM to the main process, which stops its workers. Not Ctrl-C: SIGINT to the whole
    # group also reaches Sanic's multiprocessing manager process, which dies of it, and the
    # workers fail to report their state to it (tracebacks; with forked workers the main
    # process then hangs), on either loop (Sanic 25.12). And only once the main process has
    # seen both workers' acknowledgements (it polls them every 0.1 s; a worker acknowledges
    # before it serves): a stop signal while it still waits for them leaves it waiting for
    # ever, on either loop (Sanic 25.12: WorkerManager.wait_for_ack sends the shutdown
    # message back to itself).
    #
    # And a rare race of Sanic's own, on either loop: its SIGTERM handler records each worker's
    # new state in the multiprocessing manager's dict; when the signal lands while the main
    # thread's monitor is itself inside a call to that dict (``_sync_states``, every 0.1 s),
    # the handler's request and reply interleave with the interrupted one on the same
    # connection, and the interrupted call fails (EOFError, or a None for a dict); the main
    # process exits 1 and its workers, their listening socket shut, log accept() errors.
    # Reproduced without Sanic or any event loop: a manager dict read in a loop while a signal
    # handler writes to it. Only that failure, recognised by its traceback, is tried again.
    for attempt in range(3):
        port = free_port()
        args = [*launcher, APP, "sanic-workers", "--port", str(port)]
        answers, output, status = serve_and_stop(
            run, args, port, signal.SIGTERM, ["/", "/pid"], workers=2, settle=2.0
        )
        assert all(a["loop"].startswith(loop_name) for a in answers), (answers, output)
        if attempt < 2 and status != 0 and sanic_manager_reentry(output):
            print(f"attempt {attempt + 1}: Sanic's signal handler re-entered its manager")
            continue
        check_stopped_cleanly(output, status, ["exited"])
        break


def sanic_manager_reentry(output: str) -> bool:
    """Whether Sanic's main process died of its signal handler's re-entrant manager call: the
    traceback passes through the monitor's ``_sync_states`` into ``multiprocessing.managers``."""
    tail = output.partition("in _sync_states")[2]
    return "multiprocessing/managers.py" in tail and "_callmethod" in tail


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
