"""loop.sock_* on non-blocking sockets: sock_recv, sock_recv_into, sock_sendall (larger than
the small socket buffers) on socketpairs, sock_connect and sock_accept on a loopback TCP
listener; operations cancelled while they wait; the test sends, reads and half-closes on the
other end. Compared: each operation's result (data, byte counts, exceptions, cancellation)
and when it arrives."""

from __future__ import annotations

import asyncio
import socket

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import initialize, precondition, rule

from . import MACHINE_MARKS, DiffMachine, World, describe_exc, pattern, run_machine

pytestmark = MACHINE_MARKS

BUF = 4096


def small(s: socket.socket) -> socket.socket:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUF)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUF)
    s.setblocking(False)
    return s


class SockWorld(World):
    network = True  # loopback TCP/UDP: settle before each iteration

    def __init__(self, kind: str, debug: bool = False) -> None:
        super().__init__(kind, debug)
        # pid -> the two ends; a pair made by connect + accept has its accepted end filled in
        # when the accept completes.
        self.pairs: dict[int, list[socket.socket | None]] = {}
        self.ops: dict[int, asyncio.Future] = {}
        self.writes = 0
        self.listener = self.sock(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.setblocking(False)
        self.connecting: list[int] = []  # pids whose client end connected, not yet accepted

    def new_pair(self, pid: int) -> None:
        a, b = socket.socketpair()
        self.pairs[pid] = [self.sock(small(a)), self.sock(small(b))]

    def s(self, pid: int, side: int) -> socket.socket:
        return self.pairs[pid][side]

    # ------------------------------------------------------------ loop operations

    def start(self, oid: int, what: str, coro_or_fut) -> None:
        fut = asyncio.ensure_future(coro_or_fut, loop=self.loop)
        self.ops[oid] = fut
        fut.add_done_callback(lambda f: self.record("op-done", oid, what, self.outcome(f)))

    def outcome(self, f: asyncio.Future):
        if f.cancelled():
            return ("cancelled",)
        exc = f.exception()
        if exc is not None:
            return ("exception", describe_exc(exc))
        return ("result", f.result())

    def sock_recv(self, oid: int, pid: int, side: int, n: int) -> None:
        self.start(oid, "recv", self.loop.sock_recv(self.s(pid, side), n))

    def sock_recv_into(self, oid: int, pid: int, side: int, n: int) -> None:
        buf = bytearray(n)

        async def recv_into():
            nbytes = await self.loop.sock_recv_into(self.s(pid, side), buf)
            return (nbytes, bytes(buf[:nbytes]))

        self.start(oid, "recv_into", recv_into())

    def sock_sendall(self, oid: int, pid: int, side: int, size: int) -> None:
        self.writes += 1
        data = pattern(self.writes, size)
        self.start(oid, "sendall", self.loop.sock_sendall(self.s(pid, side), data))

    def sock_connect(self, oid: int, pid: int) -> None:
        client = self.sock(small(socket.socket(socket.AF_INET, socket.SOCK_STREAM)))
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pairs[pid] = [client, None]
        self.connecting.append(pid)
        self.start(oid, "connect", self.loop.sock_connect(client, self.listener.getsockname()))

    def sock_accept(self, oid: int) -> None:
        async def accept():
            conn, addr = await self.loop.sock_accept(self.listener)
            self.sock(conn)
            small(conn)
            for pid in self.connecting:
                if self.pairs[pid][0].getsockname() == addr:
                    self.pairs[pid][1] = conn
                    self.connecting.remove(pid)
                    return ("accepted", pid, conn.gettimeout())
            return ("accepted a stranger",)

        self.start(oid, "accept", accept())

    def cancel(self, oid: int) -> tuple:
        f = self.ops[oid]
        return (f.cancel(), f.done())

    # ------------------------------------------------------------ direct socket calls

    def send(self, pid: int, side: int, size: int):
        self.writes += 1
        try:
            return self.s(pid, side).send(pattern(self.writes, size))
        except OSError as exc:
            return describe_exc(exc)

    def recv(self, pid: int, side: int, n: int):
        try:
            return self.s(pid, side).recv(n)
        except OSError as exc:
            return describe_exc(exc)

    def shutdown(self, pid: int, side: int) -> None:
        self.s(pid, side).shutdown(socket.SHUT_WR)

    def step(self, n: int) -> None:
        for _ in range(n):
            self.record("iteration")
            self.run_once()

    def before_close(self) -> None:
        for f in self.ops.values():
            f.cancel()


sizes = st.sampled_from([1, 100, 3000, 20000, 200000])
recv_sizes = st.sampled_from([1, 100, 65536])


class SockMachine(DiffMachine):
    world_class = SockWorld

    def __init__(self) -> None:
        super().__init__()
        self.ready: list[int] = []  # pids with both ends
        self.accepting: list[int] = []  # pids connected, not yet accepted
        self.oids: list[int] = []
        self.accepts = 0  # sock_accept calls started
        self.connects = 0  # sock_connect calls started
        self.directions: dict[int, tuple[int, int, str]] = {}  # oid -> (pid, side, "in"/"out")

    def busy(self, pid: int, side: int, direction: str) -> bool:
        """Whether an operation of that direction still waits on that socket. A second one
        is not started then: asyncio lets the newer wait replace the older one's, which then
        never completes; ferroloop agrees, except when the older one's wake-up is already
        queued in the same iteration (a finding of its own: test_replaced_sock_wait_runs)."""
        ops = self.worlds[0].ops
        return any(
            meta == (pid, side, direction) and not ops[oid].done()
            for oid, meta in self.directions.items()
        )

    def start(self, data, op: str, direction: str, *args) -> None:
        pid, side = self.end(data)
        if self.busy(pid, side, direction):
            return
        oid = self.new_id()
        self.each(op, oid, pid, side, *args)
        self.oids.append(oid)
        self.directions[oid] = (pid, side, direction)

    def end(self, data) -> tuple[int, int]:
        pid = data.draw(st.sampled_from(self.ready), label="pid")
        return pid, data.draw(st.integers(0, 1), label="side")

    def refresh(self) -> None:
        # A pair whose accept completed (in the first world; the second one then agrees, or
        # the traces already differ) is done with. It carries no data: when both of its
        # sockets are ready in one iteration, which one's operation runs first is the order
        # of epoll's ready list, which asyncio does not define (ferroloop keeps the finished
        # connect's registration for the next operation on the socket, asyncio registers
        # anew), and with it how much data the other one sees. Data moves on socketpairs.
        world = self.worlds[0]
        for pid in list(self.accepting):
            if world.pairs[pid][1] is not None:
                self.accepting.remove(pid)

    def each(self, *args, **kwargs) -> None:
        super().each(*args, **kwargs)
        self.refresh()

    def normalise(self, trace: list[tuple]) -> list[tuple]:
        """Operations that complete in the same iteration are compared as a multiset: their
        order is the order of the sockets in epoll's ready list, which asyncio does not
        define. (ferroloop keeps a finished wait's registration for the next one on the same
        socket, so such a socket can stay ahead of one registered since: asyncio's order
        differs then.)"""
        out: list[tuple] = []
        run: list[tuple] = []
        for ev in super().normalise(trace) + [("end",)]:
            if ev[0] == "op-done":
                run.append(ev)
                continue
            out.extend(sorted(run, key=repr))
            run = []
            if ev[0] != "end":
                out.append(ev)
        return out

    @initialize()
    def pairs(self):
        for _ in range(2):
            pid = self.new_id()
            self.each("new_pair", pid)
            self.ready.append(pid)

    @rule(data=st.data(), n=recv_sizes)
    def sock_recv(self, data, n):
        self.start(data, "sock_recv", "in", n)

    @rule(data=st.data(), n=recv_sizes)
    def sock_recv_into(self, data, n):
        self.start(data, "sock_recv_into", "in", n)

    @rule(data=st.data(), size=sizes)
    def sock_sendall(self, data, size):
        self.start(data, "sock_sendall", "out", size)

    @precondition(lambda self: self.connects < 6 and len(self.accepting) < 2)
    @rule()
    def sock_connect(self):
        self.connects += 1
        oid, pid = self.new_id(), self.new_id()
        self.each("sock_connect", oid, pid)
        self.oids.append(oid)
        self.accepting.append(pid)

    @precondition(lambda self: self.accepts < 4)
    @rule()
    def sock_accept(self):
        if self.busy(0, 0, "accept"):  # one accept at a time, as one recv (see busy())
            return
        oid = self.new_id()
        self.accepts += 1
        self.each("sock_accept", oid)
        self.oids.append(oid)
        self.directions[oid] = (0, 0, "accept")

    @precondition(lambda self: self.oids)
    @rule(data=st.data())
    def cancel(self, data):
        self.each("cancel", data.draw(st.sampled_from(self.oids), label="oid"))

    @rule(data=st.data(), size=sizes)
    def send(self, data, size):
        self.each("send", *self.end(data), size)

    @rule(data=st.data(), n=recv_sizes)
    def recv(self, data, n):
        self.each("recv", *self.end(data), n)

    @rule(data=st.data(), really=st.sampled_from([True, False, False]))
    def shutdown(self, data, really):
        if really:
            self.each("shutdown", *self.end(data))

    @rule(n=st.integers(1, 3))
    def step(self, n):
        self.each("step", n)

    @rule(n=st.integers(1, 3))
    def step_again(self, n):
        self.each("step", n)


def test_sock_calls_differential():
    run_machine(SockMachine, 2)


# ---------------------------------------------------------------- findings as regular tests


def _run_once(loop) -> None:
    loop.call_soon(loop.stop)
    loop.run_forever()


def test_replaced_sock_wait_runs(loop):
    """A sock_sendall() waiting for writability is replaced by a second sock_sendall() on the
    same socket (asyncio: the newer wait wins, the older one never completes). If the older
    wait's wake-up was already queued for the current iteration, asyncio cancels it with the
    replaced handle: none of its bytes follow the newer call's."""
    a, b = socket.socketpair()
    try:
        for s in (a, b):
            small(s)
        s1 = loop.create_task(loop.sock_sendall(a, b"1" * 20000))
        _run_once(loop)  # s1 fills the socket buffer and waits for writability
        assert len(b.recv(65536)) > 0  # the peer drains it: s1's wake-up comes next iteration
        s2 = loop.create_task(loop.sock_sendall(a, b"2" * 20000))
        r = loop.create_task(loop.sock_recv(b, 65536))
        # One iteration: s2 sends what fits and takes over the socket's write wait; r reads
        # that, making room; then comes s1's queued wake-up.
        _run_once(loop)
        assert r.done() and set(r.result()) == {ord("2")}
        with pytest.raises(BlockingIOError):
            b.recv(65536)  # asyncio: s1 was cancelled with its handle; ferroloop: 1s arrive
        for t in (s1, s2):
            t.cancel()
        _run_once(loop)
    finally:
        a.close()
        b.close()
