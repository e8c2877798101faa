"""The client's session core, sans I/O (SPEC §4–§10, §12).

One :class:`ClientConnection` is one client session, and it outlives its
transports: when a transport is lost it asks for another (with backoff),
sends RESUME and carries on. It never touches a socket or a clock.

How it is driven (the adapter's loop, STYLE §1–2):

* inputs — :meth:`transport_opened` once a transport the core asked for is
  up, :meth:`receive_data` with the bytes it delivers, :meth:`receive_eof`
  when it ends (or could not be made), :meth:`handle_timer` when the time
  from :meth:`get_timer` has come;
* commands, which only queue output — :meth:`send_data`,
  :meth:`send_winsize`, :meth:`send_suspend`, :meth:`send_disconnect`,
  :meth:`fail`;
* outputs — :meth:`data_to_send` (bytes for the current transport),
  :meth:`events_received` (:mod:`~clawterm.client.events`, including the
  orders :class:`~clawterm.client.events.OpenTransport` and
  :class:`~clawterm.client.events.CloseTransport`), :meth:`get_timer`.

After every input or command the adapter must write ``data_to_send()`` to
the current transport, then act on the events in order, then re-arm its
timer from ``get_timer()``.

Transport phases: IDLE (none; maybe a reconnect is scheduled) → OPENING
(asked for one) → HANDSHAKE (CONNECT or RESUME sent) → OPEN (ACCEPT or
RESUMED received; DATA flows) → IDLE. Session states are
:class:`~clawterm.client.events.ClientState`.

Sequencing is the core's (:mod:`clawterm.sequencing`): a
:class:`~clawterm.sequencing.SendBuffer` keeps every DATA frame until the
agent ACKs it and gives what to resend after RESUMED or NACK; a
:class:`~clawterm.sequencing.ReceiveState` drops replayed duplicates and
paces ACKs. Application bytes are numbered only while a transport is OPEN:
until then they wait, unnumbered, in a queue, so that a process resuming a
session it did not create numbers them above the daemon's last_rx_seq
(SPEC §6). That queue and the send buffer together are bounded by
``send_limit``: :attr:`ClientConnection.send_blocked` tells the adapter to
stop taking bytes from the application (backpressure, never drops).
"""

from __future__ import annotations

import os
import random as _random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from ..constants import (
    ACK_EVERY_BYTES,
    ACK_EVERY_FRAMES,
    ACK_MAX_DELAY,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_KEEPALIVE,
    DEFAULT_RING_SIZE,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    Capability,
    DataFlag,
    ErrorCode,
    FrameType,
    KeepaliveFlag,
    ResumedFlag,
)
from ..errors import LocalProtocolError, ProtocolViolation, RemoteProtocolError
from ..frame import Buffer, Frame, FrameDecoder, encode_frame
from ..payloads import (
    Accept,
    Ack,
    Connect,
    Disconnect,
    Error,
    Keepalive,
    Nack,
    Resume,
    Resumed,
    WinSize,
)
from ..sequencing import ReceiveState, SendBuffer
from ..serial import is_newer
from .backoff import Backoff
from .events import (
    Accepted,
    ClientState,
    CloseReason,
    CloseTransport,
    DataReceived,
    Event,
    OpenTransport,
    StateChanged,
)
from .events import Resumed as ResumedEvent

__all__ = [
    "CLIENT_CAPABILITIES",
    "RETRYABLE_ERRORS",
    "ClientConfig",
    "ClientConnection",
    "ResumeTicket",
]

#: What this client announces in CONNECT: ACK | RESUME2 | WINSIZE (SPEC §5).
CLIENT_CAPABILITIES = int(Capability.ACK | Capability.RESUME2 | Capability.WINSIZE)

#: ERRORs after which a resumable session reconnects instead of ending (SPEC §12:
#: an ERROR never ends a session by itself; these say "come back later").
RETRYABLE_ERRORS = frozenset(
    {ErrorCode.SHUTTING_DOWN, ErrorCode.TIMEOUT, ErrorCode.LIMIT, ErrorCode.INTERNAL}
)

_END_REASONS: dict[int, CloseReason] = {
    ErrorCode.TAKEN_OVER: CloseReason.TAKEN_OVER,
    ErrorCode.NO_SUCH_SESSION: CloseReason.NO_SUCH_SESSION,
    ErrorCode.AUTH_FAILED: CloseReason.AUTH_FAILED,
}

_KNOWN_TYPES = frozenset(int(t) for t in FrameType)
# Frame types that travel only client → daemon: ignored if the daemon sends them.
_CLIENT_ONLY = frozenset(
    {FrameType.CONNECT, FrameType.RESUME, FrameType.SUSPEND, FrameType.WINSIZE}
)
# Frames that must carry our session id once the session is known (SPEC §5).
_SESSION_CHECKED = frozenset(
    {FrameType.DATA, FrameType.ACK, FrameType.NACK, FrameType.DISCONNECT, FrameType.RESUMED}
)


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Limits and timings of a client session (STYLE §8)."""

    #: Capability bits announced in CONNECT.
    capabilities: int = CLIENT_CAPABILITIES
    #: Unacknowledged plus not-yet-sent bytes at which sending blocks (SPEC §4, §14).
    send_limit: int = DEFAULT_RING_SIZE
    #: Largest DATA payload this client sends; longer writes are split.
    max_frame_payload: int = 16384
    #: Largest payload accepted from the daemon.
    max_payload: int = MAX_PAYLOAD
    #: Seconds for CONNECT→ACCEPT or RESUME→RESUMED before the transport is dropped.
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    #: Keepalive interval when the daemon gave none (short ACCEPT, or a fresh RESUME).
    keepalive: float = DEFAULT_KEEPALIVE
    #: A transport with nothing received for this many intervals is dead (SPEC §8).
    dead_after: int = 3
    #: Reconnect schedule.
    backoff: Backoff = field(default_factory=Backoff)
    #: ACK pacing (SPEC §4).
    ack_delay: float = ACK_MAX_DELAY
    ack_frames: int = ACK_EVERY_FRAMES
    ack_bytes: int = ACK_EVERY_BYTES

    def __post_init__(self) -> None:
        if not 1 <= self.max_frame_payload <= MAX_PAYLOAD:
            raise ValueError(f"max_frame_payload must be 1..{MAX_PAYLOAD}")
        if self.send_limit < 1:
            raise ValueError("send_limit must be positive")
        if not (self.keepalive > 0 and self.handshake_timeout > 0 and self.dead_after >= 1):
            raise ValueError("keepalive and handshake_timeout must be > 0, dead_after >= 1")


@dataclass(frozen=True, slots=True)
class ResumeTicket:
    """What a client needs to RESUME a session it did not open in this process."""

    #: The session id.
    session_id: int
    #: The 16-byte resume token from ACCEPT (a secret).
    resume_token: bytes
    #: Highest DATA SEQ already received in order; 0 asks for all retained output.
    last_rx_seq: int = 0
    #: The keepalive interval the ACCEPT gave, if known.
    keepalive: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.session_id <= 0xFFFFFFFF:
            raise ValueError("session id must be 1..4294967295")
        if len(self.resume_token) != 16:
            raise ValueError("a resume token is 16 bytes")
        if not 0 <= self.last_rx_seq <= 0xFFFFFFFF:
            raise ValueError("last_rx_seq must be a u32")


class _Phase(Enum):
    IDLE = "idle"
    OPENING = "opening"
    HANDSHAKE = "handshake"
    OPEN = "open"


class ClientConnection:
    """One client session across any number of transports. Sans-I/O.

    Give either ``token`` (32 bytes; a new session is opened with CONNECT to
    ``tenant_id``/``agent_id``) or ``resume`` (RESUME an existing session).
    The first event is already queued: :class:`OpenTransport`.

    ``random`` (uniform in [0, 1), for backoff jitter) and ``urandom`` (for
    the CONNECT nonce) can be replaced for tests.
    """

    def __init__(
        self,
        *,
        tenant_id: int = 0,
        agent_id: int = 1,
        token: bytes | None = None,
        resume: ResumeTicket | None = None,
        config: ClientConfig | None = None,
        random: Callable[[], float] = _random.random,
        urandom: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if (token is None) == (resume is None):
            raise LocalProtocolError("give either a token (CONNECT) or a resume ticket (RESUME)")
        if token is not None and len(token) != 32:
            raise LocalProtocolError("a token is 32 bytes")
        cfg = config if config is not None else ClientConfig()
        self.config = cfg
        self.tenant_id = tenant_id
        self.agent_id = agent_id
        self._token = token
        self._random = random
        self._urandom = urandom

        #: The client state.
        self.state = ClientState.CONNECTING
        #: Why the session is SUSPENDED or CLOSED (None before).
        self.close_reason: CloseReason | None = None
        #: The DISCONNECT or ERROR code behind :attr:`close_reason`, if any.
        self.close_code: int | None = None
        #: Detail text behind :attr:`close_reason`.
        self.close_message = ""
        #: The session id (0 until ACCEPT).
        self.session_id = 0
        #: The resume token (None until ACCEPT, or if the daemon gave none).
        self.resume_token: bytes | None = None
        #: The keepalive interval in force, seconds.
        self.keepalive = cfg.keepalive
        #: The daemon's capability bits (assumed all when resuming from a ticket).
        self.server_capabilities = int(Capability.ACK | Capability.RESUME2 | Capability.WINSIZE)
        #: True once ACCEPT or a RESUMED arrived in this process.
        self.established = False
        #: How many RESUMEDs carried GAP.
        self.gaps = 0
        #: Frames of listed-but-unexpected or unknown types ignored (SPEC §3).
        self.ignored_frames = 0

        self._send = SendBuffer(cfg.send_limit)
        self._rx = ReceiveState(
            0, ack_delay=cfg.ack_delay, ack_frames=cfg.ack_frames, ack_bytes=cfg.ack_bytes
        )
        if resume is not None:
            self.session_id = resume.session_id
            self.resume_token = resume.resume_token
            self._rx.last_rx = resume.last_rx_seq
            if resume.keepalive:
                self.keepalive = resume.keepalive
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        self._winsize: WinSize | None = None

        self._phase = _Phase.OPENING
        self._decoder: FrameDecoder | None = None
        self._out = bytearray()
        self._events: list[Event] = [OpenTransport(0)]
        self._attempt = 0
        self._reconnect_at: float | None = None
        self._down_since: float | None = None
        self._handshake_deadline: float | None = None
        self._last_sent = 0.0
        self._last_received = 0.0
        self._reading_paused = False
        self._awaiting = FrameType.ACCEPT

    # ------------------------------------------------------------------ queries

    @property
    def last_rx_seq(self) -> int:
        """Highest DATA SEQ received in order (what RESUME will carry)."""
        return self._rx.last_rx

    @property
    def last_tx_seq(self) -> int:
        """SEQ of the last DATA frame numbered (0: none)."""
        return self._send.last_seq

    @property
    def unacked_bytes(self) -> int:
        """Encoded bytes of DATA frames sent and not yet acknowledged by the agent."""
        return self._send.unacked_bytes

    @property
    def unsent_bytes(self) -> int:
        """Application bytes accepted but not yet numbered and written."""
        return self._pending_bytes

    @property
    def send_blocked(self) -> bool:
        """True while the application must not hand over more bytes (backpressure)."""
        return self._send.unacked_bytes + self._pending_bytes >= self.config.send_limit

    @property
    def transport_open(self) -> bool:
        """True while a transport is past its handshake (DATA flows)."""
        return self._phase is _Phase.OPEN

    @property
    def finished(self) -> bool:
        """True once SUSPENDED or CLOSED: nothing more will happen."""
        return self.state in (ClientState.SUSPENDED, ClientState.CLOSED)

    @property
    def resumable(self) -> bool:
        """True if a lost transport can be replaced with RESUME."""
        return self.session_id != 0 and self.resume_token is not None

    # ------------------------------------------------------------------ outputs

    def data_to_send(self) -> bytes:
        """Bytes to write to the current transport, in one write."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def events_received(self) -> list[Event]:
        """Events since the last call, in order."""
        events = self._events
        self._events = []
        return events

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called (None: no timer)."""
        phase = self._phase
        if phase is _Phase.IDLE:
            return self._reconnect_at
        if phase is _Phase.OPENING:
            return None
        times: list[float] = []
        if not self._reading_paused:
            times.append(self._last_received + self.config.dead_after * self.keepalive)
        if phase is _Phase.HANDSHAKE:
            assert self._handshake_deadline is not None
            times.append(self._handshake_deadline)
        else:
            times.append(self._last_sent + self.keepalive)
            ack = self._rx.get_timer()
            if ack is not None:
                times.append(ack)
        return min(times)

    # ------------------------------------------------------------------ inputs

    def transport_opened(self, now: float) -> None:
        """The transport asked for by :class:`OpenTransport` is up and trusted.

        Queues CONNECT or RESUME. Raises LocalProtocolError if no transport
        was asked for.
        """
        if self._phase is not _Phase.OPENING:
            raise LocalProtocolError("transport_opened() without an OpenTransport")
        self._phase = _Phase.HANDSHAKE
        self._decoder = FrameDecoder(self.config.max_payload)
        self._out.clear()
        self._handshake_deadline = now + self.config.handshake_timeout
        self._last_received = now
        if self.session_id == 0:
            assert self._token is not None
            self._awaiting = FrameType.ACCEPT
            connect = Connect(
                PROTOCOL_VERSION,
                self.config.capabilities,
                self.tenant_id,
                self.agent_id,
                self._token,
                self._urandom(16),
            )
            # SPEC §5: CONNECT carries SESSION_ID 0 and SEQ 0.
            self._queue(encode_frame(FrameType.CONNECT, 0, 0, connect.encode()), now)
        else:
            assert self.resume_token is not None
            self._awaiting = FrameType.RESUMED
            # SPEC §6: last_rx_seq is the highest DATA SEQ received in order.
            resume = Resume(self.session_id, self._rx.last_rx, self.resume_token)
            self._queue(self._frame(FrameType.RESUME, resume.encode()), now)

    def receive_data(self, data: Buffer, now: float) -> None:
        """Bytes from the current transport. Never raises for what the peer sent."""
        if self._phase not in (_Phase.HANDSHAKE, _Phase.OPEN):
            return
        assert self._decoder is not None
        self._last_received = now
        try:
            for frame in self._decoder.feed(data):
                self._handle_frame(frame, now)
                if not self._reading():
                    break  # the transport was dropped; the rest of it is not ours
        except RemoteProtocolError as exc:
            self._violation(exc, now)

    def receive_eof(self, now: float, reason: str = "") -> None:
        """The current transport ended, or the one asked for could not be made."""
        if self._phase is _Phase.IDLE:
            return
        self._forget_transport()
        self._lost(now, reason or "connection closed")

    def handle_timer(self, now: float) -> None:
        """Run what is due at ``now``: reconnects, timeouts, ACKs, keepalives."""
        phase = self._phase
        if phase is _Phase.IDLE:
            if self._reconnect_at is not None and now >= self._reconnect_at:
                self._reconnect_at = None
                self._phase = _Phase.OPENING
                self._events.append(OpenTransport(self._attempt))
            return
        if phase is _Phase.OPENING:
            return
        if phase is _Phase.HANDSHAKE:
            assert self._handshake_deadline is not None
            if now >= self._handshake_deadline:
                self._drop(abort=True)
                self._lost(now, f"handshake took longer than {self.config.handshake_timeout:g} s")
                return
        dead = self.config.dead_after * self.keepalive
        if not self._reading_paused and now >= self._last_received + dead:
            # SPEC §8: nothing received for 3 intervals: the transport is dead.
            self._drop(abort=True)
            self._lost(now, f"nothing received for {dead:g} s")
            return
        if phase is _Phase.OPEN:
            if self._rx.ack_due(now):
                self._send_ack(now)
            if now >= self._last_sent + self.keepalive:
                # SPEC §8: idle for an interval → KEEPALIVE (PING, so the daemon answers).
                self._queue(self._frame(FrameType.KEEPALIVE, b"", KeepaliveFlag.PING), now)

    def set_reading_paused(self, paused: bool, now: float) -> None:
        """The adapter stopped (or resumed) reading the transport.

        While paused nothing can be received, so the liveness check is off;
        it restarts from ``now`` when reading resumes.
        """
        if self._reading_paused and not paused:
            self._last_received = now
        self._reading_paused = paused

    # ------------------------------------------------------------------ commands

    def send_data(self, data: Buffer, now: float) -> None:
        """Queue application bytes for the agent.

        Split into DATA frames of at most ``max_frame_payload`` bytes and
        written as soon as a transport is OPEN. The caller must respect
        :attr:`send_blocked` (this method never refuses bytes, so ignoring it
        means unbounded memory). Raises LocalProtocolError once SUSPENDED or
        CLOSED. Empty data sends nothing.
        """
        if self.finished:
            raise LocalProtocolError(f"cannot send: the session is {self.state.value}")
        view = memoryview(data)
        step = self.config.max_frame_payload
        for start in range(0, len(view), step):
            chunk = bytes(view[start : start + step])
            self._pending.append(chunk)
            self._pending_bytes += len(chunk)
        if self._phase is _Phase.OPEN:
            self._flush_pending(now)

    def send_winsize(
        self,
        rows: int,
        cols: int,
        xpixel: int | None = None,
        ypixel: int | None = None,
        *,
        now: float,
    ) -> None:
        """Set the terminal size (SPEC §13): sent now if OPEN, and after every RESUMED."""
        winsize = WinSize(rows, cols, xpixel, ypixel)
        payload = winsize.encode()  # raises LocalProtocolError if out of range
        self._winsize = winsize
        if self._phase is _Phase.OPEN:
            self._queue(self._frame(FrameType.WINSIZE, payload), now)

    def send_suspend(self, now: float) -> None:
        """Leave on purpose, keeping the session warm (SPEC §9).

        If a transport is OPEN, SUSPEND is sent after everything queued and
        the transport closed after flushing. Otherwise the transport (if
        any) is dropped: the daemon suspends a session whose transport is
        lost anyway. Bytes not yet written (:attr:`unsent_bytes`) stay
        unsent. No-op if already SUSPENDED; LocalProtocolError if CLOSED.
        """
        if self.state is ClientState.SUSPENDED:
            return
        if self.state is ClientState.CLOSED:
            raise LocalProtocolError("cannot suspend: the session is closed")
        if self._phase is _Phase.OPEN:
            self._queue(self._frame(FrameType.SUSPEND, b""), now)
            self._drop(abort=False)
        elif self._phase is not _Phase.IDLE:
            self._drop(abort=True)
        self._end(ClientState.SUSPENDED, CloseReason.SUSPENDED)

    def send_disconnect(self, code: int | None = None, reason: str = "", *, now: float) -> None:
        """End the session for good (SPEC §10).

        If a transport is OPEN, DISCONNECT goes after everything queued. If
        not, the session is only given up here: the daemon keeps it
        suspended until its detached TTL (the adapter should wait for a
        transport first). No-op once SUSPENDED or CLOSED.
        """
        if self.finished:
            return
        payload = Disconnect(code, reason).encode()
        if self._phase is _Phase.OPEN:
            self._queue(self._frame(FrameType.DISCONNECT, payload), now)
            self._drop(abort=False)
        elif self._phase is not _Phase.IDLE:
            self._drop(abort=True)
        self._end(ClientState.CLOSED, CloseReason.CLOSED, code, reason)

    def fail(self, reason: CloseReason, message: str, now: float) -> None:
        """End the session here for a reason found outside the core.

        For example a refused certificate (UNTRUSTED). The transport, if
        any, is aborted. No-op once SUSPENDED or CLOSED.
        """
        if self.finished:
            return
        if self._phase is not _Phase.IDLE:
            self._drop(abort=True)
        self._end(ClientState.CLOSED, reason, None, message)

    # ------------------------------------------------------------------ frames

    def _handle_frame(self, frame: Frame, now: float) -> None:
        t = frame.type
        if t == FrameType.ERROR:
            self._on_error(frame, now)
            return
        if self.session_id and t in _SESSION_CHECKED and frame.session_id != self.session_id:
            raise ProtocolViolation(
                f"frame for session {frame.session_id}, expected {self.session_id}"
            )
        if t == FrameType.KEEPALIVE:
            Keepalive.decode(frame.payload)
            # SPEC §8: answer PING with PONG; never answer any other KEEPALIVE.
            if frame.flags & KeepaliveFlag.PING:
                self._queue(self._frame(FrameType.KEEPALIVE, b"", KeepaliveFlag.PONG), now)
            return
        if self._phase is _Phase.HANDSHAKE:
            if t == self._awaiting == FrameType.ACCEPT:
                self._on_accept(frame, now)
            elif t == self._awaiting == FrameType.RESUMED:
                self._on_resumed(frame, now)
            elif t in _KNOWN_TYPES and t not in _CLIENT_ONLY:
                raise ProtocolViolation(f"{FrameType(t).name} before the handshake completed")
            else:
                self.ignored_frames += 1
            return
        if t == FrameType.DATA:
            self._on_data(frame, now)
        elif t == FrameType.ACK:
            self._on_ack(frame)
        elif t == FrameType.NACK:
            # SPEC §14: resend the unacknowledged DATA after this SEQ.
            nack = Nack.decode(frame.payload)
            for raw in self._send.resend_after(nack.seq):
                self._queue(raw, now)
        elif t == FrameType.DISCONNECT:
            disconnect = Disconnect.decode(frame.payload)
            self._drop(abort=False)
            self._end(
                ClientState.CLOSED, CloseReason.DISCONNECTED, disconnect.code, disconnect.reason
            )
        elif t in (FrameType.ACCEPT, FrameType.RESUMED):
            raise ProtocolViolation(f"{FrameType(t).name} after the handshake")
        else:
            self.ignored_frames += 1  # unknown or client-only types (SPEC §3)

    def _on_accept(self, frame: Frame, now: float) -> None:
        accept = Accept.decode(frame.payload)
        if accept.session_id == 0 or accept.session_id != frame.session_id:
            raise ProtocolViolation("ACCEPT session id is 0 or differs from its header")
        self.session_id = accept.session_id
        self.resume_token = accept.resume_token
        if accept.keepalive:
            self.keepalive = float(accept.keepalive)
        self.server_capabilities = accept.capabilities
        self._opened(now)
        self._flush_pending(now)
        self._events.append(
            Accepted(self.session_id, self.resume_token, self.keepalive, accept.capabilities)
        )
        self._set_state(ClientState.CONNECTED)

    def _on_resumed(self, frame: Frame, now: float) -> None:
        resumed = Resumed.decode(frame.payload)
        if resumed.session_id is None or resumed.last_rx_seq is None:
            raise ProtocolViolation("empty RESUMED toward a client")
        if resumed.session_id != self.session_id:
            raise ProtocolViolation("RESUMED for another session")
        gap = bool(frame.flags & ResumedFlag.GAP)
        # SPEC §6: resend what the daemon lacks; number on above max(ours, its).
        resend = self._send.resumed(resumed.last_rx_seq)
        self._opened(now)
        for raw in resend:
            self._queue(raw, now)
        if self._rx.last_rx:
            self._send_ack(now)
        self._flush_pending(now)
        if gap:
            self.gaps += 1
        self._events.append(ResumedEvent(self.session_id, resumed.last_rx_seq, gap, len(resend)))
        self._set_state(ClientState.CONNECTED)

    def _opened(self, now: float) -> None:
        self._phase = _Phase.OPEN
        self._handshake_deadline = None
        self.established = True
        self._attempt = 0
        self._down_since = None
        if self._winsize is not None:
            self._queue(self._frame(FrameType.WINSIZE, self._winsize.encode()), now)

    def _on_data(self, frame: Frame, now: float) -> None:
        payload = frame.payload
        # SPEC §4: deliver only SEQs newer than the last delivered.
        if self._rx.receive(frame.seq, len(payload), now):
            self._events.append(
                DataReceived(bytes(payload), frame.seq, bool(frame.flags & DataFlag.REPLAY))
            )
        if self._rx.ack_due(now):
            self._send_ack(now)

    def _on_ack(self, frame: Frame) -> None:
        seq = Ack.decode(frame.payload).seq
        if seq is None:
            # SPEC §4: an empty ACK acknowledges the oldest unacknowledged frame.
            seq = self._send.first_seq
            if seq is None:
                return
        if not is_newer(seq, self._send.last_seq):  # never for frames not yet sent
            self._send.ack(seq)

    def _on_error(self, frame: Frame, now: float) -> None:
        error = Error.decode(frame.payload)
        code = error.code
        self._drop(abort=False)  # SPEC §12: the sender closes; we never answer an ERROR
        try:
            name = ErrorCode(code).name
        except ValueError:
            name = f"ERROR {code}"
        message = f"{name}: {error.message}" if error.message else name
        if code in RETRYABLE_ERRORS and self.resumable:
            self._lost(now, f"daemon said {message}")
            return
        reason = _END_REASONS.get(code, CloseReason.REFUSED)
        self._end(ClientState.CLOSED, reason, code, message)

    def _violation(self, exc: RemoteProtocolError, now: float) -> None:
        # SPEC §2, §12: answer ERROR, close, never resynchronise. The session
        # stays on the daemon (suspended); we stop here rather than loop.
        if self._phase is not _Phase.IDLE:
            self._queue(self._frame(FrameType.ERROR, Error(exc.code, exc.message).encode()), now)
            self._drop(abort=False)
        if not self.finished:
            self._end(ClientState.CLOSED, CloseReason.PROTOCOL_ERROR, exc.code, exc.message)

    # ------------------------------------------------------------------ helpers

    def _frame(self, type: int, payload: Buffer, flags: int = 0) -> bytes:
        # SPEC §4: non-DATA frames carry the last DATA SEQ sent.
        return encode_frame(type, self.session_id, self._send.last_seq, payload, flags)

    def _queue(self, raw: bytes, now: float) -> None:
        self._out += raw
        self._last_sent = now

    def _send_ack(self, now: float) -> None:
        seq = self._rx.take_ack()
        self._queue(self._frame(FrameType.ACK, Ack(seq).encode()), now)

    def _flush_pending(self, now: float) -> None:
        send = self._send
        peer_acks = bool(self.server_capabilities & Capability.ACK)
        while self._pending:
            raw = send.encode_data(self.session_id, self._pending.popleft())
            self._queue(raw, now)
            if not peer_acks:
                send.ack(send.last_seq)  # nobody will ACK: count written as delivered
        self._pending_bytes = 0

    def _reading(self) -> bool:
        return self._phase in (_Phase.HANDSHAKE, _Phase.OPEN)

    def _forget_transport(self) -> None:
        self._phase = _Phase.IDLE
        self._decoder = None
        self._out.clear()
        self._handshake_deadline = None

    def _drop(self, *, abort: bool) -> None:
        data = bytes(self._out)
        self._forget_transport()
        self._events.append(CloseTransport(data, abort))

    def _lost(self, now: float, message: str) -> None:
        if self.finished:
            return
        if not self.resumable:
            reason = CloseReason.NOT_RESUMABLE if self.established else CloseReason.CONNECT_FAILED
            self._end(ClientState.CLOSED, reason, None, message)
            return
        backoff = self.config.backoff
        if self._down_since is None:
            self._down_since = now
        if backoff.give_up_after is not None and now - self._down_since >= backoff.give_up_after:
            self._end(ClientState.CLOSED, CloseReason.GAVE_UP, None, message)
            return
        self._reconnect_at = now + backoff.delay(self._attempt, self._random())
        self._attempt += 1
        self._set_state(ClientState.RECONNECTING, message)

    def _set_state(self, state: ClientState, message: str = "") -> None:
        if state is not self.state:
            self.state = state
            self._events.append(StateChanged(state, None, None, message))

    def _end(
        self, state: ClientState, reason: CloseReason, code: int | None = None, message: str = ""
    ) -> None:
        self.state = state
        self.close_reason = reason
        self.close_code = code
        self.close_message = message
        self._reconnect_at = None
        self._events.append(StateChanged(state, reason, code, message))
