"""Which contextvars.Context stream protocol callbacks run in (asyncio's reader/writer handles
capture the context current when reading starts or resumes, and when a write queues data;
from Python 3.15 on, a transport runs every callback in the one context it got when the
connection was created: a copy of the creator's)."""

from __future__ import annotations

import asyncio
import contextvars
import socket
import sys

var = contextvars.ContextVar("var", default="unset")

# 3.15+: one context per transport, copied when the connection was made.
PER_TRANSPORT = sys.version_info >= (3, 15)


class Recorder(asyncio.Protocol):
    def __init__(self):
        self.seen = []
        self.paused = asyncio.get_running_loop().create_future()
        self.resumed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.seen.append(("made", var.get()))

    def data_received(self, data):
        self.seen.append(("data", var.get()))

    def pause_writing(self):
        self.seen.append(("pause", var.get()))
        self.paused.set_result(None)

    def resume_writing(self):
        self.seen.append(("resume", var.get()))
        self.resumed.set_result(None)


def test_reading_resumes_in_the_resumers_context(loop):
    async def main():
        a, b = socket.socketpair()
        var.set("setup")
        tr, pr = await loop.connect_accepted_socket(Recorder, a)
        await asyncio.sleep(0)
        tr.pause_reading()

        async def resumer():
            var.set("resumer")
            tr.resume_reading()

        await asyncio.create_task(resumer())
        b.send(b"x")
        for _ in range(100):
            if any(k == "data" for k, _ in pr.seen):
                break
            await asyncio.sleep(0.005)
        tr.close()
        b.close()
        await asyncio.sleep(0)
        return pr.seen

    resumed_in = "setup" if PER_TRANSPORT else "resumer"
    assert loop.run_until_complete(main()) == [("made", "setup"), ("data", resumed_in)]


def test_flush_runs_in_the_context_of_the_write_that_queued(loop):
    async def main():
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        b.setblocking(False)
        var.set("setup")
        tr, pr = await loop.connect_accepted_socket(Recorder, a)
        tr.set_write_buffer_limits(high=8192)

        async def writer():
            var.set("writer")
            tr.write(b"y" * 1_000_000)

        await asyncio.create_task(writer())
        await asyncio.wait_for(pr.paused, 5)
        got = 0
        while got < 1_000_000:
            try:
                got += len(b.recv(1 << 20))
            except BlockingIOError:
                await asyncio.sleep(0.001)
        await asyncio.wait_for(pr.resumed, 5)
        tr.close()
        b.close()
        await asyncio.sleep(0)
        return pr.seen

    assert loop.run_until_complete(main()) == [
        ("made", "setup"),
        ("pause", "writer"),  # inside write() itself
        ("resume", "setup" if PER_TRANSPORT else "writer"),
    ]
