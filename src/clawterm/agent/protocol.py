"""The agent leg, agent side, without I/O (SPEC §4, §5, §6, §8–§10, §12–§14, §17).

How it works. The daemon opens one Unix connection per session and speaks
ClawTerm frames on it. A *session* outlives its connection: when the daemon's
connection drops without DISCONNECT (a daemon restart, SPEC §17) the agent
keeps the session for a grace period and lets a new connection RESUME it. So
the core has three pieces:

* :class:`AgentSession` — one session: the DATA frames the client has not
  acknowledged (:class:`~clawterm.sequencing.SendBuffer`), duplicate drop
  (:class:`~clawterm.sequencing.ReceiveState`), the latest WINSIZE, whether
  the client is present, and which connection it is attached to, if any.
  The application writes through :meth:`AgentSession.send_data`, attached or
  not: a detached session keeps what is written and replays it on RESUME.
* :class:`AgentConnection` — one daemon connection: the frame decoder, the
  handshake (CONNECT → ACCEPT, or RESUME → RESUMED + replay), then routing
  frames to its session. Inputs ``receive_data`` / ``receive_eof`` /
  ``handle_timer``; outputs ``events_received`` / ``data_to_send`` /
  ``get_timer``.
* :class:`AgentSessions` — the table of live sessions of one agent socket,
  which RESUME looks sessions up in, and their grace deadlines.

Acknowledgement. The agent acknowledges what the *application took*
(:meth:`AgentSession.data_consumed`), not merely what arrived: the client
keeps its unacknowledged frames and stops writing at its limit (SPEC §4), so
input waiting for a slow handler is bounded by the client's window instead of
growing without bound, and the adapter need not stop reading the socket (ACKs
from the client would be stuck behind its DATA). A handler that keeps reading is acknowledged
within ``ack_delay`` of taking the data, and at least every 32 frames or
32 KiB. RESUMED reports what *arrived* (SPEC §14): it is held by the agent.

Nothing here reads a clock: time comes in as ``now`` (seconds, monotonic).
"""

from __future__ import annotations

from enum import Enum

from ..constants import (
    DEFAULT_AGENT_GRACE,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_RING_SIZE,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    Capability,
    DataFlag,
    ErrorCode,
    FrameType,
    KeepaliveFlag,
)
from ..errors import (
    BadPayload,
    LocalProtocolError,
    ProtocolViolation,
    RemoteProtocolError,
)
from ..frame import Buffer, Frame, FrameDecoder, encode_frame
from ..payloads import (
    Accept,
    Ack,
    Connect,
    Disconnect,
    Error,
    Nack,
    Resume,
    Resumed,
    WinSize,
    check_empty,
)
from ..sequencing import ReceiveState, SendBuffer
from ..serial import is_newer
from .events import (
    ClientResumed,
    ClientSuspended,
    ConnectionFailed,
    DataAcknowledged,
    DataReceived,
    ErrorReceived,
    Event,
    SessionDetached,
    SessionEnded,
    SessionOpened,
    SessionReattached,
    WindowChanged,
)

__all__ = [
    "AGENT_CAPABILITIES",
    "AgentConnection",
    "AgentSession",
    "AgentSessions",
    "ConnectionState",
]

#: Capabilities the agent announces in ACCEPT (SPEC §5, §14).
AGENT_CAPABILITIES = Capability.ACK | Capability.RESUME2 | Capability.WINSIZE

_DATA = FrameType.DATA
_ACK = FrameType.ACK
_MORE = DataFlag.MORE


class AgentSession:
    """One session of the agent, attached to a connection or waiting for RESUME.

    Created by :class:`AgentConnection` on CONNECT. Write with
    :meth:`send_data` while :attr:`writable` (check it yourself: the buffer
    never refuses a frame, SPEC §14), report what the application took with
    :meth:`data_consumed`, end with :meth:`send_disconnect`. After each of
    these, write the attached connection's ``data_to_send()`` out and re-arm
    its timer.
    """

    __slots__ = (
        "_final",
        "agent_id",
        "capabilities",
        "client_present",
        "connection",
        "consumed",
        "end_code",
        "end_reason",
        "ended",
        "grace_deadline",
        "received",
        "send_buffer",
        "session_id",
        "table",
        "tenant_id",
        "winsize",
    )

    def __init__(
        self,
        table: AgentSessions,
        session_id: int,
        tenant_id: int,
        agent_id: int,
        capabilities: int,
    ) -> None:
        #: The table the session is registered in.
        self.table = table
        #: Session id, from the CONNECT header.
        self.session_id = session_id
        #: Tenant id of the client, from CONNECT.
        self.tenant_id = tenant_id
        #: Agent id the client asked for, from CONNECT.
        self.agent_id = agent_id
        #: The client's capability bits as the daemon relayed them in CONNECT.
        self.capabilities = capabilities
        #: The agent's DATA frames the client has not acknowledged (SPEC §4, §14).
        self.send_buffer = SendBuffer(table.ring_size)
        #: Client DATA that arrived: duplicate drop; ``last_rx`` goes into RESUMED.
        self.received = ReceiveState()
        #: Client DATA the application took: ACK pacing; ``take_ack()`` is the ACK value.
        self.consumed = ReceiveState(
            ack_delay=table.ack_delay, ack_frames=table.ack_frames, ack_bytes=table.ack_bytes
        )
        #: The latest WINSIZE, or None before the first (SPEC §13).
        self.winsize: WinSize | None = None
        #: False after the daemon's SUSPEND or a lost connection, until its RESUMED.
        self.client_present = True
        #: The connection the session is attached to, or None while detached.
        self.connection: AgentConnection | None = None
        #: When a detached session expires, or None while attached.
        self.grace_deadline: float | None = None
        #: True once DISCONNECT was sent or received, or the grace ran out.
        self.ended = False
        #: DISCONNECT code the session ended with (either side), if any.
        self.end_code: int | None = None
        #: DISCONNECT reason the session ended with.
        self.end_reason = ""
        # Our DISCONNECT, written while detached: sent after the replay on RESUME.
        self._final: bytes | None = None

    def __repr__(self) -> str:
        state = "ended" if self.ended else "attached" if self.connection else "detached"
        return f"AgentSession(id={self.session_id}, {state})"

    @property
    def writable(self) -> bool:
        """True while the application may write DATA (not ended, buffer not full)."""
        return not self.ended and not self.send_buffer.full

    def send_data(self, payload: Buffer, *, more: bool = False) -> None:
        """Number a DATA frame, keep it until the client acknowledges it, queue it.

        ``payload`` is at most 65535 bytes; ``more`` sets FLAGS MORE (the
        message continues). While detached the frame is only kept, and goes
        out in the replay after RESUME. Raises
        :class:`~clawterm.errors.LocalProtocolError` once the session ended.
        """
        if self.ended:
            raise LocalProtocolError("session has ended")
        if len(payload) > MAX_PAYLOAD:
            raise LocalProtocolError(f"DATA payload above {MAX_PAYLOAD} bytes")
        raw = self.send_buffer.encode_data(self.session_id, payload, _MORE if more else 0)
        conn = self.connection
        if conn is not None:
            conn._out.append(raw)

    def data_consumed(self, seq: int, size: int, now: float) -> None:
        """The application took DATA frame ``seq`` (``size`` payload bytes).

        May queue an ACK on the attached connection (SPEC §4 pacing); a
        detached session acknowledges after RESUME.
        """
        consumed = self.consumed
        consumed.receive(seq, size, now)
        conn = self.connection
        if conn is not None and consumed.ack_due(now):
            conn._send_ack()

    def send_disconnect(self, code: int | None = None, reason: str = "") -> None:
        """End the session with DISCONNECT (SPEC §10); a second call does nothing.

        The DISCONNECT goes out after every DATA frame written before it.
        Attached: the connection then closes (``should_close``). Detached: it
        is kept and delivered after the replay if the daemon RESUMEs within
        the grace period.
        """
        if self.ended:
            return
        self.ended = True
        self.end_code = code
        self.end_reason = reason
        raw = encode_frame(
            FrameType.DISCONNECT,
            self.session_id,
            self.send_buffer.last_seq,
            Disconnect(code, reason).encode(),
        )
        conn = self.connection
        if conn is None:
            self._final = raw
            return
        conn._out.append(raw)
        conn._closing()
        self.connection = None
        self.table.discard(self)

    def _frame(self, type: FrameType, payload: Buffer = b"", flags: int = 0) -> bytes:
        # Non-DATA frames carry our last DATA SEQ (SPEC §4).
        return encode_frame(type, self.session_id, self.send_buffer.last_seq, payload, flags)


class AgentSessions:
    """The sessions of one agent socket, and their grace periods (SPEC §14).

    Make one :class:`AgentConnection` per accepted connection with
    :meth:`connection`. Arm a timer for :meth:`get_timer` and call
    :meth:`handle_timer` when it fires; re-arm after every
    :class:`~clawterm.agent.events.SessionDetached` or
    :class:`~clawterm.agent.events.SessionReattached`.
    """

    def __init__(
        self,
        *,
        grace: float = DEFAULT_AGENT_GRACE,
        ring_size: int = DEFAULT_RING_SIZE,
        max_payload: int = MAX_PAYLOAD,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        ack_delay: float | None = None,
        ack_frames: int | None = None,
        ack_bytes: int | None = None,
    ) -> None:
        defaults = ReceiveState()
        #: Seconds a detached session waits for a RESUME.
        self.grace = grace
        #: Bytes of unacknowledged DATA at which writing stops (SPEC §14).
        self.ring_size = ring_size
        #: Largest payload accepted from the daemon (SPEC §2).
        self.max_payload = max_payload
        #: Seconds a new connection has to send CONNECT or RESUME.
        self.handshake_timeout = handshake_timeout
        #: ACK pacing (SPEC §4); defaults 100 ms, 32 frames, 32 KiB.
        self.ack_delay = defaults.ack_delay if ack_delay is None else ack_delay
        self.ack_frames = defaults.ack_frames if ack_frames is None else ack_frames
        self.ack_bytes = defaults.ack_bytes if ack_bytes is None else ack_bytes
        #: False once the agent is stopping: CONNECT and RESUME are refused.
        self.accepting = True
        #: Live sessions by id (attached, detached, or holding an undelivered DISCONNECT).
        self.sessions: dict[int, AgentSession] = {}
        self._detached: dict[int, AgentSession] = {}

    def __len__(self) -> int:
        return len(self.sessions)

    def connection(self, now: float) -> AgentConnection:
        """A core for a connection the daemon just opened."""
        return AgentConnection(self, now)

    def discard(self, session: AgentSession) -> None:
        """Forget ``session``: it can no longer be resumed."""
        self.sessions.pop(session.session_id, None)
        self._detached.pop(session.session_id, None)
        session.grace_deadline = None

    def detach(self, session: AgentSession, now: float) -> None:
        """``session`` lost its connection: start its grace period."""
        session.connection = None
        session.client_present = False
        session.grace_deadline = now + self.grace
        self._detached[session.session_id] = session

    def _attach(self, session: AgentSession, conn: AgentConnection) -> None:
        session.connection = conn
        session.grace_deadline = None
        self._detached.pop(session.session_id, None)

    def get_timer(self) -> float | None:
        """The earliest grace deadline, or None."""
        return min(
            (s.grace_deadline for s in self._detached.values() if s.grace_deadline is not None),
            default=None,
        )

    def handle_timer(self, now: float) -> list[AgentSession]:
        """End and forget every session whose grace ran out; returns them.

        Their ``end_code`` is TIMEOUT; nothing goes on the wire (no connection).
        """
        expired = [
            s
            for s in self._detached.values()
            if s.grace_deadline is not None and now >= s.grace_deadline
        ]
        for session in expired:
            self.discard(session)
            if not session.ended:
                session.ended = True
                session.end_code = ErrorCode.TIMEOUT
                session.end_reason = "the daemon did not resume the session within the grace period"
            session._final = None
        return expired


class ConnectionState(Enum):
    """Where a daemon connection is."""

    HANDSHAKE = "handshake"  #: waiting for CONNECT or RESUME
    OPEN = "open"  #: carrying a session
    CLOSING = "closing"  #: write out data_to_send(), then close the transport
    CLOSED = "closed"  #: the transport is gone


class AgentConnection:
    """One connection from the daemon on the agent socket (sans-I/O).

    After every input (:meth:`receive_data`, :meth:`receive_eof`,
    :meth:`connection_lost`, :meth:`handle_timer`) and every write through
    the session you must: act on :meth:`events_received`, write
    :meth:`data_to_send` to the transport, close the transport once
    :attr:`should_close` (after writing), and re-arm a timer for
    :meth:`get_timer`.
    """

    def __init__(self, table: AgentSessions, now: float) -> None:
        self._table = table
        self._decoder = FrameDecoder(table.max_payload)
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self._handshake_deadline: float | None = now + table.handshake_timeout
        #: Where the connection is.
        self.state = ConnectionState.HANDSHAKE
        #: The session carried, once CONNECT or RESUME succeeded.
        self.session: AgentSession | None = None
        #: Frames of unknown TYPE, ignored (SPEC §3).
        self.unknown_frames = 0
        #: Duplicate DATA frames dropped (SPEC §4).
        self.duplicates = 0

    def __repr__(self) -> str:
        sid = self.session.session_id if self.session else None
        return f"AgentConnection({self.state.value}, session={sid})"

    # -- outputs -------------------------------------------------------------

    def events_received(self) -> list[Event]:
        """The events since the last call, in order."""
        events = self._events
        self._events = []
        return events

    def data_to_send(self) -> bytes:
        """The bytes to write to the transport now, in one write."""
        out = self._out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        return data

    def get_timer(self) -> float | None:
        """When to call :meth:`handle_timer`, or None."""
        if self.state is ConnectionState.HANDSHAKE:
            return self._handshake_deadline
        if self.state is ConnectionState.OPEN and self.session is not None:
            return self.session.consumed.get_timer()
        return None

    @property
    def should_close(self) -> bool:
        """True once the transport must be closed (after writing data_to_send())."""
        return self.state is ConnectionState.CLOSING

    # -- inputs --------------------------------------------------------------

    def receive_data(self, data: Buffer, now: float) -> None:
        """Feed bytes read from the transport."""
        if self.state is not ConnectionState.HANDSHAKE and self.state is not ConnectionState.OPEN:
            return
        try:
            for frame in self._decoder.feed(data):
                if self.state is ConnectionState.OPEN:
                    self._handle_open(frame, now)
                elif self.state is ConnectionState.HANDSHAKE:
                    self._handle_handshake(frame, now)
                else:
                    break
        except RemoteProtocolError as exc:
            self._fail(exc.code, exc.message, now)

    def receive_eof(self, now: float) -> None:
        """The daemon closed its side: same as :meth:`connection_lost`."""
        self.connection_lost(now)

    def connection_lost(self, now: float) -> None:
        """The transport is gone. A session still attached is detached (grace starts)."""
        if self.state is ConnectionState.CLOSED:
            return
        self.state = ConnectionState.CLOSED
        self._out.clear()
        self._release_session(now)

    def handle_timer(self, now: float) -> None:
        """Call when :meth:`get_timer`'s time has come."""
        if self.state is ConnectionState.HANDSHAKE:
            if self._handshake_deadline is not None and now >= self._handshake_deadline:
                self._fail(ErrorCode.TIMEOUT, "no CONNECT or RESUME in time", now)
        elif (
            self.state is ConnectionState.OPEN
            and self.session is not None
            and self.session.consumed.ack_due(now)
        ):
            self._send_ack()

    # -- handshake (SPEC §5, §6, §14) ----------------------------------------

    def _handle_handshake(self, frame: Frame, now: float) -> None:
        typ = frame.type
        if typ == FrameType.CONNECT:
            self._on_connect(frame, now)
        elif typ == FrameType.RESUME:
            self._on_resume(frame, now)
        elif typ == FrameType.KEEPALIVE:
            self._on_keepalive(frame, frame.session_id)
        elif typ == FrameType.ERROR:
            self._on_error(frame, now)
        elif typ in _KNOWN_TYPES:
            raise ProtocolViolation(f"expected CONNECT or RESUME, got {FrameType(typ).name}")
        else:
            self.unknown_frames += 1

    def _on_connect(self, frame: Frame, now: float) -> None:
        connect = Connect.decode(frame.payload)
        sid = frame.session_id
        table = self._table
        if sid == 0:
            raise ProtocolViolation("CONNECT on the agent leg carries the session id")
        if not table.accepting:
            self._fail(ErrorCode.SHUTTING_DOWN, "agent shutting down", now, session_id=sid)
            return
        if sid in table.sessions:
            raise ProtocolViolation("session id already in use")
        session = AgentSession(
            table, sid, connect.tenant_id, connect.agent_id, connect.capabilities
        )
        table.sessions[sid] = session
        table._attach(session, self)
        self._open(session)
        accept = Accept(sid, PROTOCOL_VERSION, AGENT_CAPABILITIES, bytes(16), 0)
        self._out.append(session._frame(FrameType.ACCEPT, accept.encode()))
        self._events.append(SessionOpened(session))

    def _on_resume(self, frame: Frame, now: float) -> None:
        resume = Resume.decode(frame.payload)
        if resume.legacy:
            raise BadPayload("RESUME payload of 4 bytes (agent leg: 24)")
        sid = resume.session_id
        if frame.session_id != sid:
            raise ProtocolViolation("RESUME session id differs from the header's")
        table = self._table
        if not table.accepting:
            self._fail(ErrorCode.SHUTTING_DOWN, "agent shutting down", now, session_id=sid)
            return
        session = table.sessions.get(sid)
        if session is None:
            # Unknown or expired; an ERROR never touches other sessions (SPEC §12).
            self._fail(ErrorCode.NO_SUCH_SESSION, "no such session", now, session_id=sid)
            return
        replaced = session.connection
        if replaced is not None:
            # A newer connection wins (SPEC §6 applied to the agent leg).
            replaced._taken_over()
        table._attach(session, self)
        self._open(session)
        buf = session.send_buffer
        last_rx = resume.last_rx_seq or 0
        if is_newer(last_rx, buf.last_seq):
            # The daemon cannot have received more than we sent; do not skip SEQs.
            last_rx = buf.last_seq
        replay = buf.resumed(last_rx)
        out = self._out
        out.append(
            session._frame(FrameType.RESUMED, Resumed(sid, session.received.last_rx).encode())
        )
        out.extend(replay)
        # client_present stays as it is: a client comes back through the
        # daemon's RESUMED notification, like any other return.
        self._events.append(SessionReattached(session, last_rx, replaced))
        final = session._final
        if final is not None:
            out.append(final)
            session._final = None
            session.connection = None
            table.discard(session)
            self._closing()

    def _open(self, session: AgentSession) -> None:
        self.session = session
        self.state = ConnectionState.OPEN
        self._handshake_deadline = None

    # -- an open session -----------------------------------------------------

    def _handle_open(self, frame: Frame, now: float) -> None:
        session = self.session
        assert session is not None
        if frame.session_id != session.session_id:
            raise ProtocolViolation("frame for another session")
        typ = frame.type
        if typ == _DATA:
            payload = frame.payload
            size = len(payload)
            if session.received.receive(frame.seq, size, now):
                self._events.append(
                    DataReceived(frame.seq, bytes(payload), bool(frame.flags & _MORE))
                )
            else:
                self.duplicates += 1
        elif typ == _ACK:
            self._on_ack(session, Ack.decode(frame.payload).seq)
        elif typ == FrameType.KEEPALIVE:
            self._on_keepalive(frame, session.session_id)
        elif typ == FrameType.WINSIZE:
            winsize = WinSize.decode(frame.payload)
            session.winsize = winsize
            self._events.append(WindowChanged(winsize))
        elif typ == FrameType.SUSPEND:
            check_empty(FrameType.SUSPEND, frame.payload)
            session.client_present = False
            self._events.append(ClientSuspended())
        elif typ == FrameType.RESUMED:
            # Daemon → agent RESUMED is the empty "client back" form (SPEC §14).
            if len(frame.payload):
                raise ProtocolViolation("RESUMED toward the agent is empty")
            session.client_present = True
            self._events.append(ClientResumed())
        elif typ == FrameType.NACK:
            self._out.extend(session.send_buffer.resend_after(Nack.decode(frame.payload).seq))
        elif typ == FrameType.DISCONNECT:
            disconnect = Disconnect.decode(frame.payload)
            self._table.discard(session)
            session.connection = None
            if not session.ended:
                session.ended = True
                session.end_code = disconnect.code
                session.end_reason = disconnect.reason
            session._final = None
            self._closing()
            self._events.append(SessionEnded(disconnect.code, disconnect.reason))
        elif typ == FrameType.ERROR:
            self._on_error(frame, now)
        elif typ in _KNOWN_TYPES:
            raise ProtocolViolation(f"unexpected {FrameType(typ).name} on an open session")
        else:
            self.unknown_frames += 1

    def _on_ack(self, session: AgentSession, seq: int | None) -> None:
        buf = session.send_buffer
        if seq is None:
            # Legacy empty ACK: the oldest unacknowledged frame (SPEC §4).
            held = buf.resend_after(buf.acked)
            if not held:
                return
            seq = int.from_bytes(held[0][5:9], "big")
        elif is_newer(seq, buf.last_seq):
            # Never release frames beyond what we sent.
            seq = buf.last_seq
        if buf.ack(seq):
            self._events.append(DataAcknowledged(seq))

    def _on_keepalive(self, frame: Frame, session_id: int) -> None:
        check_empty(FrameType.KEEPALIVE, frame.payload)
        # Only PING is answered; answering anything else could loop (SPEC §8).
        if frame.flags & KeepaliveFlag.PING:
            seq = self.session.send_buffer.last_seq if self.session else 0
            self._out.append(
                encode_frame(FrameType.KEEPALIVE, session_id, seq, b"", KeepaliveFlag.PONG)
            )

    def _on_error(self, frame: Frame, now: float) -> None:
        error = Error.decode(frame.payload)
        # An ERROR never ends a session by itself (SPEC §12): detach, keep it.
        self._events.append(ErrorReceived(error.code, error.message))
        self._closing()
        self._release_session(now)

    def _send_ack(self) -> None:
        session = self.session
        assert session is not None
        seq = session.consumed.take_ack()
        self._out.append(session._frame(_ACK, Ack(seq).encode()))

    # -- ending --------------------------------------------------------------

    def _closing(self) -> None:
        if self.state is not ConnectionState.CLOSED:
            self.state = ConnectionState.CLOSING

    def _fail(self, code: int, message: str, now: float, *, session_id: int | None = None) -> None:
        if session_id is None:
            session_id = self.session.session_id if self.session else 0
        seq = self.session.send_buffer.last_seq if self.session else 0
        error = Error(code, message).encode()
        self._out.append(encode_frame(FrameType.ERROR, session_id, seq, error))
        self._events.append(ConnectionFailed(code, message))
        self._closing()
        self._release_session(now)

    def _taken_over(self) -> None:
        session = self.session
        sid = session.session_id if session else 0
        seq = session.send_buffer.last_seq if session else 0
        message = "session resumed on another connection"
        self._out.append(
            encode_frame(FrameType.ERROR, sid, seq, Error(ErrorCode.TAKEN_OVER, message).encode())
        )
        self._events.append(ConnectionFailed(ErrorCode.TAKEN_OVER, message))
        self._closing()

    def _release_session(self, now: float) -> None:
        session = self.session
        if session is None or session.connection is not self:
            return
        self._table.detach(session, now)
        self._events.append(SessionDetached(session))


_KNOWN_TYPES = frozenset(int(t) for t in FrameType)
