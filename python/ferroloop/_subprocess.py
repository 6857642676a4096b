"""Child processes: spawning through asyncio's own subprocess transport, exit watched with a
pidfd registered in the loop's reactor.

No thread per child (asyncio 3.11's default watcher starts one per child) and no SIGCHLD
handler (which would disturb other loops, threads and libraries): ``pidfd_open`` gives a file
descriptor that becomes readable when the child exits; the loop then reaps exactly that child
with ``waitpid``. A child still running when the loop closes is reaped by a daemon thread, so
none is left as a zombie.

Where ``pidfd_open`` is missing (Linux before 5.3, which the manylinux2014 wheels also
install on) or refused (a seccomp profile, valgrind 3.19), each child gets a thread blocked in
``waitpid`` that hands the exit status to the loop, as asyncio 3.11's default watcher does.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
from asyncio import base_events, unix_events
from typing import Any

_PUBLISH_AT_ONCE = sys.version_info >= (3, 14)
# errno values meaning "no pidfd here": not implemented by the kernel, or refused by a filter.
_NO_PIDFD = {errno.ENOSYS, errno.EPERM, errno.EACCES}


def _reap(pid: int) -> int | None:
    """Waits for exactly this child and returns its exit code; None if someone else reaped it
    first."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status)


def _tell_popen(transp: Any, returncode: int) -> None:
    """The pid is free once reaped: Popen must know at once, so that send_signal()/kill()
    before _process_exited runs does not signal a recycled pid (gh-127049)."""
    popen = getattr(transp, "_proc", None)
    if popen is not None and popen.returncode is None:
        popen.returncode = returncode


def _reap_later(pid: int) -> None:
    threading.Thread(target=_reap, args=(pid,), name=f"ferroloop-reap-{pid}", daemon=True).start()


class SubprocessMixin:
    """Mixed into ``ferroloop.Loop``."""

    _child_pidfds: dict[int, int]

    async def _make_subprocess_transport(
        self,
        protocol: Any,
        args: Any,
        shell: bool,
        stdin: Any,
        stdout: Any,
        stderr: Any,
        bufsize: int,
        extra: Any = None,
        **kwargs: Any,
    ) -> Any:
        loop: Any = self
        waiter = loop.create_future()
        transp = unix_events._UnixSubprocessTransport(
            loop,
            protocol,
            args,
            shell,
            stdin,
            stdout,
            stderr,
            bufsize,
            waiter=waiter,
            extra=extra,
            **kwargs,
        )
        self._watch_child(transp.get_pid(), transp)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transp.close()
            await transp._wait()
            raise
        return transp

    def _watch_child(self, pid: int, transp: Any) -> None:
        loop: Any = self
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            if exc.errno not in _NO_PIDFD:
                raise
            self._watch_child_in_thread(pid, transp)
            return
        self._child_pidfds[pidfd] = pid
        loop._add_reader(pidfd, self._on_child_exit, pid, pidfd, transp)

    def _watch_child_in_thread(self, pid: int, transp: Any) -> None:
        loop: Any = self

        def wait() -> None:
            returncode = _reap(pid)
            if returncode is not None:
                _tell_popen(transp, returncode)  # now, not when the loop gets to it
            try:
                loop.call_soon_threadsafe(self._child_exited, pid, returncode, transp)
            except RuntimeError:
                pass  # the loop is closed: the child is reaped, nobody is waiting for it

        threading.Thread(target=wait, name=f"ferroloop-waitpid-{pid}", daemon=True).start()

    def _on_child_exit(self, pid: int, pidfd: int, transp: Any) -> None:
        loop: Any = self
        loop._remove_reader(pidfd)
        self._child_pidfds.pop(pidfd, None)
        os.close(pidfd)
        self._child_exited(pid, _reap(pid), transp)

    def _child_exited(self, pid: int, returncode: int | None, transp: Any) -> None:
        """Publishes a reaped child's exit code; None: someone else reaped it first."""
        loop: Any = self
        popen = getattr(transp, "_proc", None)
        if returncode is None:
            # Already reaped. Most often by the Popen object itself: send_signal(), terminate()
            # and kill() call poll() first, which reaps a child that exited while the loop was
            # busy, and Popen then knows the real exit code. Only a child reaped elsewhere
            # (a SIGCHLD handler, os.wait()) has none: asyncio reports 255 then.
            known = getattr(popen, "returncode", None)
            if known is not None:
                returncode = known
            else:
                returncode = 255
                base_events.logger.warning(
                    "child process pid %d exit status already read:  will report returncode 255",
                    pid,
                )
        _tell_popen(transp, returncode)
        if _PUBLISH_AT_ONCE:
            # 3.14+: asyncio's send_signal() trusts the transport's own returncode, so reaping
            # and publishing are one step, as in asyncio's watchers (gh-127049).
            transp._process_exited(returncode)
        else:
            # One more iteration first, as asyncio 3.11 does, so pipe data already read is
            # delivered.
            loop.call_soon(transp._process_exited, returncode)

    def _close_child_watches(self) -> None:
        loop: Any = self
        for pidfd, pid in list(self._child_pidfds.items()):
            loop._remove_reader(pidfd)
            os.close(pidfd)
            _reap_later(pid)
        self._child_pidfds.clear()
