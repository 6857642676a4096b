"""Signal handlers on the loop, and Ctrl-C behaving as under asyncio.run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest


def test_signal_handler_runs_on_the_loop(loop):
    got = []

    def handler(tag):
        got.append((tag, threading.current_thread() is threading.main_thread()))
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, handler, "usr1")
    loop.call_later(0.01, os.kill, os.getpid(), signal.SIGUSR1)
    loop.call_later(5, loop.stop)
    loop.run_forever()
    assert got == [("usr1", True)]
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_signal_wakes_a_blocked_loop(loop):
    got = []
    loop.add_signal_handler(signal.SIGUSR2, lambda: (got.append(1), loop.stop()))
    t = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR2))
    t.start()
    loop.call_later(5, loop.stop)
    t0 = loop.time()
    loop.run_forever()
    t.join()
    assert got == [1]
    assert loop.time() - t0 < 4
    loop.remove_signal_handler(signal.SIGUSR2)


def test_signal_handler_errors(loop):
    async def coro():
        pass

    with pytest.raises(TypeError):
        loop.add_signal_handler(signal.SIGUSR1, coro)
    with pytest.raises(TypeError):
        loop.add_signal_handler("SIGUSR1", print)
    with pytest.raises(ValueError):
        loop.add_signal_handler(10_000, print)
    with pytest.raises(RuntimeError):
        loop.add_signal_handler(signal.SIGKILL, print)


def test_add_signal_handler_outside_main_thread(loop):
    errors = []

    def worker():
        try:
            loop.add_signal_handler(signal.SIGUSR1, print)
        except RuntimeError as e:
            errors.append(e)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert len(errors) == 1


def test_close_removes_signal_handlers(loop):
    loop.add_signal_handler(signal.SIGUSR1, print)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


PROGRAM = textwrap.dedent(
    """
    import asyncio, sys

    async def main():
        print("ready", flush=True)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            print("main cancelled", flush=True)
            raise

    if sys.argv[1] == "ferroloop":
        import ferroloop
        ferroloop.run(main())
    else:
        asyncio.run(main())
    """
)


@pytest.mark.parametrize("loop_kind", ["asyncio", "ferroloop"])
def test_ctrl_c_cancels_main_task_and_raises_keyboard_interrupt(loop_kind):
    proc = subprocess.Popen(
        [sys.executable, "-c", PROGRAM, loop_kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert "main cancelled" in out
    assert "KeyboardInterrupt" in err
    assert proc.returncode in (-signal.SIGINT, 1, 130)
