"""A minimal asyncio QUIC client for ClawTerm (SPEC §1).

:func:`open_quic_stream` connects with ALPN ``clawterm/1``, opens the one
bidirectional stream, and returns ``(reader, writer, connection)``:

* ``reader`` — :class:`QuicStreamReader`: ``await read(n)``,
  ``await readexactly(n)``, ``at_eof()``. The stream's receive window opens
  only as the application reads, so a client that stops reading stops the
  daemon (flow control), instead of buffering without bound.
* ``writer`` — :class:`QuicStreamWriter`: ``write(data)``, ``await drain()``,
  ``write_eof()``, ``close()``, ``await wait_closed()``, ``is_closing()``,
  and ``transport.abort()``, like :class:`asyncio.StreamWriter`.
* ``connection`` — :class:`QuicClientConnection`: ``await migrate()`` moves
  the connection to a new local UDP socket (new port, or a new local
  address after a network change) and proves the new path with a PING;
  ``request_key_update()``, ``close()``, ``await wait_closed()``.

The frame byte stream on the stream is exactly what TLS/TCP would carry.

Certificate checking: ``verify=True`` checks the chain against ``cafile``
(or the system store) and ``server_name``; ``fingerprint`` (64 hex digits,
colons allowed) pins the daemon's certificate SHA-256 instead, which is how
a self-signed daemon is trusted; with neither, the certificate is not
checked (tests and development only).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import socket
import ssl
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from ._flow import BoundedQuicConnection, stream_unacked
from .server import ALPN, grow_socket_buffers

__all__ = [
    "QuicCertificateError",
    "QuicClientConnection",
    "QuicStreamReader",
    "QuicStreamWriter",
    "open_quic_stream",
]

DEFAULT_WINDOW = 1 << 20

#: TLS alerts (RFC 8446 §6.2) that mean "the certificate did not verify".
_CERT_ALERTS = frozenset({42, 43, 44, 45, 46, 48})
_CRYPTO_ERROR = 0x100


class QuicCertificateError(ConnectionError):
    """The daemon's certificate did not verify (chain, name or pinned fingerprint)."""


class QuicStreamReader:
    """The receiving side of the stream; the window follows what is read."""

    def __init__(self, proto: _ClientProtocol) -> None:
        self._proto = proto
        self._buffer = bytearray()
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def _feed(self, data: bytes) -> None:
        self._buffer += data
        self._wake()

    def _feed_eof(self, exc: BaseException | None = None) -> None:
        self._eof = True
        if exc is not None and self._exc is None:
            self._exc = exc
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def at_eof(self) -> bool:
        return self._eof and not self._buffer

    async def _wait(self) -> None:
        while not self._buffer and not self._eof:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all buffered if ``n < 0``); ``b""`` at EOF."""
        if n == 0:
            return b""
        await self._wait()
        if not self._buffer:
            if self._exc is not None:
                raise ConnectionError(str(self._exc)) from self._exc
            return b""
        take = len(self._buffer) if n < 0 else min(n, len(self._buffer))
        data = bytes(self._buffer[:take])
        del self._buffer[:take]
        self._proto.consumed(take)
        return data

    async def readexactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = await self.read(n - len(out))
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(out), n)
            out += chunk
        return bytes(out)


class _StreamTransport:
    """What ``writer.transport`` offers: ``abort()``, ``get_extra_info()``, ``is_closing()``."""

    def __init__(self, proto: _ClientProtocol) -> None:
        self._proto = proto

    def abort(self) -> None:
        self._proto.close(0, "aborted")

    def is_closing(self) -> bool:
        return self._proto.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "stream_id":
            return self._proto.stream_id
        if name == "sockname":
            return self._proto.local_address()
        if name == "peername":
            return self._proto.server_addr
        return default


class QuicStreamWriter:
    """The sending side of the stream."""

    def __init__(self, proto: _ClientProtocol, high: int) -> None:
        self._proto = proto
        self.transport = _StreamTransport(proto)
        self.high = high

    def write(self, data: bytes | bytearray | memoryview) -> None:
        proto = self._proto
        if proto.closing or proto.eof_sent:
            raise ConnectionError("QUIC stream is closing")
        proto._quic.send_stream_data(proto.stream_id, bytes(data))
        proto._transmit_soon()

    def buffered(self) -> int:
        """Bytes written and not yet acknowledged by the daemon."""
        return stream_unacked(self._proto._quic, self._proto.stream_id)

    async def drain(self) -> None:
        """Wait until at most ``high`` bytes are unacknowledged."""
        proto = self._proto
        while self.buffered() > self.high:
            if proto.closing:
                raise ConnectionError("QUIC connection closed")
            await proto.io_event()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        proto = self._proto
        if proto.closing or proto.eof_sent:
            return
        proto.eof_sent = True
        proto._quic.send_stream_data(proto.stream_id, b"", end_stream=True)
        proto._transmit_soon()

    def is_closing(self) -> bool:
        return self._proto.closing or self._proto.eof_sent

    def close(self) -> None:
        """FIN, then close the connection once the daemon has everything (≤ 2 s)."""
        self.write_eof()
        self._proto.close_when_flushed()

    async def wait_closed(self) -> None:
        await self._proto.wait_closed()


class _Forwarder(asyncio.DatagramProtocol):
    """Binds one UDP socket to the connection; replaced on migration."""

    def __init__(self, proto: _ClientProtocol) -> None:
        self.proto = proto
        self.active = True

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.active:
            self.proto.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass


class _ClientProtocol(QuicConnectionProtocol):
    def __init__(self, quic: BoundedQuicConnection, server_addr: Any) -> None:
        super().__init__(quic)
        self.bquic = quic
        self.server_addr = server_addr
        self.stream_id = 0
        self.closing = False
        self.eof_sent = False
        self.reader = QuicStreamReader(self)
        self._io: asyncio.Future[None] | None = None
        self._close_handle: asyncio.TimerHandle | None = None
        self.forwarder: _Forwarder | None = None

    def local_address(self) -> Any:
        transport = self._transport
        return transport.get_extra_info("sockname") if transport is not None else None

    def consumed(self, n: int) -> None:
        if self.bquic.consumed(n):
            self._transmit_soon()

    async def io_event(self) -> None:
        if self._io is None or self._io.done():
            self._io = self._loop.create_future()
        await self._io

    def _io_happened(self) -> None:
        io, self._io = self._io, None
        if io is not None and not io.done():
            io.set_result(None)
        if self._close_handle is not None and self._flushed():
            self._close_handle.cancel()
            self._close_handle = None
            self.close()

    def _flushed(self) -> bool:
        stream: Any = self._quic._streams.get(self.stream_id)
        return stream is None or bool(stream.sender.is_finished)

    def close_when_flushed(self, timeout: float = 2.0) -> None:
        if self.closing or self._close_handle is not None:
            return
        if self._flushed():
            self.close()
        else:
            self._close_handle = self._loop.call_later(timeout, self.close)

    def close(self, error_code: int = 0, reason_phrase: str = "") -> None:
        if not self.closing:
            self.closing = True
            super().close(error_code=error_code, reason_phrase=reason_phrase)

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        super().datagram_received(data, addr)
        self._io_happened()

    def _handle_timer(self) -> None:
        super()._handle_timer()
        self._io_happened()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            if event.stream_id == self.stream_id:
                if event.data:
                    self.reader._feed(event.data)
                if event.end_stream:
                    self.reader._feed_eof()
            else:
                self.consumed(len(event.data))
        elif isinstance(event, events.StreamReset):
            if event.stream_id == self.stream_id:
                self.reader._feed_eof(ConnectionResetError("QUIC stream reset by the daemon"))
        elif isinstance(event, events.ConnectionTerminated):
            self.closing = True
            exc = None
            if event.error_code:
                exc = ConnectionError(
                    f"QUIC connection closed: {event.error_code:#x} {event.reason_phrase}"
                )
            self.reader._feed_eof(exc)
            if self._transport is not None:
                self._transport.close()


class QuicClientConnection:
    """The connection behind the stream: migration, key update, close."""

    def __init__(self, proto: _ClientProtocol, family: int, local_host: str) -> None:
        self._proto = proto
        self._family = family
        self._local_host = local_host
        self._pings = itertools.count(1 << 32)

    @property
    def protocol(self) -> QuicConnectionProtocol:
        return self._proto

    @property
    def local_address(self) -> Any:
        return self._proto.local_address()

    @property
    def peer_certificate_sha256(self) -> str:
        """SHA-256 of the daemon's certificate (DER), 64 lower-case hex digits."""
        return _peer_fingerprint(self._proto._quic)

    @property
    def peer_certificate_der(self) -> bytes:
        """The daemon's certificate (DER), or ``b""`` if it sent none."""
        return _peer_der(self._proto._quic)

    async def migrate(
        self, local_port: int = 0, local_host: str | None = None, within: float = 5.0
    ) -> Any:
        """Continue on a new local UDP socket; return its address once the daemon answered.

        The old socket is closed, the connection ID changed (so an observer
        cannot link the paths), and a PING sent on the new path; the daemon
        validates the new path (PATH_CHALLENGE) and moves to it. The stream
        goes on without a RESUME.
        """
        proto = self._proto
        loop = asyncio.get_running_loop()
        host = self._local_host if local_host is None else local_host
        sock = _bind(self._family, host, local_port)
        forwarder = _Forwarder(proto)
        transport, _ = await loop.create_datagram_endpoint(lambda: forwarder, sock=sock)
        grow_socket_buffers(transport)
        old_transport, old_forwarder = proto._transport, proto.forwarder
        proto._transport = transport
        proto.forwarder = forwarder
        if old_forwarder is not None:
            old_forwarder.active = False
        if old_transport is not None:
            old_transport.close()
        proto.change_connection_id()
        try:
            await asyncio.wait_for(proto.ping(), within)
        except BaseException:
            _observe_pings(proto)
            raise
        return transport.get_extra_info("sockname")

    def request_key_update(self) -> None:
        self._proto.request_key_update()

    async def ping(self, within: float = 5.0) -> None:
        try:
            await asyncio.wait_for(self._proto.ping(), within)
        except BaseException:
            _observe_pings(self._proto)
            raise

    def close(self) -> None:
        self._proto.close()

    async def wait_closed(self) -> None:
        await self._proto.wait_closed()


def _observe_pings(proto: QuicConnectionProtocol) -> None:
    """A PING given up on: aioquic fails its shielded waiter later; mark that seen."""
    waiters: Any = getattr(proto, "_ping_waiters", {})
    for waiter in waiters.values():
        waiter.add_done_callback(lambda f: f.cancelled() or f.exception())


def _bind(family: int, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _peer_der(quic: QuicConnection) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    tls: Any = getattr(quic, "tls", None)
    cert: Any = getattr(tls, "_peer_certificate", None)
    if cert is None:
        return b""
    return bytes(cert.public_bytes(Encoding.DER))


def _peer_fingerprint(quic: QuicConnection) -> str:
    der = _peer_der(quic)
    return hashlib.sha256(der).hexdigest() if der else ""


def _certificate_failure(quic: QuicConnection) -> str | None:
    """Why the handshake failed if it was our certificate check, else None."""
    event: Any = getattr(quic, "_close_event", None)
    if event is None or event.error_code - _CRYPTO_ERROR not in _CERT_ALERTS:
        return None
    return str(event.reason_phrase or "certificate verification failed")


async def open_quic_stream(
    host: str,
    port: int,
    *,
    verify: bool = False,
    cafile: str | None = None,
    fingerprint: str | None = None,
    server_name: str | None = None,
    local_host: str | None = None,
    local_port: int = 0,
    window: int = DEFAULT_WINDOW,
    idle_timeout: float = 90.0,
    connect_timeout: float = 10.0,
) -> tuple[QuicStreamReader, QuicStreamWriter, QuicClientConnection]:
    """Connect to a daemon's QUIC port and open the ClawTerm stream.

    Raises :class:`QuicCertificateError` if the certificate does not verify
    (``verify``) or the pinned ``fingerprint`` does not match,
    :class:`ConnectionError` if the handshake fails otherwise,
    :class:`TimeoutError` after ``connect_timeout``.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, _, _, _, server_addr = infos[0]
    if local_host is None:
        local_host = "::" if family == socket.AF_INET6 else "0.0.0.0"
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=[ALPN],
        server_name=server_name or host,
        idle_timeout=idle_timeout,
        max_data=window,
        max_stream_data=window,
        verify_mode=ssl.CERT_REQUIRED if verify and not fingerprint else ssl.CERT_NONE,
    )
    if cafile is not None:
        configuration.load_verify_locations(cafile=cafile)
    quic = BoundedQuicConnection(configuration=configuration)
    quic.ct_window = window
    proto = _ClientProtocol(quic, server_addr)
    forwarder = _Forwarder(proto)
    sock = _bind(family, local_host, local_port)
    transport, _ = await loop.create_datagram_endpoint(lambda: forwarder, sock=sock)
    grow_socket_buffers(transport)
    proto.connection_made(transport)
    proto.forwarder = forwarder
    try:
        proto.connect(server_addr)
        await asyncio.wait_for(proto.wait_connected(), connect_timeout)
    except BaseException as exc:
        why = _certificate_failure(quic) if isinstance(exc, ConnectionError) else None
        # Cancelled or timed out: aioquic's shielded waiter would later fail unobserved.
        waiter: Any = getattr(proto, "_connected_waiter", None)
        if waiter is not None and not waiter.done():
            proto._connected_waiter = None
            waiter.cancel()
        proto.close()
        transport.close()
        if why is not None:
            raise QuicCertificateError(f"certificate not trusted: {why}") from exc
        raise
    if fingerprint:
        want = fingerprint.replace(":", "").strip().lower()
        got = _peer_fingerprint(quic)
        if got != want:
            proto.close(0x1, "certificate fingerprint mismatch")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proto.wait_closed(), 1.0)
            transport.close()
            raise QuicCertificateError(f"certificate fingerprint mismatch: got {got}")
    proto.stream_id = quic.get_next_available_stream_id()
    reader = proto.reader
    writer = QuicStreamWriter(proto, window)
    return reader, writer, QuicClientConnection(proto, family, local_host)
