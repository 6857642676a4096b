"""add_reader / add_writer / remove_*: readiness callbacks on file descriptors."""

from __future__ import annotations

import errno
import os
import socket

import pytest


def test_reader_and_writer_on_socketpair(loop):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    got = []

    def on_readable():
        data = b.recv(100)
        got.append(data)
        if b"".join(got) == b"hello world":
            assert loop.remove_reader(b) is True
            loop.stop()

    def on_writable():
        a.send(b"hello world")
        assert loop.remove_writer(a.fileno()) is True

    loop.add_reader(b, on_readable)
    loop.add_writer(a, on_writable)
    loop.call_later(5, loop.stop)
    loop.run_forever()
    assert b"".join(got) == b"hello world"
    assert loop.remove_reader(b) is False
    assert loop.remove_writer(a) is False
    a.close()
    b.close()


def test_reader_is_level_triggered(loop):
    a, b = socket.socketpair()
    b.setblocking(False)
    calls = []

    def on_readable():
        calls.append(b.recv(1))  # read one byte at a time: still readable afterwards
        if len(calls) == 3:
            loop.remove_reader(b)
            loop.stop()

    a.send(b"xyz")
    loop.add_reader(b, on_readable)
    loop.call_later(5, loop.stop)
    loop.run_forever()
    assert calls == [b"x", b"y", b"z"]
    a.close()
    b.close()


def test_reader_args_and_replacement(loop):
    a, b = socket.socketpair()
    out = []
    loop.add_reader(b, out.append, "first")
    loop.add_reader(b, lambda tag: (out.append(tag), loop.remove_reader(b), loop.stop()), "second")
    a.send(b"!")
    loop.call_later(5, loop.stop)
    loop.run_forever()
    assert out == ["second"]
    a.close()
    b.close()


def test_reader_and_writer_on_same_fd(loop):
    a, b = socket.socketpair()
    a.setblocking(False)
    events = []

    def on_write():
        events.append("w")
        loop.remove_writer(a)

    def on_read():
        events.append("r")
        a.recv(10)
        loop.remove_reader(a)
        loop.stop()

    loop.add_writer(a, on_write)
    loop.add_reader(a, on_read)
    b.send(b"ping")
    loop.call_later(5, loop.stop)
    loop.run_forever()
    assert sorted(events) == ["r", "w"]
    a.close()
    b.close()


def test_pipe_eof_wakes_reader(loop):
    r, w = os.pipe()
    os.set_blocking(r, False)
    seen = []

    def on_read():
        data = os.read(r, 100)
        seen.append(data)
        if not data:
            loop.remove_reader(r)
            loop.stop()

    loop.add_reader(r, on_read)
    loop.call_soon(os.write, w, b"data")
    loop.call_later(0.01, os.close, w)
    loop.call_later(5, loop.stop)
    loop.run_forever()
    assert seen == [b"data", b""]
    os.close(r)


@pytest.mark.parametrize("bad", [-1, "not a file", 1.5, object()])
def test_invalid_file_objects(loop, bad):
    with pytest.raises(ValueError):
        loop.add_reader(bad, print)
    with pytest.raises(ValueError):
        loop.add_writer(bad, print)
    with pytest.raises(ValueError):
        loop.remove_reader(bad)


def test_regular_file_cannot_be_watched(loop, tmp_path):
    p = tmp_path / "f"
    p.write_text("x")
    with open(p) as f:
        with pytest.raises(PermissionError):
            loop.add_reader(f, print)
        assert loop.remove_reader(f) is False


def test_closed_fd_raises_oserror(loop):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError):
        loop.add_reader(r, print)


def test_fd_closed_while_registered_then_reused(loop):
    a, b = socket.socketpair()
    fd = b.fileno()
    loop.add_reader(fd, print)
    b.close()  # gone from epoll; our registry still lists it
    c, d = socket.socketpair()
    fired = []
    target = d if d.fileno() == fd else c
    other = c if target is d else d

    def on_read():
        fired.append(target.recv(10))
        loop.remove_reader(target)
        loop.stop()

    loop.remove_reader(fd)
    loop.add_reader(target, on_read)
    other.send(b"reuse")
    loop.call_later(5, loop.stop)
    loop.run_forever()
    assert fired == [b"reuse"]
    for s in (a, c, d):
        s.close()


def test_remove_on_closed_loop_returns_false(loop):
    a, b = socket.socketpair()
    loop.add_reader(a, print)
    loop.close()
    assert loop.remove_reader(a) is False
    with pytest.raises(RuntimeError):
        loop.add_reader(b, print)
    a.close()
    b.close()


def test_fileno_object(loop):
    class FileLike:
        def __init__(self, sock):
            self.sock = sock

        def fileno(self):
            return self.sock.fileno()

    a, b = socket.socketpair()
    out = []

    def on_read():
        out.append(b.recv(10))
        loop.remove_reader(FileLike(b))
        loop.stop()

    loop.add_reader(FileLike(b), on_read)
    a.send(b"fl")
    loop.call_later(5, loop.stop)
    loop.run_forever()
    assert out == [b"fl"]
    a.close()
    b.close()


@pytest.mark.parametrize("direction", ["reader", "writer"])
def test_remove_after_the_socket_object_was_closed(loop, direction):
    """A socket closed while registered (its fileno() is now -1): the registration is found
    by the object, as asyncio's selector does (anyio closes sockets a task waits on)."""
    a, b = socket.socketpair()
    add = getattr(loop, f"add_{direction}")
    remove = getattr(loop, f"remove_{direction}")
    add(a, lambda: None)
    a.close()
    try:
        assert a.fileno() == -1
        assert remove(a) is True
        # Gone: the object names no registration and no fd any more.
        with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
            remove(a)
    finally:
        b.close()


def test_remove_reader_of_closed_socket_with_writer_still_registered(loop):
    a, b = socket.socketpair()
    loop.add_reader(a, lambda: None)
    loop.add_writer(a, lambda: None)
    a.close()
    try:
        # Changing the kernel's interest in a closed fd fails; the registration is forgotten.
        with pytest.raises(OSError) as info:
            loop.remove_reader(a)
        assert info.value.errno == errno.EBADF
        with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
            loop.remove_writer(a)
    finally:
        b.close()


def test_remove_with_a_closed_socket_that_was_never_registered(loop):
    a, b = socket.socketpair()
    a.close()
    b.close()
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        loop.remove_reader(a)
