"""TLS over ferroloop's native transports: asyncio's ``SSLProtocol`` with its record path in Rust.

The handshake, shutdown, timeouts, flow-control decisions, buffered application protocols and
error reporting are asyncio's own code, which runs a few times per connection. What runs for
every TLS record (``src/tls.rs``) is native:

- the native stream transport hands received bytes straight to the Rust side (no
  ``get_buffer``/``buffer_updated`` calls), which feeds the incoming memory BIO, decrypts and
  calls the application's ``data_received``;
- the application transport's ``write`` encrypts at once when nothing is queued and passes the
  outgoing BIO's bytes to the transport.

The methods below that asyncio's Python code calls on its own paths (``_do_read`` after the
handshake or on ``resume_reading``, ``_process_outgoing`` when the transport drains...) lead to
the same native functions, so there is one implementation of each step. The state keeps the
attribute names asyncio's code uses; those the record path reads per record are stored in the
native base class ``TlsCore``.
"""

from __future__ import annotations

from asyncio import sslproto
from typing import Any

from ._ferroloop import (
    TlsCore,
    _tls_do_read,
    _tls_do_write,
    _tls_install_app_write,
    _tls_process_outgoing,
    _tls_write_appdata,
)

_State = sslproto.SSLProtocolState


class _SSLProtocolTransport(sslproto._SSLProtocolTransport):
    """asyncio's application-side TLS transport, whose ``write`` is native: asyncio's checks,
    then the record path (``_tls_write``), installed below as a method descriptor."""


_tls_install_app_write(_SSLProtocolTransport)


class SSLProtocol(TlsCore, sslproto.SSLProtocol):
    # TlsCore (src/tls.rs) stores the attributes the record path uses (_state, the BIOs, the
    # flow-control flags and watermarks...) natively; asyncio's code below uses them as usual.

    def _get_app_transport(self) -> Any:
        if self._app_transport is None:
            if self._app_transport_created:
                raise RuntimeError("Creating _SSLProtocolTransport twice")
            self._app_transport = _SSLProtocolTransport(self._loop, self)
            self._app_transport_created = True
        return self._app_transport

    def _ferroloop_after_incoming(self) -> None:
        # What asyncio's buffer_updated does once the bytes are in the incoming BIO, for the
        # states other than WRAPPED (the native side handles that one before calling this).
        state = self._state
        if state == _State.DO_HANDSHAKE:
            self._do_handshake()
        elif state == _State.FLUSHING:
            self._do_flush()
        elif state == _State.SHUTDOWN:
            self._do_shutdown()

    def _do_read(self) -> None:
        _tls_do_read(self)

    def _do_write(self) -> None:
        _tls_do_write(self)

    def _process_outgoing(self) -> None:
        _tls_process_outgoing(self)

    def _write_appdata(self, list_of_data: Any) -> None:
        _tls_write_appdata(self, list_of_data)
