"""TLS over a plain TCP transport, with memory bounded per connection.

uvloop's own TLS transport (``SSLProtocol``) gives every connection a
256 KiB receive buffer and two OpenSSL memory BIOs that grow to the largest
burst that ever passed through them and keep that size for the connection's
life. Pages a read never touched cost nothing, so idle sessions are cheap,
but after one bulk transfer a connection keeps up to ~500 KiB (measured in
docs/benchmarks.md): with thousands of sessions that is gigabytes.

:class:`TLSLayer` does the same job with the standard library's
:class:`ssl.SSLObject` over :class:`ssl.MemoryBIO` on a plain uvloop TCP
transport, whose reads land in one buffer the whole loop shares. Ciphertext
is fed to OpenSSL and plaintext taken from it in pieces of at most
:data:`CHUNK` bytes, so neither BIO ever holds more than about one piece;
ciphertext waiting for the socket sits in the TCP transport's write queue,
which frees it once sent.

To the application protocol it is the transport (``write``, ``close``,
``abort``, flow control, ``get_extra_info``); ``connection_made`` is called
once the handshake has completed, as with ``loop.create_server(ssl=…)``.
A failed or timed-out handshake closes the connection without the
application ever seeing it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable
from typing import Any

__all__ = ["CHUNK", "TLSLayer"]

log = logging.getLogger("clawterm.daemon")

#: Most bytes fed to or taken from OpenSSL at once (one TLS record's worth).
CHUNK = 16384

_HANDSHAKE, _OPEN, _CLOSING, _CLOSED = range(4)


class TLSLayer(asyncio.Protocol, asyncio.Transport):
    """The server side of one TLS connection: TCP protocol below, transport above."""

    def __init__(
        self,
        app: asyncio.Protocol,
        context: ssl.SSLContext,
        handshake_timeout: float,
    ) -> None:
        self._extra: dict[str, Any] = {}
        self.app = app
        self._context = context
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._tcp: Any = None
        self._state = _HANDSHAKE
        self._timeout = handshake_timeout
        self._timer: asyncio.TimerHandle | None = None
        #: The application has seen connection_made (the handshake completed).
        self._connected = False

    # -- TCP side ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tcp = transport
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._handshake_expired)

    def data_received(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            if self._state >= _CLOSING:
                return
            self._incoming.write(view[start : start + CHUNK])
            if self._state == _HANDSHAKE:
                self._handshake()
            if self._state == _OPEN:
                self._read()

    def eof_received(self) -> bool | None:
        if self._state == _OPEN:
            self.app.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _CLOSED
        self._cancel_timer()
        if self._connected:
            self._connected = False
            self.app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._state == _OPEN:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self._state == _OPEN:
            self.app.resume_writing()

    def _handshake(self) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, ValueError) as exc:
            log.debug("TLS handshake failed: %s", exc)
            self._flush()
            self._state = _CLOSED
            self._cancel_timer()
            self._tcp.close()
            return
        self._cancel_timer()
        self._state = _OPEN
        self._flush()
        self._connected = True
        self.app.connection_made(self)

    def _read(self) -> None:
        """Hand the application every byte of plaintext OpenSSL has."""
        chunks: list[bytes] = []
        sslobj = self._ssl
        eof = False
        try:
            while True:
                chunk = sslobj.read(CHUNK)
                if not chunk:
                    eof = True
                    break
                chunks.append(chunk)
                if not self._incoming.pending and not sslobj.pending():
                    break
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            eof = True
        except ssl.SSLError as exc:
            log.debug("TLS error: %s", exc)
            self._state = _CLOSING
            self._tcp.abort()
            return
        if self._outgoing.pending:
            self._flush()
        if chunks:
            self.app.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if eof and self._state == _OPEN:
            # close_notify from the client: no more data comes.
            self.app.eof_received()
            self.close()

    def _flush(self) -> None:
        if self._outgoing.pending:
            self._tcp.write(self._outgoing.read())

    def _handshake_expired(self) -> None:
        self._timer = None
        if self._state == _HANDSHAKE:
            log.debug("TLS handshake timed out after %.1f s", self._timeout)
            self._state = _CLOSED
            self._tcp.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- transport for the application ------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state != _OPEN:
            return
        sslobj, outgoing = self._ssl, self._outgoing
        if len(data) <= CHUNK:
            sslobj.write(data)
            self._tcp.write(outgoing.read())
            return
        view = memoryview(data)
        pieces = []
        for start in range(0, len(view), CHUNK):
            sslobj.write(view[start : start + CHUNK])
            pieces.append(outgoing.read())
        self._tcp.writelines(pieces)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def close(self) -> None:
        """Send close_notify after what is queued, then close the TCP connection."""
        if self._state != _OPEN:
            return
        self._state = _CLOSING
        try:
            self._ssl.unwrap()
        except ssl.SSLError:
            pass  # Our close_notify is written; we do not wait for the client's.
        self._flush()
        self._tcp.close()

    def abort(self) -> None:
        if self._state == _CLOSED:
            return
        if self._state == _HANDSHAKE:
            self._state = _CLOSED
        else:
            self._state = _CLOSING
        self._tcp.abort()

    def is_closing(self) -> bool:
        return self._state != _OPEN

    def pause_reading(self) -> None:
        self._tcp.pause_reading()

    def resume_reading(self) -> None:
        self._tcp.resume_reading()

    def is_reading(self) -> bool:
        return bool(self._tcp.is_reading())

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._tcp.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return int(self._tcp.get_write_buffer_size())

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl
        if name == "sslcontext":
            return self._context
        if name == "cipher":
            return self._ssl.cipher()
        if name == "peercert":
            return self._ssl.getpeercert()
        return self._tcp.get_extra_info(name, default)
