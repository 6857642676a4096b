"""Python faces of ferroloop's native transports.

``SocketTransport`` is an ``asyncio.Transport`` (``isinstance`` holds, unlike on uvloop and
rloop) whose hot methods are the native core's (``ferroloop._ferroloop.StreamTransport``):
they are bound onto each instance, so ``transport.write(data)`` calls Rust directly. This
class keeps what runs once per connection: the socket object, extra info, server
bookkeeping, error reporting and ``connection_lost``.

``DatagramTransport`` is the same arrangement for UDP and Unix datagram sockets over
``ferroloop._ferroloop.DatagramTransport``: an ``asyncio.DatagramTransport`` and, like
asyncio's own datagram transport, an ``asyncio.Transport``.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import warnings
from asyncio import base_events, constants, futures, protocols, transports, trsock
from collections.abc import Callable
from typing import Any

from . import _ferroloop, _tls
from ._ferroloop import DatagramTransport as _DatagramCore
from ._ferroloop import StreamTransport


class _Extra(dict):
    """A transport's extra info (asyncio's ``_extra`` dict) whose ``'socket'`` entry, the
    ``TransportSocket`` wrapper, is made on first use: most servers never ask for it, and one
    per connection is about 80 bytes of a server's memory for each idle client. Reading it
    any way (``get_extra_info('socket')``, ``_extra['socket']``, ``_extra.get('socket')``)
    gives the same object every time."""

    __slots__ = ("_sock",)

    def __init__(self, extra: dict[str, Any] | None, sock: socket.socket) -> None:
        super().__init__(extra or ())
        self._sock = sock

    def __missing__(self, key: str) -> Any:
        if key == "socket" and self._sock is not None:
            value = self[key] = trsock.TransportSocket(self._sock)
            self._sock = None
            return value
        raise KeyError(key)

    # get(key, default=None): native, installed below by _install_face_methods.

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key) or (key == "socket" and self._sock is not None)


# asyncio.Server tracks its transports from Python 3.13 on (_attach/_detach take the
# transport); before, it only counts them.
def _server_hook_args(transport: Any) -> tuple[Any, ...]:
    return (transport,) if sys.version_info >= (3, 13) else ()


def _logger() -> Any:
    return base_events.logger


_INET_FAMILIES = frozenset({socket.AF_INET, socket.AF_INET6})


def _set_nodelay(sock: socket.socket) -> None:
    """TCP_NODELAY on every TCP stream socket that becomes a transport, whatever its ``proto``.

    asyncio sets it only when ``sock.proto == IPPROTO_TCP``; a socket made as
    ``socket.socket()`` (proto 0, as uvicorn's and gunicorn's masters create the listening
    socket they hand to workers) then answers every small response after the peer's delayed
    ACK (about 40 ms). uvloop sets it on every TCP socket; so does ferroloop (a deliberate
    difference, see the README).
    """
    if sock.family in _INET_FAMILIES and sock.type == socket.SOCK_STREAM:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class _NativeFace:
    """What both transport faces share: the native core's state seen as asyncio's private
    attributes, the cold paths the core calls by name, and the introspection.

    Subclasses set ``_core``, ``_sock``, ``_sock_fd``, ``_loop`` and ``_protocol_connected``.
    """

    _core: Any
    _sock: socket.socket | None
    _sock_fd: int
    _loop: Any
    _protocol_connected: bool

    # -- the core's methods ------------------------------------------------------------------
    # The ones called per message (write, writelines, is_closing, sendto) are native method
    # descriptors installed on the classes at the end of this module (src/transports/face.rs):
    # no Python frame, and nothing per connection. These run once per connection or so.

    def close(self) -> None:
        self._core.close()

    def abort(self) -> None:
        self._core.abort()

    def is_reading(self) -> bool:
        return self._core.is_reading()

    def pause_reading(self) -> None:
        self._core.pause_reading()

    def resume_reading(self) -> None:
        self._core.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self._core.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._core.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: Any = None, low: Any = None) -> None:
        self._core.set_write_buffer_limits(high, low)

    def get_protocol(self) -> Any:
        return self._core.get_protocol()

    def _force_close(self, exc: BaseException | None) -> None:
        self._core._force_close(exc)

    def _announce(
        self, loop: Any, protocol: Any, waiter: asyncio.Future | None, context: Any = None
    ) -> None:
        """connection_made, then reading, then the waiter, each in a later callback (in the
        transport's context, if it has one: Python 3.15+)."""
        loop.call_soon(protocol.connection_made, self, context=context)
        # Reading starts once connection_made() has run (it may pause reading).
        loop.call_soon(self._core._start_reading, context=context)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None, context=context)

    @property
    def _protocol(self) -> Any:
        return self._core.get_protocol()

    @property
    def _closing(self) -> bool:
        return self._core._closing

    @property
    def _conn_lost(self) -> int:
        return self._core._conn_lost

    @property
    def _paused(self) -> bool:
        return self._core._paused

    @property
    def _protocol_paused(self) -> bool:
        return self._core._protocol_paused

    # -- cold paths called by the native core --------------------------------------------

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        if isinstance(exc, OSError):
            if self._loop is not None and self._loop.get_debug():
                _logger().debug("%r: %s", self, message, exc_info=True)
        elif self._loop is not None:
            self._loop.call_exception_handler(
                {
                    "message": message,
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )
        self._core._force_close(exc)

    def _report_protocol_error(self, message: str, exc: BaseException) -> None:
        self._loop.call_exception_handler(
            {"message": message, "exception": exc, "transport": self, "protocol": self._protocol}
        )

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        protocol = self._core.get_protocol()
        try:
            if self._protocol_connected and protocol is not None:
                protocol.connection_lost(exc)
        finally:
            sock = self._sock
            self._core._detach()
            if sock is not None:
                sock.close()
            self._sock = None
            self._loop = None
            self._after_connection_lost()

    def _after_connection_lost(self) -> None:
        """Hook for per-kind cleanup once the connection is gone."""

    # -- introspection ---------------------------------------------------------------------

    def _polling_shown(self) -> bool:
        return self._sock is not None

    def __repr__(self) -> str:
        info = [type(self).__name__]
        if self._sock is None:
            info.append("closed")
        elif self._core.is_closing():
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if self._polling_shown():
            reading, writing = self._core._polling()
            info.append("read=polling" if reading else "read=idle")
            bufsize = self._core.get_write_buffer_size()
            state = "polling" if writing else "idle"
            info.append(f"write=<{state}, bufsize={bufsize}>")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn: Callable[..., Any] = warnings.warn) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            sock.close()


class SocketTransport(_NativeFace, transports._FlowControlMixin):
    """A TCP or Unix stream socket transport.

    It derives from asyncio's flow-control base (as asyncio's own socket transport does, and
    as ``loop.sendfile``'s fallback requires); the flow control itself is native.
    """

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE
    max_size = 256 * 1024

    def __init__(
        self,
        loop: Any,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future | None = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
        context: Any = None,
    ) -> None:
        # Not _FlowControlMixin.__init__: its limits and counters live in the native core.
        self._extra = _Extra(extra, sock)
        try:
            self._extra["sockname"] = sock.getsockname()
        except OSError:
            self._extra["sockname"] = None
        if "peername" not in self._extra:
            try:
                self._extra["peername"] = sock.getpeername()
            except OSError:
                self._extra["peername"] = None
        self._sock: socket.socket | None = sock
        self._sock_fd = sock.fileno()
        self._loop = loop
        self._server = server
        self._protocol_connected = False
        # context (Python 3.15+): every protocol callback runs in it, as in asyncio.
        self._core = StreamTransport(loop, self._sock_fd, self, context)
        self.set_protocol(protocol)
        if server is not None:
            server._attach(*_server_hook_args(self))
        loop._transports[self._sock_fd] = self
        _set_nodelay(sock)
        self._announce(loop, protocol, waiter, context)

    # -- the core's methods that are not bound per instance ----------------------------------

    def write_eof(self) -> None:
        self._core.write_eof()

    def can_write_eof(self) -> bool:
        return self._core.can_write_eof()

    def _make_empty_waiter(self) -> asyncio.Future:
        return self._core._make_empty_waiter()

    def _reset_empty_waiter(self) -> None:
        self._core._reset_empty_waiter()

    # -- protocol ------------------------------------------------------------------------

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._core._set_protocol(
            protocol,
            isinstance(protocol, protocols.BufferedProtocol),
            # ferroloop's TLS protocol exactly (a subclass may override what the native record
            # path would bypass): received bytes go to its native side directly.
            type(protocol) is _tls.SSLProtocol,
        )
        self._protocol_connected = True

    @property
    def _eof(self) -> bool:
        return self._core._eof

    def _after_connection_lost(self) -> None:
        server = self._server
        if server is not None:
            server._detach(*_server_hook_args(self))
            self._server = None


# asyncio 3.13 sends empty datagrams (earlier versions drop them) and counts a header of 8
# bytes per queued datagram in the write buffer size.
_SEND_EMPTY_DATAGRAMS = sys.version_info >= (3, 13)
_DATAGRAM_HEADER_SIZE = 8 if _SEND_EMPTY_DATAGRAMS else 0


class DatagramTransport(_NativeFace, transports._FlowControlMixin, asyncio.DatagramTransport):
    """A UDP or Unix datagram socket transport (asyncio's ``_SelectorDatagramTransport``).

    ``sendto`` and the receive path are native. A socket with a peer (``remote_addr``, or a
    connected ``sock=``) sends with ``send()``, whatever its ``peername`` looks like: an
    unnamed Unix peer (``socketpair``) has ``peername == ''``, on which asyncio would call
    ``sendto(data, None)`` and fail.
    """

    max_size = 256 * 1024
    # asyncio's transports all have it (datagram ones never belong to a server).
    _server = None

    def __init__(
        self,
        loop: Any,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        address: Any = None,
        waiter: asyncio.Future | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        # Not _FlowControlMixin.__init__: its limits and counters live in the native core.
        self._extra = _Extra(extra, sock)
        try:
            self._extra["sockname"] = sock.getsockname()
        except OSError:
            self._extra["sockname"] = None
        try:
            peername = sock.getpeername()
            connected = True
        except OSError:
            peername = None
            connected = False
        if "peername" not in self._extra:
            self._extra["peername"] = peername
        self._sock: socket.socket | None = sock
        self._sock_fd = sock.fileno()
        self._loop = loop
        self._address = address
        self._protocol_connected = False
        core = _DatagramCore(
            loop,
            self._sock_fd,
            int(sock.family),
            sock,
            self,
            address if address else None,
            connected,
            _SEND_EMPTY_DATAGRAMS,
            _DATAGRAM_HEADER_SIZE,
        )
        self._core = core
        self.set_protocol(protocol)
        loop._transports[self._sock_fd] = self
        self._announce(loop, protocol, waiter)

    # -- protocol ------------------------------------------------------------------------

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._core._set_protocol(protocol)
        self._protocol_connected = True

    # -- cold paths called by the native core --------------------------------------------

    def _report_callback_error(self, step: str, exc: BaseException) -> None:
        # What asyncio's loop reports when its _read_ready/_sendto_ready callback raises
        # (e.g. an exception from protocol.datagram_received or error_received).
        self._loop.call_exception_handler(
            {
                "message": f"Exception in callback {type(self).__name__}.{step}()",
                "exception": exc,
                "transport": self,
                "protocol": self._protocol,
            }
        )

    def _polling_shown(self) -> bool:
        return self._loop is not None and not self._loop.is_closed()


# write / writelines / is_closing and sendto / is_closing: native methods on the classes, and
# _Extra.get (what asyncio's BaseTransport.get_extra_info, inherited as on asyncio's
# transports, calls).
_ferroloop._install_face_methods(SocketTransport, DatagramTransport, _Extra)
