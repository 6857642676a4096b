"""Helpers shared by the networking tests (tests/test_net_*.py).

Plain helpers, protocol classes and a few fixtures. The fixtures are not in conftest.py, so
that they apply to the networking modules only: a module makes one visible to pytest by
importing it (``from net_support import closer_fixture  # noqa: F401``); tests then ask for
it by its pytest name (``closer``). ``collect_garbage`` and ``frozen_heap`` are autouse: every
networking module imports both. pytest does not rewrite the asserts in this module: they
carry their own message.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import shutil
import socket
import ssl
import tempfile
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

TIMEOUT = 5.0
MiB = 1024 * 1024

# pytestmark of every networking module: a hang fails the test; a leaked socket or transport,
# or an exception nobody retrieved, is an error.
NET_MARKS = [
    pytest.mark.timeout(10),
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

T = TypeVar("T")


def run(loop: asyncio.AbstractEventLoop, coro, timeout: float = TIMEOUT):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


async def settle(rounds: int = 5) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


async def in_thread(func, *args):
    return await asyncio.get_running_loop().run_in_executor(None, func, *args)


def named_cases(table) -> list:
    """For parametrize: pytest.param(*rest, id=name) for each (name, *rest) row of table."""
    return [pytest.param(*case[1:], id=case[0]) for case in table]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def frozen_heap() -> Iterator[None]:
    # Objects from before the module are moved out of the collector's sight so that the
    # per-test gc.collect() of collect_garbage stays cheap. Garbage left by other modules is
    # collected first, silently: it is not this module's leak.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(autouse=True)
def collect_garbage() -> Iterator[None]:
    # Torn down after the loop fixture: unclosed sockets/transports surface here as errors.
    yield
    gc.collect()


class Closer:
    """Closes sockets, transports, stream writers and servers at the end of a test."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: list = []

    def __call__(self, obj):
        self.items.append(obj)
        return obj

    def close_all(self) -> None:
        for obj in reversed(self.items):
            if isinstance(obj, socket.socket):
                obj.close()
            elif isinstance(obj, asyncio.StreamWriter):
                tr = obj.transport
                if not tr.is_closing() or tr.get_write_buffer_size():
                    tr.abort()
            elif hasattr(obj, "abort"):
                # Not after a completed flush-on-close: asyncio's abort() would then fail.
                if not obj.is_closing() or obj.get_write_buffer_size():
                    obj.abort()
            elif hasattr(obj, "close"):
                obj.close()
        if not self.loop.is_closed() and not self.loop.is_running():
            self.loop.run_until_complete(settle())


@pytest.fixture(name="closer")
def closer_fixture(loop) -> Iterator[Closer]:
    """Closes what the test registers with it, whatever happened."""
    c = Closer(loop)
    yield c
    c.close_all()


@contextlib.contextmanager
def short_tmpdir() -> Iterator[str]:
    # AF_UNIX paths are limited to ~108 bytes: keep them short.
    d = tempfile.mkdtemp(prefix="fl")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(name="tmpdir_short")
def tmpdir_short_fixture() -> Iterator[str]:
    with short_tmpdir() as d:
        yield d


KINDS = ["tcp", "unix"]


@pytest.fixture(name="kind", params=KINDS)
def kind_fixture(request) -> str:
    return request.param


@pytest.fixture(name="handler_calls")
def handler_calls_fixture(loop) -> list[dict]:
    """Every context passed to the loop's exception handler."""
    calls: list[dict] = []
    loop.set_exception_handler(lambda lp, ctx: calls.append(ctx))
    return calls


# ---------------------------------------------------------------- sockets


def _has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback on this host")


def listener(
    closer: Closer, host: str = "127.0.0.1", family=socket.AF_INET, *, small_rcvbuf: bool = False
) -> socket.socket:
    """A blocking listening TCP socket; accept() gives up after TIMEOUT."""
    lsock = closer(socket.socket(family, socket.SOCK_STREAM))
    if small_rcvbuf:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lsock.bind((host, 0))
    lsock.listen(16)
    lsock.settimeout(TIMEOUT)
    return lsock


def accept(closer: Closer, lsock: socket.socket) -> socket.socket:
    conn, _ = lsock.accept()
    closer(conn)
    conn.settimeout(TIMEOUT)
    return conn


def blocking_client(closer: Closer, addr) -> socket.socket:
    """A plain blocking client; connecting to a listening socket never waits for the loop."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = closer(socket.socket(family, socket.SOCK_STREAM))
    sock.settimeout(TIMEOUT)
    sock.connect(addr)
    return sock


def refused_addr(register: Callable[[socket.socket], socket.socket]) -> tuple[str, int]:
    """A TCP address where connecting is refused; ``register`` closes its socket later."""
    # Bound but not listening: the port stays reserved and connecting to it is refused.
    sock = register(socket.socket())
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()


def socket_pair(
    register: Callable[[socket.socket], socket.socket],
) -> tuple[socket.socket, socket.socket]:
    """A connected socket.socketpair(), both ends registered to be closed."""
    a, b = socket.socketpair()
    register(a)
    register(b)
    return a, b


def ssl_socket(register: Callable[[T], T]) -> ssl.SSLSocket:
    """An SSLSocket (never connected), registered to be closed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return register(
        ctx.wrap_socket(socket.socket(), server_hostname="example", do_handshake_on_connect=False)
    )


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """n bytes from a blocking socket (fewer at EOF)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), MiB))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


# ---------------------------------------------------------------- protocols


class Waitable:
    """Coroutines wait for a condition on the state that callbacks record (and _wake() for)."""

    loop: asyncio.AbstractEventLoop
    _waiters: list[asyncio.Future]

    def _wake(self) -> None:
        for w in self._waiters:
            if not w.done():
                w.set_result(None)
        self._waiters.clear()

    async def wait_until(self, predicate) -> None:
        while not predicate():
            w = self.loop.create_future()
            self._waiters.append(w)
            await w


class Recorder(Waitable, asyncio.Protocol):
    """Records every callback; coroutines can wait for a condition on the recorded state."""

    def __init__(self, loop, *, eof_result=None) -> None:
        self.loop = loop
        self.eof_result = eof_result
        self.transport = None
        self.events: list[str] = []
        self.data = bytearray()
        self.chunk_types: set[type] = set()
        self.made = loop.create_future()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self.paused_sizes: list[int] = []
        self.resumed_sizes: list[int] = []
        self._waiters: list[asyncio.Future] = []

    async def wait_for_bytes(self, n: int) -> bytes:
        await self.wait_until(lambda: len(self.data) >= n or self.lost.done())
        assert len(self.data) >= n, (len(self.data), n, self.events)
        return bytes(self.data)

    # made and eof are set without a done() check: a second call is an error in the callback.

    def connection_made(self, transport) -> None:
        self.events.append("made")
        self.transport = transport
        self.made.set_result(transport)
        self._wake()

    def data_received(self, data) -> None:
        self.events.append("data")
        self.chunk_types.add(type(data))
        self.data += data
        self._wake()

    def eof_received(self):
        self.events.append("eof")
        self.eof.set_result(None)
        self._wake()
        return self.eof_result

    def connection_lost(self, exc) -> None:
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)
        self._wake()

    def pause_writing(self) -> None:
        self.events.append("pause_writing")
        self.paused_sizes.append(self.transport.get_write_buffer_size())
        self._wake()

    def resume_writing(self) -> None:
        self.events.append("resume_writing")
        self.resumed_sizes.append(self.transport.get_write_buffer_size())
        self._wake()


class ServerSide:
    """A protocol factory that remembers every protocol it built (one per connection)."""

    def __init__(self, loop) -> None:
        self.loop = loop
        self.protocols: list[Recorder] = []
        self._new = asyncio.Queue()

    def __call__(self) -> Recorder:
        proto = Recorder(self.loop)
        self.protocols.append(proto)
        self._new.put_nowait(proto)
        return proto

    async def next_connection(self) -> Recorder:
        proto = await self._new.get()
        await proto.made
        return proto
