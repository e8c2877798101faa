"""The daemon's I/O adapters: one ``asyncio.Protocol`` per transport.

Each follows the same loop (STYLE §2): bytes in → the core's
:class:`~clawterm.frame.FrameDecoder` → the session's relay logic → the
bytes it queued written in one call per burst. They implement
:class:`~clawterm.daemon.relay.Leg` for the relay and map every transport
and peer fault to an ERROR on that transport alone.

* :class:`ClientProtocol` — a client over TLS/TCP (and, through the QUIC
  stream adapter, over QUIC): handshake frames go to the daemon, the rest to
  the attached session.
* :class:`AgentProtocol` — the daemon's connection to an agent's Unix
  socket: waits for ACCEPT (or RESUMED after a restart), then relays.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..constants import ErrorCode, FrameType
from ..errors import RemoteProtocolError
from ..frame import Buffer, Frame, FrameDecoder, encode_frame
from ..payloads import Error
from ..session import SessionInput
from .relay import Session

if TYPE_CHECKING:
    from .server import Daemon

__all__ = ["AgentProtocol", "ClientProtocol"]

log = logging.getLogger("clawterm.daemon")


class _LegBase(asyncio.Protocol):
    """Output batching and flow-control flags shared by both legs."""

    def __init__(self) -> None:
        # uvloop's transports do not subclass asyncio's, hence Any.
        self.transport: Any = None
        self.out: list[Buffer] = []
        self.writing_paused = False
        self.closing = False

    def send(self, data: Buffer) -> None:
        self.out.append(data)

    def flush(self) -> None:
        out = self.out
        if out:
            if not self.closing:
                self.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closing:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def fail(self, code: ErrorCode, message: str) -> None:
        """Send ERROR after what is queued, then close (SPEC §12)."""
        if self.closing:
            return
        self.send(encode_frame(FrameType.ERROR, self.error_sid(), 0, Error(code, message).encode()))
        self.close()

    def close(self) -> None:
        if self.closing:
            return
        self.flush()
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        self.out.clear()
        if self.transport is not None:
            self.transport.abort()

    def error_sid(self) -> int:
        return 0

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.writing_changed()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.writing_changed()

    def writing_changed(self) -> None:
        pass


class ClientProtocol(_LegBase):
    """One client transport."""

    def __init__(self, daemon: Daemon, transport_name: str = "tls") -> None:
        super().__init__()
        self.daemon = daemon
        self.transport_name = transport_name
        self.decoder = FrameDecoder(daemon.config.max_payload)
        self.session: Session | None = None
        #: True until CONNECT or RESUME completed.
        self.handshaking = True
        #: A CONNECT or RESUME is being processed (agent leg opening).
        self.pending = False
        self.backlog: list[Frame] = []
        self._peer = "?"
        #: The address the connection came from; limits per address count it.
        self.peer_ip = "?"
        now = daemon.loop.time()
        self.started = now
        self.last_rx = now
        self.last_tx = now

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer: Any = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer_ip = str(peer[0])
            self._peer = f"{peer[0]}:{peer[1]}"
        transport.set_write_buffer_limits(high=self.daemon.config.max_buffer)  # type: ignore[attr-defined]
        self.daemon.client_connected(self)

    @property
    def peer(self) -> str:
        """``host:port`` of the client now, for log lines.

        A QUIC connection can migrate to a new address mid-session (SPEC
        §1); its transport reports the path in use.
        """
        if self.transport_name == "quic" and self.transport is not None:
            addr: Any = self.transport.get_extra_info("peername")
            if isinstance(addr, tuple):
                return f"{addr[0]}:{addr[1]}"
        return self._peer

    def error_sid(self) -> int:
        return self.session.session_id if self.session is not None else 0

    def flush(self) -> None:
        if self.out:
            self.last_tx = self.daemon.loop.time()
            super().flush()

    def data_received(self, data: bytes) -> None:
        daemon = self.daemon
        self.last_rx = daemon.loop.time()
        try:
            session = self.session
            decoder = self.decoder
            if session is not None and not (self.pending or self.closing or decoder.buffered):
                # A run of DATA and ACK frames as one piece (relay "Runs").
                taken = session.client_run(data, decoder.max_payload)
                if taken:
                    data = memoryview(data)[taken:]  # type: ignore[assignment]
            for frame in decoder.feed(data) if data else ():
                if self.closing:
                    break
                if self.pending:
                    self.hold(frame)
                elif self.session is not None:
                    self.session.client_frame(frame)
                else:
                    daemon.handshake_frame(self, frame)
        except RemoteProtocolError as exc:
            self.protocol_error(exc)
        except Exception:
            log.exception("internal error on client %s", self.peer)
            self.internal_error()
        session = self.session
        if session is not None:
            daemon.after_burst(session)
        else:
            self.flush()

    def hold(self, frame: Frame) -> None:
        """Keep a frame that arrived while CONNECT/RESUME is in progress."""
        if len(self.backlog) >= 64:
            self.fail(ErrorCode.LIMIT, "too many frames before the handshake completed")
            return
        self.backlog.append(frame._replace(raw=bytes(frame.raw)))

    def replay_backlog(self) -> None:
        """Process frames held during the handshake, once attached."""
        backlog, self.backlog = self.backlog, []
        try:
            for frame in backlog:
                if self.closing or self.session is None:
                    break
                self.session.client_frame(frame)
        except RemoteProtocolError as exc:
            self.protocol_error(exc)

    def protocol_error(self, exc: RemoteProtocolError) -> None:
        self.daemon.log_event(
            "protocol_error",
            self.session,
            peer=self.peer,
            reason=f"{exc.code.name}: {exc.message}",
            level=logging.WARNING,
        )
        self.daemon.count_error(exc.code)
        self.detach_and_fail(exc.code, exc.message)

    def internal_error(self) -> None:
        self.daemon.count_error(ErrorCode.INTERNAL)
        self.detach_and_fail(ErrorCode.INTERNAL, "internal error")

    def detach_and_fail(self, code: ErrorCode, message: str) -> None:
        """ERROR on this transport only; the session, if any, is suspended."""
        session = self.session
        if session is not None and session.client is self:
            session.detach(SessionInput.TRANSPORT_LOST, f"client error {code.name}")
        self.fail(code, message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.daemon.client_lost(self)

    def writing_changed(self) -> None:
        session = self.session
        if session is not None and session.client is self:
            session.client_writing_changed()

    def eof_received(self) -> bool | None:
        return None


class AgentProtocol(_LegBase):
    """The daemon's connection to one agent for one session (SPEC §14)."""

    def __init__(self, daemon: Daemon, session: Session) -> None:
        super().__init__()
        self.daemon = daemon
        self.session = session
        self.decoder = FrameDecoder(daemon.config.max_payload)
        self.ready = False
        self.handshake: asyncio.Future[Frame | None] = daemon.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=self.daemon.config.max_buffer)  # type: ignore[attr-defined]

    def error_sid(self) -> int:
        return self.session.session_id

    def data_received(self, data: bytes) -> None:
        session = self.session
        decoder = self.decoder
        try:
            if self.ready and not (self.closing or decoder.buffered):
                # A run of DATA and ACK frames as one piece (relay "Runs").
                taken = session.agent_run(data, decoder.max_payload)
                if taken:
                    data = memoryview(data)[taken:]  # type: ignore[assignment]
            for frame in decoder.feed(data) if data else ():
                if self.closing:
                    break
                if self.ready:
                    session.agent_frame(frame)
                elif frame.type in (FrameType.ACCEPT, FrameType.RESUMED, FrameType.ERROR):
                    self.ready = frame.type != FrameType.ERROR
                    if not self.handshake.done():
                        self.handshake.set_result(frame._replace(raw=bytes(frame.raw)))
                    if not self.ready:
                        self.close()
                # Anything else before the agent's answer is ignored.
        except RemoteProtocolError as exc:
            log.warning(
                "agent protocol error on session %d: %s: %s",
                session.session_id,
                exc.code.name,
                exc.message,
            )
            self.fail(exc.code, exc.message)
            if self.ready:
                session.agent_gone(f"agent protocol error {exc.code.name}")
        self.daemon.after_burst(session)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if not self.handshake.done():
            self.handshake.set_result(None)
        self.daemon.agent_lost(self)

    def writing_changed(self) -> None:
        if self.session.agent_leg is self:
            self.session.agent_writing_changed()
