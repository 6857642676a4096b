"""Bad input reaches the native code as a clear Python exception: never a panic, a crash, a
hang or a leaked descriptor. Where asyncio defines the exception, both loops are checked."""

from __future__ import annotations

import asyncio
import math
import os
import socket
import sys

import pytest

import ferroloop


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize(
    ("call", "exc"),
    [
        (lambda lp: lp.call_later("soon", print), TypeError),
        (lambda lp: lp.add_reader(2**40, print), (ValueError, OverflowError, OSError)),
        (lambda lp: lp.add_writer(-7, print), ValueError),
        (lambda lp: lp.remove_reader("nope"), ValueError),
        (lambda lp: lp.set_exception_handler(42), TypeError),
        (lambda lp: lp.set_task_factory("factory"), TypeError),
        (lambda lp: lp.add_signal_handler(0, print), (ValueError, RuntimeError)),
        (lambda lp: lp.add_signal_handler(-1, print), ValueError),
    ],
)
def test_bad_arguments_raise(loop, call, exc):
    with pytest.raises(exc):
        call(loop)
    # The loop still works afterwards.
    assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"


def test_non_numeric_deadline_refused_at_once(ferroloop_loop):
    # asyncio accepts it and then fails inside the loop on the first heap comparison;
    # ferroloop refuses it where it is passed.
    with pytest.raises(TypeError):
        ferroloop_loop.call_at(object(), print)


def test_executor_with_non_callable_fails_the_future(loop):
    async def main():
        with pytest.raises(TypeError):
            await loop.run_in_executor(None, None)

    loop.run_until_complete(main())


def test_nan_and_huge_deadlines(loop, loop_name):
    out = []
    h1 = loop.call_at(math.nan, out.append, "nan")
    h2 = loop.call_later(1e18, out.append, "far")
    h3 = loop.call_later(-math.inf, out.append, "past")
    loop.call_later(0.01, loop.stop)
    if loop_name == "asyncio" and sys.version_info >= (3, 13):
        # asyncio 3.13's selector turns the NaN timeout into an error; ferroloop keeps going.
        with pytest.raises(ValueError, match="NaN"):
            loop.run_forever()
        for h in (h1, h2, h3):
            h.cancel()
        return
    loop.run_forever()
    assert "past" in out and "far" not in out
    for h in (h1, h2, h3):
        h.cancel()


def test_create_task_with_non_coroutine(loop):
    with pytest.raises(TypeError):
        loop.create_task(42)
    with pytest.raises(TypeError):
        loop.run_until_complete(42)


def test_write_garbage_to_transport(loop):
    async def main():
        a, b = socket.socketpair()
        tr, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        errors = []
        for bad in ("text", 123, None, [b"x"]):
            try:
                tr.write(bad)
            except TypeError as e:
                errors.append(type(e))
        with pytest.raises(TypeError):
            tr.writelines([b"ok", "not bytes"])
        with pytest.raises(ValueError):
            tr.set_write_buffer_limits(high=1, low=2)
        with pytest.raises(ValueError):
            tr.set_write_buffer_limits(low=-1)
        tr.close()
        await asyncio.sleep(0)
        b.close()
        return errors

    assert loop.run_until_complete(main()) == [TypeError] * 4


def test_sock_ops_on_closed_socket(loop):
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        b.close()
        a.close()
        results = []
        for op in (lambda: loop.sock_recv(a, 10), lambda: loop.sock_sendall(a, b"x")):
            try:
                await asyncio.wait_for(op(), 2)
            except OSError as e:
                results.append(type(e).__name__)
        return results

    assert loop.run_until_complete(main()) == ["OSError", "OSError"]


def test_sock_recv_negative_size(loop):
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        try:
            with pytest.raises(ValueError):
                await loop.sock_recv(a, -1)
        finally:
            a.close()
            b.close()

    loop.run_until_complete(main())


def test_native_classes_reject_bad_construction():
    loop = ferroloop.new_event_loop()
    try:
        with pytest.raises(TypeError):
            ferroloop._ferroloop.StreamTransport("not a loop", 0, None)
        with pytest.raises(ValueError):
            ferroloop._ferroloop.StreamTransport(loop, -1, None)
        with pytest.raises(TypeError):
            ferroloop.Handle()
        with pytest.raises(AttributeError):
            loop._sock_recv_now("not a socket", 10)

        class BadFd:
            def fileno(self) -> int:
                return 10_000

        with pytest.raises(OSError):
            loop._sock_recv_now(BadFd(), 10)
        with pytest.raises(OSError):
            loop._sock_send_now(BadFd(), b"x")
    finally:
        loop.close()


def test_no_fd_leak_from_loops():
    before = _fd_count()
    for _ in range(50):
        lp = ferroloop.new_event_loop()
        lp.run_until_complete(asyncio.sleep(0))
        lp.close()
    assert _fd_count() == before


def test_re_entering_the_loop_from_a_finalizer_is_safe(ferroloop_loop):
    loop = ferroloop_loop
    out = []

    class Finalizer:
        def __del__(self):
            loop.call_soon(out.append, "from __del__")

    def make_garbage():
        for _ in range(1000):
            f = Finalizer()
            f.cycle = f  # collected by the cyclic GC, at any allocation
        loop.call_soon(loop.stop)

    loop.call_soon(make_garbage)
    loop.run_forever()
    import gc

    gc.collect()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(out) == 1000


def test_sock_recv_with_an_absurd_size_raises_memory_error(loop):
    # As socket.recv does: MemoryError, nothing consumed, the socket still usable.
    async def main():
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)
            b.setblocking(False)
            a.send(b"data")
            with pytest.raises(MemoryError):
                await loop.sock_recv(b, 2**40)
            return await loop.sock_recv(b, 5 * 2**20)

    assert loop.run_until_complete(main()) == b"data"
