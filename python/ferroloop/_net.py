"""Networking, pipes and subprocess setup paths for ``ferroloop.Loop``.

What runs once per connection, server, pipe or child process (address resolution, happy
eyeballs, server sockets, accepting, subprocess spawning, TLS wrapping) is asyncio's own code
from the running Python's standard library, bound to the ferroloop loop: those functions only
reach the loop through a small set of hooks (``_add_reader``/``_remove_reader``,
``_make_socket_transport``, ``_transports``...), which ferroloop provides natively. Using the
reference implementation itself for these cold paths keeps every argument check, error message
and corner case identical to asyncio's.

What runs per byte (transports' read and write paths) and per event (the reactor) is
ferroloop's own, in Rust.

Address resolution is ferroloop's own: numeric hosts are answered inline (no thread hop) and
names are resolved on a small dedicated thread pool, never on the user's default executor.
"""

from __future__ import annotations

import concurrent.futures
import functools
import ipaddress
import os
import socket
import threading
import types
from asyncio import (
    base_events,
    constants,
    futures,
    selector_events,
    sslproto,
    unix_events,
)
from typing import Any

from . import _tls

_BASE = base_events.BaseEventLoop
_SELECTOR = selector_events.BaseSelectorEventLoop
_UNIX = unix_events._UnixSelectorEventLoop
# A plain socket cannot be an ssl.SSLSocket (a subclass): no need for asyncio's check.
_PLAIN_SOCKET = socket.socket

# The standard library functions ferroloop's loop reuses as methods, by class they come from.
# None of them uses zero-argument super(), so they bind to any class (checked by the tests).
BORROWED: dict[type, tuple[str, ...]] = {
    _BASE: (
        "create_connection",
        "_connect_sock",
        "_create_connection_transport",
        "_ensure_resolved",
        "_create_server_getaddrinfo",
        "create_server",
        "connect_accepted_socket",
        "create_datagram_endpoint",
        "start_tls",
        "sendfile",
        "_sendfile_fallback",
        "_check_sendfile_params",
        "sock_sendfile",
        "_sock_sendfile_fallback",
        "connect_read_pipe",
        "connect_write_pipe",
        "subprocess_exec",
        "subprocess_shell",
        "_log_subprocess",
    ),
    _SELECTOR: (
        "_ensure_fd_no_transport",
        "_sendfile_native",
        "_accept_connection",
        "_start_serving",
        "sock_recvfrom",
        "_sock_recvfrom",
        "sock_recvfrom_into",
        "_sock_recvfrom_into",
        "sock_sendto",
        "_sock_sendto",
        "sock_connect",
        "sock_accept",
        "_sock_read_done",
        "_sock_write_done",
    ),
    _UNIX: (
        "create_unix_connection",
        "create_unix_server",
        "_make_read_pipe_transport",
        "_make_write_pipe_transport",
        "_sock_sendfile_native",
        "_sock_sendfile_native_impl",
        "_sock_sendfile_update_filepos",
        "_sock_add_cancellation_callback",
    ),
}


class _SSLProtoWithOurProtocol:
    """``asyncio.sslproto`` as ``start_tls`` sees it: every name is asyncio's, except that
    ``SSLProtocol`` is ferroloop's (its record path in Rust, ``_tls.py``)."""

    SSLProtocol = _tls.SSLProtocol

    def __getattr__(self, name: str) -> Any:
        return getattr(sslproto, name)


def _with_our_ssl_protocol(func: Any) -> Any:
    """asyncio's function (its code object, unchanged) reading ``sslproto`` from a copy of
    its module's globals in which that name is the shim above."""
    namespace = dict(func.__globals__)
    namespace["sslproto"] = _SSLProtoWithOurProtocol()
    clone = types.FunctionType(
        func.__code__, namespace, func.__name__, func.__defaults__, func.__closure__
    )
    clone.__kwdefaults__ = func.__kwdefaults__
    clone.__qualname__ = func.__qualname__
    clone.__doc__ = func.__doc__
    return clone


# Borrowed functions that construct asyncio's SSLProtocol: ferroloop's is used instead.
_WITH_OUR_SSL_PROTOCOL = frozenset({"start_tls"})


def _borrow(namespace: dict[str, Any]) -> None:
    for cls, names in BORROWED.items():
        for name in names:
            func = cls.__dict__.get(name)
            if func is not None:  # some helpers do not exist on every Python version
                if name in _WITH_OUR_SSL_PROTOCOL:
                    func = _with_our_ssl_protocol(func)
                namespace[name] = func


_resolver_lock = threading.Lock()
_resolver: concurrent.futures.ThreadPoolExecutor | None = None


def _resolver_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The process-wide pool that resolves host names (never the user's default executor)."""
    global _resolver
    with _resolver_lock:
        if _resolver is None:
            _resolver = concurrent.futures.ThreadPoolExecutor(
                max_workers=4, thread_name_prefix="ferroloop-dns"
            )
        return _resolver


def _forget_resolver_after_fork() -> None:
    """In a forked child the pool's threads do not exist (only the forking thread survives)
    and its lock may have been held by one of them at the moment of the fork: the child
    starts over with a fresh lock and, on its first lookup, a fresh pool."""
    global _resolver, _resolver_lock
    _resolver_lock = threading.Lock()
    _resolver = None


os.register_at_fork(after_in_child=_forget_resolver_after_fork)


def _is_numeric_host(host: Any) -> bool:
    if host is None:
        return True  # the wildcard/loopback address: answered without a lookup
    if isinstance(host, bytes):
        try:
            host = host.decode("idna")
        except UnicodeError:
            return False
    if not isinstance(host, str):
        return False
    if "%" in host:  # scoped IPv6 literal (fe80::1%eth0): resolving the scope needs the OS
        host = host.split("%", 1)[0]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_numeric_port(port: Any) -> bool:
    if port is None or isinstance(port, int):
        return True
    if isinstance(port, (str, bytes)):
        try:
            int(port)
        except ValueError:
            return False
        return True
    return False


class NetworkingMixin:
    """Mixed into ``ferroloop.Loop``: the borrowed setup paths and ferroloop's resolver."""

    _borrow(locals())

    # sock_recv, sock_recv_into and sock_sendall: asyncio's checks and first attempt, then
    # the loop's native waiter (no callback handle, no epoll_ctl per message; sockops.rs).

    async def sock_recv(self, sock: socket.socket, n: int) -> bytes:
        loop: Any = self
        data = loop._sock_recv_now(sock, n)  # asyncio's checks, then one try
        if data is not None:
            return data
        fd = sock.fileno()
        loop._ensure_fd_no_transport(fd)
        return await loop._sock_recv_wait(sock, fd, n)

    async def sock_recv_into(self, sock: socket.socket, buf: Any) -> int:
        loop: Any = self
        if type(sock) is not _PLAIN_SOCKET:
            base_events._check_ssl_socket(sock)
        if loop._debug and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        try:
            return sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            pass
        fd = sock.fileno()
        loop._ensure_fd_no_transport(fd)
        return await loop._sock_recv_into_wait(sock, fd, buf, 0)

    async def sock_sendall(self, sock: socket.socket, data: Any) -> None:
        loop: Any = self
        n = loop._sock_send_now(sock, data)  # asyncio's checks, then one try
        if n is None:
            return
        # Offsets count bytes: bytes objects already do, other buffers are cast.
        view = data if type(data) is bytes else memoryview(data).cast("B")
        fd = sock.fileno()
        loop._ensure_fd_no_transport(fd)
        await loop._sock_sendall_wait(sock, fd, view, n)

    async def _accept_connection2(
        self,
        protocol_factory: Any,
        conn: socket.socket,
        extra: dict[str, Any],
        sslcontext: Any = None,
        server: Any = None,
        ssl_handshake_timeout: float | None = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float | None = constants.SSL_SHUTDOWN_TIMEOUT,
        context: Any = None,
    ) -> None:
        """Builds the protocol and transport of an accepted connection (asyncio's
        ``_accept_connection2``), with two differences when building them fails (the
        protocol factory or the transport raises): the accepted socket is closed at once
        (asyncio leaves it to the garbage collector), and the failure reaches the exception
        handler in every mode (asyncio: in debug mode only; a connection dropped without a
        word is hard to diagnose). What happens once the transport exists (a TLS handshake
        failing, a peer resetting, the server closing) is reported in debug mode only, as
        in asyncio: those are routine on a public server."""
        loop: Any = self
        protocol = None
        transport = None
        built = False
        try:
            protocol = protocol_factory()
            waiter = loop.create_future()
            if sslcontext:
                transport = loop._make_ssl_transport(
                    conn,
                    protocol,
                    sslcontext,
                    waiter=waiter,
                    server_side=True,
                    extra=extra,
                    server=server,
                    ssl_handshake_timeout=ssl_handshake_timeout,
                    ssl_shutdown_timeout=ssl_shutdown_timeout,
                    context=context,
                )
            else:
                transport = loop._make_socket_transport(
                    conn, protocol, waiter=waiter, extra=extra, server=server, context=context
                )
            built = True
            try:
                await waiter
            except BaseException:
                transport.close()
                raise
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if transport is None:
                conn.close()
            if loop._debug or not built:
                context: dict[str, Any] = {
                    "message": "Error on transport creation for incoming connection",
                    "exception": exc,
                }
                if protocol is not None:
                    context["protocol"] = protocol
                if transport is not None:
                    context["transport"] = transport
                loop.call_exception_handler(context)

    # sock_connect and sock_accept are asyncio's; their waiting halves are the loop's native
    # waiter (as for sock_recv), which also fails the operation with EBADF if the socket is
    # closed while it waits (sockops.rs) instead of waiting for ever.

    def _sock_connect(self, fut: Any, sock: socket.socket, address: Any) -> None:
        loop: Any = self
        fd = sock.fileno()
        try:
            sock.connect(address)
        except (BlockingIOError, InterruptedError):
            # The connection goes on in the background: its outcome is known once the
            # socket is writable.
            loop._ensure_fd_no_transport(fd)
            loop._sock_connect_wait(fut, sock, fd, address)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(None)
        finally:
            fut = None

    def _sock_accept(self, fut: Any, sock: socket.socket) -> None:
        loop: Any = self
        fd = sock.fileno()
        try:
            conn, address = sock.accept()
            conn.setblocking(False)
        except (BlockingIOError, InterruptedError):
            loop._ensure_fd_no_transport(fd)
            loop._sock_accept_wait(fut, sock, fd)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result((conn, address))

    def _stop_serving(self, sock: socket.socket) -> None:
        """Stop accepting on a server socket and close it; a Unix server socket that
        ``create_unix_server`` bound (Python 3.13+ records them) also loses its file, unless
        another socket has replaced it meanwhile."""
        loop: Any = self
        bound = getattr(loop, "_unix_server_sockets", None)
        path = sock.getsockname() if bound and sock in bound else None
        loop._remove_reader(sock.fileno())
        sock.close()
        if path is not None:
            inode = bound.pop(sock)
            try:
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                base_events.logger.error(
                    "Unable to clean up listening UNIX socket %r: %r", path, err
                )

    async def getaddrinfo(
        self,
        host: Any,
        port: Any,
        *,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[Any]:
        # The socket module as asyncio's own code sees it (tests and tools patch it there).
        sock_mod = base_events.socket
        if _is_numeric_host(host) and _is_numeric_port(port):
            # Numeric: the C library answers without any lookup; the result is exactly
            # socket.getaddrinfo's because it is socket.getaddrinfo.
            return sock_mod.getaddrinfo(host, port, family, type, proto, flags)
        loop: Any = self
        return await futures.wrap_future(
            _resolver_pool().submit(sock_mod.getaddrinfo, host, port, family, type, proto, flags),
            loop=loop,
        )

    async def getnameinfo(self, sockaddr: Any, flags: int = 0) -> Any:
        loop: Any = self
        return await futures.wrap_future(
            _resolver_pool().submit(base_events.socket.getnameinfo, sockaddr, flags), loop=loop
        )


# The public coroutine methods asyncio's loop and ferroloop's both run as Python code: asyncio's
# own (borrowed above) and the resolver's. On asyncio's loop a patch of the class attribute
# (``mock.patch("asyncio.BaseEventLoop.create_connection", ...)``, as asyncssh's tests do)
# changes what every loop runs; ferroloop's loop is no BaseEventLoop, so each of these methods
# looks the name up on asyncio's Unix loop class when called and runs the replacement if there
# is one. One attribute lookup and one coroutine frame per call (0.3-0.4 us), on paths that run
# once per connection, server, file or name lookup. The per-message sock_* methods (recv,
# recv_into, sendall, recvfrom, recvfrom_into, sendto: the frames would add 10-15 % to a UDP
# round trip over them), and everything native, do not follow such patches (README).
_PER_MESSAGE = frozenset({"sock_recvfrom", "sock_recvfrom_into", "sock_sendto"})
FOLLOWS_ASYNCIO_PATCHES = tuple(
    name
    for names in BORROWED.values()
    for name in names
    if not name.startswith("_") and name not in _PER_MESSAGE and name in NetworkingMixin.__dict__
) + ("getaddrinfo", "getnameinfo")


def _bound_replacement(name: str, loop: Any) -> Any:
    """The replacement asyncio's loop would call: the raw class attribute, bound as attribute
    access on an instance binds it (a plain function gets the loop; a mock, no descriptor, is
    called as it is)."""
    for cls in _UNIX.__mro__:
        if name in cls.__dict__:
            attr = cls.__dict__[name]
            bind = getattr(type(attr), "__get__", None)
            return bind(attr, loop, type(loop)) if bind is not None else attr
    raise AttributeError(name)


def _following_asyncio_patches(name: str, ours: Any) -> Any:
    original = getattr(_UNIX, name)

    async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(_UNIX, name) is original:
            return await ours(self, *args, **kwargs)
        return await _bound_replacement(name, self)(*args, **kwargs)

    return functools.update_wrapper(method, ours)


for _name in FOLLOWS_ASYNCIO_PATCHES:
    setattr(
        NetworkingMixin,
        _name,
        _following_asyncio_patches(_name, NetworkingMixin.__dict__[_name]),
    )
del _name
