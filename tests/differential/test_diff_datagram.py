"""Datagram transports on UDP loopback, connected (remote_addr) or not: sendto (empty,
small, the largest and too large datagrams; to the peer, to a closed port), datagrams from
the peer and from a stranger, pause/resume_reading, close, abort, write buffer limits; the
peer closing (ICMP port unreachable on a connected endpoint). Compared: connection_made,
datagram_received (data, and who sent it), error_received, connection_lost, every method's
answer and what the peer receives."""

from __future__ import annotations

import asyncio
import socket

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import initialize, precondition, rule

from . import MACHINE_MARKS, DiffMachine, World, describe_exc, pattern, run_machine

pytestmark = MACHINE_MARKS

MAX_UDP = 65507  # the largest UDP payload over IPv4


class DProto(asyncio.DatagramProtocol):
    def __init__(self, world: DatagramWorld, eid: int) -> None:
        self.world = world
        self.eid = eid
        self.transport = None
        self.lost = False

    def rec(self, *event) -> None:
        self.world.record(event[0], self.eid, *event[1:])

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.rec("made")

    def datagram_received(self, data, addr) -> None:
        self.rec("datagram", bytes(data), self.world.who(self.eid, addr))

    def error_received(self, exc) -> None:
        self.rec("error", describe_exc(exc))

    def connection_lost(self, exc) -> None:
        self.lost = True
        self.rec("lost", describe_exc(exc))

    def pause_writing(self) -> None:
        self.rec("pause_writing", self.transport.get_write_buffer_size())

    def resume_writing(self) -> None:
        self.rec("resume_writing", self.transport.get_write_buffer_size())


class Endpoint:
    def __init__(self, transport, proto, peer, stranger, connected) -> None:
        self.transport = transport
        self.proto = proto
        self.peer = peer
        self.stranger = stranger
        self.connected = connected
        self.aborted = False


def _unused_port_outside_ephemeral_range() -> int:
    """A free UDP port below the kernel's ephemeral range. A port bound and closed is handed
    out again by the next bind to port 0: a world's peer or endpoint then sat on its "closed"
    address, and a datagram meant to be refused reached it (a CI failure on 3.14: the
    connected endpoint's sendto to "closed" went through instead of raising ValueError)."""
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    for port in range(low - 1, max(1024, low - 2000), -1):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        return port
    raise RuntimeError("no free UDP port below the ephemeral range")


class DatagramWorld(World):
    network = True  # loopback TCP/UDP: settle before each iteration

    def __init__(self, kind: str, debug: bool = False) -> None:
        super().__init__(kind, debug)
        self.eps: dict[int, Endpoint] = {}
        self.writes = 0
        # A port where nobody listens: sending there is refused.
        self.closed_addr = ("127.0.0.1", _unused_port_outside_ephemeral_range())

    def udp(self) -> socket.socket:
        s = self.sock(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        return s

    def who(self, eid: int, addr) -> str:
        ep = self.eps.get(eid)
        if ep is not None:
            for name, s in (("peer", ep.peer), ("stranger", ep.stranger)):
                if s.fileno() >= 0 and addr == s.getsockname():
                    return name
        return f"other {type(addr).__name__}"

    def open(self, eid: int, connected: bool) -> None:
        peer, stranger = self.udp(), self.udp()
        proto = DProto(self, eid)
        self.eps[eid] = Endpoint(None, proto, peer, stranger, connected)
        kwargs = {"remote_addr": peer.getsockname()} if connected else {}
        task = self.loop.create_task(
            self.loop.create_datagram_endpoint(lambda: proto, local_addr=("127.0.0.1", 0), **kwargs)
        )
        assert self.run_until(task.done), "create_datagram_endpoint did not finish"
        self.eps[eid].transport = task.result()[0]

    # ------------------------------------------------------------ transport side

    def sendto(self, eid: int, size: int, to: str):
        ep = self.eps[eid]
        tr = ep.transport
        if tr.is_closing() and not ep.connected:
            # asyncio still sends on an unconnected transport between close() and
            # connection_lost(), ferroloop drops the datagram (README, deliberate differences).
            return "closing"
        self.writes += 1
        addr = {
            "peer": ep.peer.getsockname(),
            "closed": self.closed_addr,
            "none": None,
        }[to]
        tr.sendto(pattern(self.writes, size), addr)
        return self.buffer_size(eid)

    def buffer_size(self, eid: int):
        ep = self.eps[eid]
        # After abort() asyncio keeps counting the dropped datagrams, ferroloop says 0
        # (README, deliberate differences).
        return "aborted" if ep.aborted else ep.transport.get_write_buffer_size()

    def pause_reading(self, eid: int) -> bool:
        tr = self.eps[eid].transport
        tr.pause_reading()
        return tr.is_reading()

    def resume_reading(self, eid: int) -> bool:
        tr = self.eps[eid].transport
        tr.resume_reading()
        return tr.is_reading()

    def close(self, eid: int) -> bool:
        tr = self.eps[eid].transport
        tr.close()
        return tr.is_closing()

    def abort(self, eid: int) -> bool:
        ep = self.eps[eid]
        ep.aborted = True
        ep.transport.abort()
        return ep.transport.is_closing()

    def set_limits(self, eid: int, high: int | None, low: int | None) -> tuple:
        tr = self.eps[eid].transport
        tr.set_write_buffer_limits(high, low)
        return tr.get_write_buffer_limits()

    def state(self, eid: int) -> tuple:
        tr = self.eps[eid].transport
        return (tr.is_closing(), self.buffer_size(eid))

    # ------------------------------------------------------------ peer side

    def peer_send(self, eid: int, size: int, sender: str):
        ep = self.eps[eid]
        s = ep.peer if sender == "peer" else ep.stranger
        self.writes += 1
        try:
            return s.sendto(pattern(self.writes, size), ep.transport.get_extra_info("sockname"))
        except OSError as exc:
            return describe_exc(exc)

    def peer_recv(self, eid: int):
        try:
            data, addr = self.eps[eid].peer.recvfrom(1 << 17)
        except OSError as exc:
            return describe_exc(exc)
        return (
            data,
            "endpoint" if addr == self.eps[eid].transport.get_extra_info("sockname") else "?",
        )

    def peer_close(self, eid: int) -> None:
        self.eps[eid].peer.close()

    def step(self, n: int) -> None:
        for _ in range(n):
            self.run_once()

    def before_close(self) -> None:
        for ep in self.eps.values():
            if not ep.transport.is_closing():
                ep.transport.abort()


sizes = st.sampled_from([0, 1, 100, 5000, MAX_UDP, MAX_UDP + 1])
limits = st.none() | st.sampled_from([0, 1, 100, 70000])


class DatagramMachine(DiffMachine):
    world_class = DatagramWorld

    def __init__(self) -> None:
        super().__init__()
        self.eids: list[int] = []
        self.peer_closed: set[int] = set()

    def eid(self, data) -> int:
        return data.draw(st.sampled_from(self.eids), label="eid")

    def open_peer(self, data) -> int:
        return data.draw(
            st.sampled_from([e for e in self.eids if e not in self.peer_closed]), label="eid"
        )

    @initialize(connected=st.booleans())
    def first_endpoint(self, connected):
        self.open(connected)

    @precondition(lambda self: len(self.eids) < 3)
    @rule(connected=st.booleans())
    def open(self, connected):
        eid = self.new_id()
        self.each("open", eid, connected)
        self.eids.append(eid)

    @rule(data=st.data(), size=sizes, to=st.sampled_from(["peer", "peer", "closed", "none"]))
    def sendto(self, data, size, to):
        self.each("sendto", self.eid(data), size, to)

    @rule(data=st.data(), how=st.sampled_from(["pause_reading", "resume_reading"]))
    def pause_or_resume_reading(self, data, how):
        self.each(how, self.eid(data))

    @rule(data=st.data(), how=st.sampled_from(["close", "abort", "-", "-", "-"]))
    def close_or_abort(self, data, how):
        if how != "-":
            self.each(how, self.eid(data))

    @rule(data=st.data(), high=limits, low=limits)
    def set_write_buffer_limits(self, data, high, low):
        self.each("set_limits", self.eid(data), high, low)

    @rule(data=st.data())
    def state(self, data):
        self.each("state", self.eid(data))

    @precondition(lambda self: set(self.eids) - self.peer_closed)
    @rule(data=st.data(), size=sizes, sender=st.sampled_from(["peer", "peer", "stranger"]))
    def peer_send(self, data, size, sender):
        self.each("peer_send", self.open_peer(data), size, sender)

    @precondition(lambda self: set(self.eids) - self.peer_closed)
    @rule(data=st.data())
    def peer_recv(self, data):
        self.each("peer_recv", self.open_peer(data))

    @precondition(lambda self: set(self.eids) - self.peer_closed)
    @rule(data=st.data(), really=st.sampled_from([True, False, False]))
    def peer_close(self, data, really):
        if really:
            eid = self.open_peer(data)
            self.peer_closed.add(eid)
            self.each("peer_close", eid)

    @rule(n=st.integers(1, 3))
    def step(self, n):
        self.each("step", n)

    @rule(n=st.integers(1, 3))
    def step_again(self, n):
        self.each("step", n)


def test_datagram_transports_differential():
    run_machine(DatagramMachine, 2)


# ---------------------------------------------------------------- findings as regular tests


def test_closed_connected_sendto_checks_address(loop):
    """sendto() on a connected datagram transport checks the address before anything else,
    closed or not: a datagram for another address is a ValueError."""
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        peer.bind(("127.0.0.1", 0))
        tr, _ = loop.run_until_complete(
            loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=peer.getsockname())
        )
        with pytest.raises(ValueError, match="Invalid address"):
            tr.sendto(b"x", ("127.0.0.2", 9))  # open: refused on both loops
        tr.close()
        loop.run_until_complete(asyncio.sleep(0))
        with pytest.raises(ValueError, match="Invalid address"):
            tr.sendto(b"x", ("127.0.0.2", 9))
    finally:
        peer.close()
