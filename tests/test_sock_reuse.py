"""sock_* operations across fd reuse: a socket closed right after an operation and a new one
that gets the same fd number must not inherit anything (ferroloop keeps the kernel
registration of a finished sock_* wait for the next wait on the same socket object)."""

from __future__ import annotations

import asyncio
import socket

import pytest


async def _recv_after_wait(loop, a, b, payload):
    task = asyncio.ensure_future(loop.sock_recv(b, 100))
    await asyncio.sleep(0.01)  # b's sock_recv now waits on the reactor
    a.send(payload)
    return await asyncio.wait_for(task, 5)


@pytest.mark.timeout(20)
def test_closed_socket_fd_reused_by_new_socket(loop):
    async def main():
        results = []
        for i in range(20):
            a, b = socket.socketpair()
            a.setblocking(False)
            b.setblocking(False)
            results.append(await _recv_after_wait(loop, a, b, b"round %d" % i))
            fd = b.fileno()
            a.close()
            b.close()
            # The next socketpair very likely reuses the same fd numbers.
            c, d = socket.socketpair()
            c.setblocking(False)
            d.setblocking(False)
            reused = fd in (c.fileno(), d.fileno())
            results.append((reused, await _recv_after_wait(loop, c, d, b"new %d" % i)))
            c.close()
            d.close()
        return results

    res = loop.run_until_complete(main())
    assert [r for r in res if isinstance(r, bytes)] == [b"round %d" % i for i in range(20)]
    assert [r[1] for r in res if isinstance(r, tuple)] == [b"new %d" % i for i in range(20)]


@pytest.mark.timeout(20)
def test_add_reader_after_sock_recv_on_same_fd(loop):
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        first = await _recv_after_wait(loop, a, b, b"via sock_recv")
        got = loop.create_future()
        loop.add_reader(b, lambda: got.set_result(b.recv(100)) if not got.done() else None)
        a.send(b"via add_reader")
        second = await asyncio.wait_for(got, 5)
        loop.remove_reader(b)
        a.close()
        b.close()
        return first, second

    assert loop.run_until_complete(main()) == (b"via sock_recv", b"via add_reader")


@pytest.mark.timeout(20)
def test_request_reply_loop_and_idle_wakeups(loop):
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)

        async def echo():
            while data := await loop.sock_recv(b, 1024):
                await loop.sock_sendall(b, data)

        server = asyncio.ensure_future(echo())
        replies = []
        for i in range(200):
            await loop.sock_sendall(a, b"m%d" % i)
            replies.append(await loop.sock_recv(a, 1024))
        # Idle with a finished wait behind: the loop must block, then wake on a timer.
        t0 = loop.time()
        await asyncio.sleep(0.05)
        slept = loop.time() - t0
        a.close()
        await asyncio.wait_for(server, 5)
        b.close()
        return replies, slept

    replies, slept = loop.run_until_complete(main())
    assert replies == [b"m%d" % i for i in range(200)]
    assert 0.04 <= slept < 2
