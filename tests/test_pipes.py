"""connect_read_pipe / connect_write_pipe on pipes, FIFOs and PTYs."""

from __future__ import annotations

import asyncio
import os
import pty


class Collect(asyncio.Protocol):
    def __init__(self):
        self.data = bytearray()
        self.eof = False
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        assert transport.get_protocol() is self

    def data_received(self, data):
        self.data += data

    def eof_received(self):
        self.eof = True

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_read_pipe_until_eof(loop):
    r, w = os.pipe()

    async def main():
        rf = os.fdopen(r, "rb", 0)
        tr, pr = await loop.connect_read_pipe(Collect, rf)
        os.write(w, b"hello ")
        os.write(w, b"pipe")
        os.close(w)
        exc = await asyncio.wait_for(pr.lost, 5)
        return bytes(pr.data), pr.eof, exc, tr.is_closing()

    assert loop.run_until_complete(main()) == (b"hello pipe", True, None, True)


def test_write_pipe_and_flow_control(loop):
    r, w = os.pipe()
    os.set_blocking(r, False)

    class Writer(asyncio.BaseProtocol):
        paused = 0

        def pause_writing(self):
            self.paused += 1

        def connection_lost(self, exc):
            pass

    async def main():
        wf = os.fdopen(w, "wb", 0)
        tr, pr = await loop.connect_write_pipe(Writer, wf)
        tr.set_write_buffer_limits(high=1024)
        chunk = b"x" * 65536
        for _ in range(8):  # more than the pipe buffer: some stays queued
            tr.write(chunk)
        queued = tr.get_write_buffer_size()
        got = 0
        while got < 8 * 65536:
            await asyncio.sleep(0.001)
            try:
                got += len(os.read(r, 1 << 20))
            except BlockingIOError:
                pass
        await asyncio.sleep(0.01)
        size_after = tr.get_write_buffer_size()
        tr.close()
        await asyncio.sleep(0.01)
        return queued > 0, pr.paused >= 1, size_after, got

    assert loop.run_until_complete(main()) == (True, True, 0, 8 * 65536)
    os.close(r)


def test_fifo(loop, tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)

    async def main():
        rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        tr, pr = await loop.connect_read_pipe(Collect, os.fdopen(rfd, "rb", 0))
        wtr, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, os.fdopen(wfd, "wb", 0))
        wtr.write(b"through the fifo")
        wtr.close()
        await asyncio.wait_for(pr.lost, 5)
        return bytes(pr.data)

    assert loop.run_until_complete(main()) == b"through the fifo"


def test_pty(loop):
    master, slave = pty.openpty()

    async def main():
        tr, pr = await loop.connect_read_pipe(Collect, os.fdopen(master, "rb", 0))
        os.write(slave, b"tty line\n")
        for _ in range(200):
            if b"tty line" in pr.data:
                break
            await asyncio.sleep(0.005)
        tr.close()
        await asyncio.wait_for(pr.lost, 5)
        return b"tty line" in pr.data

    try:
        assert loop.run_until_complete(main()) is True
    finally:
        os.close(slave)


def test_pipe_pause_resume_reading(loop):
    r, w = os.pipe()

    async def main():
        tr, pr = await loop.connect_read_pipe(Collect, os.fdopen(r, "rb", 0))
        await asyncio.sleep(0)
        tr.pause_reading()
        assert not tr.is_reading()
        os.write(w, b"later")
        await asyncio.sleep(0.02)
        before = bytes(pr.data)
        tr.resume_reading()
        await asyncio.sleep(0.02)
        os.close(w)
        await asyncio.wait_for(pr.lost, 5)
        return before, bytes(pr.data)

    assert loop.run_until_complete(main()) == (b"", b"later")
