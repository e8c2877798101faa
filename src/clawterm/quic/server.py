"""The daemon's QUIC listener (SPEC §1): UDP, ALPN ``clawterm/1``, one stream.

A client opens one bidirectional stream and sends on it exactly the frame
byte stream it would send over TLS/TCP. Each such stream gets the daemon's
ordinary :class:`~clawterm.daemon.legs.ClientProtocol` through
:class:`QuicStreamTransport`, a small adapter with the ``asyncio.Transport``
surface the daemon uses, so sessions, RESUME and takeover work the same on
both transports (a session may move between them).

Memory is bounded both ways: received data is delivered only while the
daemon reads and the QUIC receive windows open only as it consumes
(:mod:`clawterm.quic._flow`); written data counts against
``set_write_buffer_limits`` until the peer acknowledges it, so a stalled
client pauses the session's agent leg as a stalled TCP client does.

Connection migration and path validation are aioquic's and are left on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aioquic._buffer import Buffer as QuicBuffer
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic import events
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import TRANSPORT_CLOSE_FRAME_CAPACITY
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicFrameType,
    QuicPacketType,
    pull_quic_header,
)
from aioquic.quic.packet_builder import QuicPacketBuilder

from ._flow import bound_connection, stream_fin_acked, stream_unacked

if TYPE_CHECKING:
    from ..daemon.legs import ClientProtocol
    from ..daemon.server import Daemon

__all__ = ["ALPN", "QuicListener", "QuicStreamTransport", "start_quic_server"]

log = logging.getLogger("clawterm.quic")

ALPN = "clawterm/1"
#: Application error codes in CONNECTION_CLOSE (ours, not QUIC's).
APP_NO_ERROR = 0x0
APP_STREAM_MISUSE = 0x1
APP_HANDSHAKE_TIMEOUT = 0x2
#: Seconds to wait for the peer to acknowledge our FIN before closing anyway.
CLOSE_LINGER = 3.0
#: Requested UDP socket buffer size, bytes.
SOCKET_BUFFER = 4 << 20


def grow_socket_buffers(transport: Any, size: int = SOCKET_BUFFER) -> None:
    """Ask for larger UDP socket buffers (the kernel caps them at rmem_max/wmem_max).

    With the default ~200 KiB, a burst of datagrams while the loop is busy
    overflows the receive buffer, and every drop costs a congestion-window cut.
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, opt, size)


def use_retry(mode: str, host: str) -> bool:
    """``--quic-retry``: on, off, or auto (on unless ``host`` is loopback)."""
    if mode == "on":
        return True
    if mode == "off":
        return False
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def _refuse_packet(version: int, source_cid: bytes, destination_cid: bytes) -> bytes:
    """A stateless Initial with CONNECTION_CLOSE(CONNECTION_REFUSED).

    Same construction as aioquic's INVALID_TOKEN close: Initial keys come
    from the client's chosen destination connection ID.
    """
    crypto = CryptoPair()
    crypto.setup_initial(cid=source_cid, is_client=False, version=version)
    builder = QuicPacketBuilder(
        host_cid=source_cid,
        is_client=False,
        max_datagram_size=SMALLEST_MAX_DATAGRAM_SIZE,
        peer_cid=destination_cid,
        version=version,
    )
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    buf = builder.start_frame(
        QuicFrameType.TRANSPORT_CLOSE, capacity=TRANSPORT_CLOSE_FRAME_CAPACITY
    )
    buf.push_uint_var(QuicErrorCode.CONNECTION_REFUSED)
    buf.push_uint_var(QuicFrameType.PADDING)
    buf.push_uint_var(0)
    datagrams, _ = builder.flush()
    return bytes(datagrams[0])


class QuicStreamTransport:
    """The ``asyncio.Transport`` surface :class:`ClientProtocol` uses, over one QUIC stream."""

    def __init__(self, conn: DaemonQuicProtocol, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.protocol: ClientProtocol | None = None
        self.high = 1 << 20
        self.low = self.high // 4
        self.reading_paused = False
        self.writing_paused = False
        self.held: deque[bytes] = deque()
        self.held_bytes = 0
        self.fin_received = False
        self.closing = False
        self.lost = False
        self._deliver_handle: asyncio.Handle | None = None
        self._linger: asyncio.TimerHandle | None = None

    # -- asyncio.Transport surface used by the daemon -------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.conn.peer_address()
        if name == "sockname":
            transport = self.conn._transport
            return transport.get_extra_info("sockname") if transport is not None else default
        if name == "stream_id":
            return self.stream_id
        if name == "transport":
            return "quic"
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high = 1 << 20 if high is None else max(0, high)
        self.low = self.high // 4 if low is None else max(0, min(low, self.high))
        self.check_writing()

    def get_write_buffer_size(self) -> int:
        return stream_unacked(self.conn._quic, self.stream_id)

    def is_closing(self) -> bool:
        return self.closing or self.lost

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing or self.lost or not data:
            return
        try:
            self.conn._quic.send_stream_data(self.stream_id, bytes(data))
        except Exception as exc:  # the peer stopped or reset our sending side
            self.conn.close(APP_NO_ERROR, "stream no longer writable")
            self.conn._loop.call_soon(self.connection_lost, ConnectionResetError(str(exc)))
            self.closing = True
            return
        self.conn._transmit_soon()
        self.check_writing()

    def close(self) -> None:
        """FIN after what is written; the connection closes once the peer has it all."""
        if self.closing or self.lost:
            return
        self.closing = True
        self._drop_held()
        try:
            self.conn._quic.send_stream_data(self.stream_id, b"", end_stream=True)
        except Exception:  # the stream's sending side is already finished
            self.conn.close(APP_NO_ERROR)
            return
        self.conn._transmit_soon()
        self._linger = self.conn._loop.call_later(CLOSE_LINGER, self._linger_expired)

    def abort(self) -> None:
        if self.lost:
            return
        self.closing = True
        self._drop_held()
        self.conn.close(APP_NO_ERROR, "aborted")
        # Like asyncio: connection_lost follows on the next loop iteration.
        self.conn._loop.call_soon(self.connection_lost, None)

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        if not self.reading_paused:
            return
        self.reading_paused = False
        if self.held and self._deliver_handle is None:
            self._deliver_handle = self.conn._loop.call_soon(self._deliver_held)

    def is_reading(self) -> bool:
        return not self.reading_paused

    # -- driven by the connection protocol ------------------------------------

    def start(self, protocol: ClientProtocol) -> None:
        self.protocol = protocol
        protocol.connection_made(self)  # type: ignore[arg-type]

    def feed(self, data: bytes, end_stream: bool) -> None:
        """Stream data from the peer, in order."""
        if self.closing or self.lost:
            # Like a closed TCP transport: what arrives now is dropped, and
            # counted as consumed so the peer is never stuck on our window.
            self.conn.consumed(len(data))
            return
        if data:
            if self.reading_paused or self.held:
                self.held.append(data)
                self.held_bytes += len(data)
            else:
                self._deliver(data)
        if end_stream:
            self.fin_received = True
            if not self.held:
                self._eof()

    def _deliver(self, data: bytes) -> None:
        self.conn.consumed(len(data))
        if self.protocol is not None:
            self.protocol.data_received(data)

    def _deliver_held(self) -> None:
        self._deliver_handle = None
        while self.held and not self.reading_paused and not self.closing and not self.lost:
            data = self.held.popleft()
            self.held_bytes -= len(data)
            self._deliver(data)
        if not self.held and self.fin_received and not self.closing and not self.lost:
            self._eof()
        # Window updates (MAX_DATA / MAX_STREAM_DATA) for what was consumed.
        self.conn._transmit_soon()

    def _drop_held(self) -> None:
        if self.held_bytes:
            self.conn.consumed(self.held_bytes)
        self.held.clear()
        self.held_bytes = 0

    def _eof(self) -> None:
        # ClientProtocol.eof_received returns None: the transport closes, as TCP's does.
        if self.protocol is not None:
            self.protocol.eof_received()
        self.close()

    def check_writing(self) -> None:
        """pause_writing/resume_writing from the bytes the peer has not acknowledged."""
        if self.protocol is None or self.lost:
            return
        size = stream_unacked(self.conn._quic, self.stream_id)
        if not self.writing_paused and size > self.high:
            self.writing_paused = True
            self.protocol.pause_writing()
        elif self.writing_paused and size <= self.low:
            self.writing_paused = False
            self.protocol.resume_writing()

    def after_io(self) -> None:
        """After datagrams or a timer: acknowledgements may have arrived."""
        if self.lost:
            return
        if self.closing:
            if self._linger is not None and stream_fin_acked(self.conn._quic, self.stream_id):
                self._linger.cancel()
                self._linger = None
                self.conn.close(APP_NO_ERROR)
            return
        self.check_writing()

    def _linger_expired(self) -> None:
        self._linger = None
        self.conn.close(APP_NO_ERROR, "close timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        self.closing = True
        self.held.clear()
        self.held_bytes = 0
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._deliver_handle is not None:
            self._deliver_handle.cancel()
            self._deliver_handle = None
        if self.protocol is not None:
            self.protocol.connection_lost(exc)


class DaemonQuicProtocol(QuicConnectionProtocol):
    """One QUIC connection: the first client-initiated bidirectional stream is the client."""

    def __init__(self, quic: Any, stream_handler: Any = None, *, listener: QuicListener) -> None:
        super().__init__(quic, stream_handler)
        self.listener = listener
        daemon = listener.daemon
        self.bquic = bound_connection(quic, listener.window)
        self.stream: QuicStreamTransport | None = None
        self.terminated = False
        self._no_stream_timer: asyncio.TimerHandle | None = self._loop.call_later(
            max(daemon.config.handshake_timeout, 1.0), self._no_stream
        )

    def peer_address(self) -> Any:
        paths = self._quic._network_paths
        return paths[0].addr if paths else None

    def consumed(self, n: int) -> None:
        if self.bquic.consumed(n):
            self._transmit_soon()

    def close(self, error_code: int = APP_NO_ERROR, reason_phrase: str = "") -> None:
        if self.terminated:
            return
        super().close(error_code=error_code, reason_phrase=reason_phrase)

    def _no_stream(self) -> None:
        self._no_stream_timer = None
        if self.stream is None and not self.terminated:
            log.info("QUIC connection from %s opened no stream in time", self.peer_address())
            self.close(APP_HANDSHAKE_TIMEOUT, "no stream")

    # -- aioquic hooks ----------------------------------------------------------

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        try:
            super().datagram_received(data, addr)
        except Exception:
            log.exception("QUIC: error handling a datagram from %s", addr)
            self.close(QuicErrorCode.INTERNAL_ERROR, "internal error")
        if self.stream is not None:
            self.stream.after_io()

    def _handle_timer(self) -> None:
        super()._handle_timer()
        if self.stream is not None:
            self.stream.after_io()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            self._stream_data(event)
        elif isinstance(event, (events.StreamReset, events.StopSendingReceived)):
            # Either half of the one stream gone: the transport is gone.
            if self.stream is not None and event.stream_id == self.stream.stream_id:
                self.close(APP_NO_ERROR, "stream reset")
                self.stream.connection_lost(ConnectionResetError("QUIC stream reset by peer"))
        elif isinstance(event, events.ConnectionTerminated):
            self._terminated(event)

    def _stream_data(self, event: events.StreamDataReceived) -> None:
        sid = event.stream_id
        stream = self.stream
        if stream is None:
            if self.terminated or sid % 4 != 0:  # not client-initiated bidirectional
                self.consumed(len(event.data))
                self.close(APP_STREAM_MISUSE, "one client-initiated bidirectional stream")
                return
            from ..daemon.legs import ClientProtocol

            stream = self.stream = QuicStreamTransport(self, sid)
            if self._no_stream_timer is not None:
                self._no_stream_timer.cancel()
                self._no_stream_timer = None
            stream.start(ClientProtocol(self.listener.daemon, transport_name="quic"))
        elif sid != stream.stream_id:
            self.consumed(len(event.data))
            self.close(APP_STREAM_MISUSE, "one client-initiated bidirectional stream")
            stream.connection_lost(ConnectionError("QUIC peer opened a second stream"))
            return
        stream.feed(event.data, event.end_stream)

    def _terminated(self, event: events.ConnectionTerminated) -> None:
        if self.terminated:
            return
        self.terminated = True
        self.listener.connection_ended(self)
        if self._no_stream_timer is not None:
            self._no_stream_timer.cancel()
            self._no_stream_timer = None
        if self.stream is not None:
            exc: Exception | None = None
            if event.error_code != QuicErrorCode.NO_ERROR:
                exc = ConnectionError(
                    f"QUIC connection closed: {event.error_code:#x} {event.reason_phrase}"
                )
            self.stream.connection_lost(exc)


class _Server(QuicServer):
    """aioquic's server, plus a cap on connections and a guard against bad datagrams."""

    listener: QuicListener

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        try:
            if isinstance(data, bytes) and self._refuse(data, addr):
                return
            super().datagram_received(data, addr)
        except Exception:
            # Garbage must never take the listener down.
            log.debug("QUIC: dropped a datagram from %s", addr, exc_info=True)

    def _refuse(self, data: bytes, addr: Any) -> bool:
        """True if this datagram would start a connection we do not take."""
        listener = self.listener
        if not listener.closing and len(listener.live) < listener.max_connections:
            return False
        try:
            header = pull_quic_header(
                QuicBuffer(data=data), host_cid_length=self._configuration.connection_id_length
            )
        except ValueError:
            return True
        if header.destination_cid in self._protocols:
            return False
        if listener.closing:
            return True
        if (
            header.packet_type == QuicPacketType.INITIAL
            and len(data) >= SMALLEST_MAX_DATAGRAM_SIZE
            and header.version in self._configuration.supported_versions
        ):
            listener.refused += 1
            if listener.refused == 1 or listener.refused % 1000 == 0:
                log.warning(
                    "QUIC: refusing connections beyond --max-quic-connections %d (%d refused)",
                    listener.max_connections,
                    listener.refused,
                )
            assert self._transport is not None and header.version is not None
            self._transport.sendto(
                _refuse_packet(header.version, header.destination_cid, header.source_cid), addr
            )
        return True


class QuicListener:
    """What :func:`start_quic_server` returns: the running listener; ``close()`` stops it."""

    def __init__(self, daemon: Daemon, window: int, max_connections: int) -> None:
        self.daemon = daemon
        self.window = window
        self.max_connections = max_connections
        self.live: set[DaemonQuicProtocol] = set()
        self.refused = 0
        self.closing = False
        self.server: _Server | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.address: tuple[str, int] = ("", 0)

    def create_protocol(self, quic: Any, stream_handler: Any = None) -> DaemonQuicProtocol:
        proto = DaemonQuicProtocol(quic, stream_handler, listener=self)
        self.live.add(proto)
        return proto

    def connection_ended(self, proto: DaemonQuicProtocol) -> None:
        self.live.discard(proto)

    @property
    def port(self) -> int:
        return self.address[1]

    def close(self) -> None:
        """Stop accepting; connections with a client close as the daemon closes those
        clients (after their SHUTTING_DOWN ERROR), the rest now; the socket shortly after."""
        if self.closing:
            return
        self.closing = True
        for proto in list(self.live):
            if proto.stream is None:
                proto.close(APP_NO_ERROR, "shutting down")
        loop = self.daemon.loop
        loop.call_later(min(CLOSE_LINGER, 1.0), self._close_now)

    def _close_now(self) -> None:
        for proto in list(self.live):
            proto.close(APP_NO_ERROR, "shutting down")
        if self.transport is not None:
            self.transport.close()


async def start_quic_server(daemon: Daemon, cert: Path, key: Path) -> QuicListener:
    """Listen for QUIC on ``(config.host, config.quic_port)`` with the daemon's certificate."""
    config = daemon.config
    # aioquic logs every connection's handshake and close at INFO on logger
    # "quic": at thousands of connections that drowns the daemon's own lines.
    aioquic_log = logging.getLogger("quic")
    if aioquic_log.level == logging.NOTSET and not log.isEnabledFor(logging.DEBUG):
        aioquic_log.setLevel(logging.WARNING)
    window = max(int(config.max_buffer), 64 * 1024)
    keepalive = float(config.keepalive)
    configuration = QuicConfiguration(
        is_client=False,
        alpn_protocols=[ALPN],
        idle_timeout=3 * keepalive if keepalive > 0 else 600.0,
        max_data=window,
        max_stream_data=window,
    )
    configuration.load_cert_chain(os.fspath(cert), os.fspath(key))
    retry = use_retry(config.quic_retry, config.host)
    listener = QuicListener(daemon, window, max(int(config.max_quic_connections), 1))
    loop = asyncio.get_running_loop()

    def factory() -> _Server:
        server = _Server(
            configuration=configuration, create_protocol=listener.create_protocol, retry=retry
        )
        server.listener = listener
        return server

    transport, server = await loop.create_datagram_endpoint(
        factory, local_addr=(config.host, config.quic_port)
    )
    listener.server = server
    listener.transport = transport
    grow_socket_buffers(transport)
    sockname = transport.get_extra_info("sockname")
    listener.address = (str(sockname[0]), int(sockname[1]))
    log.info(
        "listening on %s:%d (QUIC, UDP, ALPN %s, retry %s)",
        config.host,
        listener.port,
        ALPN,
        "on" if retry else "off",
    )
    return listener
