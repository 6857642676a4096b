"""TLS over ferroloop's native transports: asyncio's own ``SSLProtocol``, one read path faster.

asyncio's ``SSLProtocol`` (3.11+) decrypts what arrived by calling ``SSLObject.read()`` until
it raises ``SSLWantReadError``. With one TLS record per message, the usual case for
request-reply traffic, every message therefore costs an exception raised by the ssl module and
caught in Python, a large share of the protocol's own time. This subclass stops reading as
soon as nothing is left to decrypt: neither undecrypted bytes in the incoming memory BIO nor
decrypted bytes waiting in the ``SSLObject``, when the next read could only raise that error.
Everything else (handshake, shutdown, flow control, buffered protocols, ``start_tls``) is
asyncio's code, unchanged.
"""

from __future__ import annotations

from asyncio import sslproto
from typing import Any

_AGAIN = sslproto.SSLAgainErrors


class SSLProtocol(sslproto.SSLProtocol):
    def _do_read__copied(self) -> None:
        sslobj: Any = self._sslobj
        incoming: Any = self._incoming
        max_size = self.max_size
        chunks: list[bytes] = []
        end_of_stream = False
        while True:
            try:
                chunk = sslobj.read(max_size)
            except _AGAIN:
                break
            if not chunk:  # the peer's close_notify
                end_of_stream = True
                break
            chunks.append(chunk)
            if not incoming.pending and not sslobj.pending():
                break  # nothing left to decrypt: a further read would raise SSLWantReadError
        if chunks:
            self._app_protocol.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if end_of_stream:
            self._call_eof_received()
            self._start_shutdown()
