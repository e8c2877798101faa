"""One session in the daemon: the relay between a client leg and an agent leg.

How it works. Sequence numbers and acknowledgements run end to end, client to
agent (SPEC §4); the daemon is a relay with a replay cache. So this module
passes DATA and ACK frames between the legs as the bytes they arrived as
(``frame.raw``), and keeps only:

* ``c2a_last`` — the highest client DATA SEQ passed to the agent: duplicates
  (a client's resend after RESUME) are dropped, and RESUMED reports it;
* the :class:`~clawterm.ring.ReplayRing` of agent DATA, acknowledged by the
  client's ACKs (or by the daemon's own writes, for clients that do not
  announce the ACK capability), replayed after RESUME;
* ``agent_acked`` — the agent's latest ACK, repeated to a client after RESUMED
  so it can release what the agent already has;
* the latest WINSIZE, and a DISCONNECT from the agent still owed to an absent
  client (SPEC §10: delivered on resume, behind the output before it).

Runs. Bulk traffic arrives as many DATA frames (and their ACKs) in one read.
:meth:`Session.agent_run` and :meth:`Session.client_run` take the longest
prefix of a read made only of in-order DATA and u32 ACK frames of this
session with good CRCs, and handle it as one piece: one forward to the other
leg, one ring entry per stretch of DATA, no object per frame. Whatever they
stop at (any other frame, a duplicate, a bad frame, a frame cut by the read)
goes through the frame-by-frame path, which does the same for DATA and ACK
and everything else besides; both give the same bytes on the other leg, the
same ring contents and the same errors.

Legs are abstract (:class:`Leg`): ``send`` queues bytes, which the I/O
adapter writes in one call when it calls :meth:`Session.flush` at the end of
each burst. Nothing here touches sockets, asyncio or a clock.

Backpressure (SPEC §7, issue 3): the agent's socket is not read while the
ring holds ``ring_size`` bytes the client has not acknowledged, or while the
client's transport has more than its high-water mark buffered; the client's
transport is not read while the agent's is over its mark. Memory per session
is thereby bounded by the ring plus one read per leg plus the transports'
buffer limits.
"""

from __future__ import annotations

import logging
import struct
from typing import Protocol

from ..constants import (
    FLAG,
    OVERHEAD,
    Capability,
    DataFlag,
    ErrorCode,
    FrameType,
    KeepaliveFlag,
    ResumedFlag,
)
from ..crc import crc16
from ..errors import ProtocolViolation
from ..frame import Buffer, Frame, encode_frame, frame_with_flags
from ..payloads import Ack, Disconnect, Resumed, WinSize, check_empty
from ..ring import ReplayRing
from ..serial import is_newer
from ..session import SessionInput, SessionState, SessionStateMachine

__all__ = ["Leg", "RelayCounters", "Session"]

log = logging.getLogger("clawterm.daemon")

# Plain ints on the per-frame path: comparing with an IntEnum member costs more.
_DATA = int(FrameType.DATA)
_ACK = int(FrameType.ACK)
_PING = int(KeepaliveFlag.PING)
_ACK_U32_SIZE = OVERHEAD + 4
_unpack_u32 = struct.Struct(">I").unpack_from
_unpack_header = struct.Struct(">BIIBBH").unpack_from
_FLAG = int(FLAG)
_SEQ_MASK = 0xFFFFFFFF
_SEQ_HALF = 1 << 31


class Leg(Protocol):
    """What the relay needs of a transport (client or agent side)."""

    #: True while the transport's write buffer is above its high-water mark.
    writing_paused: bool

    def send(self, data: Buffer) -> None:
        """Queue bytes; they go out in one write when the burst is flushed."""

    def flush(self) -> None:
        """Write everything queued."""

    def pause_reading(self) -> None:
        """Stop reading from this transport."""

    def resume_reading(self) -> None:
        """Read from this transport again."""

    def fail(self, code: ErrorCode, message: str) -> None:
        """Send ERROR (after what is queued) and close the transport."""

    def close(self) -> None:
        """Flush and close the transport without an ERROR."""


class RelayCounters(Protocol):
    """Hot-path counters the relay increments (plain int attributes)."""

    frames_c2a: int
    frames_a2c: int
    bytes_c2a: int
    bytes_a2c: int
    frames_dropped_duplicate: int
    frames_unknown_type: int


class Session:
    """The daemon's state for one session. See the module docstring."""

    def __init__(
        self,
        session_id: int,
        tenant: int,
        agent: int,
        token_hash: bytes,
        *,
        counters: RelayCounters,
        ring_size: int,
        drop_oldest: bool = False,
        capabilities: int = 0,
        state: SessionState = SessionState.CONNECTING,
        created_at: float = 0.0,
    ) -> None:
        self.session_id = session_id
        self.tenant = tenant
        self.agent = agent
        #: SHA-256 of the resume token; the token itself is never kept.
        self.token_hash = token_hash
        #: Capabilities of the attached client (SPEC §5).
        self.capabilities = capabilities
        #: The client sends ACK frames (capability 0x01); cached for the hot path.
        self.acks_itself = bool(capabilities & Capability.ACK)
        self.sm = SessionStateMachine(state)
        self.ring = ReplayRing(ring_size, drop_oldest=drop_oldest)
        self.counters = counters
        self.client: Leg | None = None
        self.agent_leg: Leg | None = None
        #: Highest client DATA SEQ passed on to the agent.
        self.c2a_last = 0
        #: Highest agent DATA SEQ received.
        self.a2c_last = 0
        #: The agent's latest ACK of client DATA.
        self.agent_acked = 0
        #: Latest WINSIZE payload from the client, and the last one the agent got.
        self.winsize: bytes | None = None
        self.winsize_sent: bytes | None = None
        #: An agent DISCONNECT (encoded) still owed to an absent client.
        self.pending_disconnect: bytes | None = None
        #: Wall-clock times (for the session table and expiry).
        self.created_at = created_at
        self.detached_at: float | None = None
        #: Why the session ended, once CLOSED.
        self.close_reason = ""
        self._legacy_ack: int | None = None
        self._agent_paused = False
        self._client_paused = False

    # -- state ------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self.sm.state

    @property
    def closed(self) -> bool:
        return self.sm.state is SessionState.CLOSED

    # -- client side -------------------------------------------------------

    def client_frame(self, frame: Frame) -> None:
        """Handle one frame from the attached client.

        Raises :class:`~clawterm.errors.RemoteProtocolError` for a frame the
        protocol does not allow; the adapter answers ERROR and detaches.
        """
        if frame.session_id != self.session_id:
            raise ProtocolViolation(f"frame for session {frame.session_id} on another session")
        ftype = frame.type
        agent = self.agent_leg
        if ftype == _DATA:
            seq, last = frame.seq, self.c2a_last
            # is_newer(seq, last), inlined (SPEC §4): duplicates are dropped.
            if seq == 0 or (last and not 0 < ((seq - last) & _SEQ_MASK) < _SEQ_HALF):
                self.counters.frames_dropped_duplicate += 1
                return
            self.c2a_last = seq
            raw = frame.raw
            counters = self.counters
            counters.frames_c2a += 1
            counters.bytes_c2a += len(raw) - 15
            if agent is not None:
                agent.send(raw)
        elif ftype == _ACK:
            acked = _ack_seq(frame)
            if acked is None:
                # Legacy empty ACK: the oldest unacknowledged frame (SPEC §4),
                # passed on as an explicit u32.
                oldest = self.ring.ack_oldest()
                if oldest is not None and agent is not None:
                    agent.send(encode_frame(_ACK, self.session_id, 0, Ack(oldest).encode()))
            else:
                self.ring.ack(acked)
                if agent is not None:
                    agent.send(frame.raw)
            self._update_agent_reading()
        elif ftype == FrameType.KEEPALIVE:
            check_empty(FrameType.KEEPALIVE, frame.payload)
            if frame.flags & _PING and self.client is not None:
                self.client.send(
                    encode_frame(
                        FrameType.KEEPALIVE,
                        self.session_id,
                        self.a2c_last,
                        flags=KeepaliveFlag.PONG,
                    )
                )
        elif ftype == FrameType.WINSIZE:
            WinSize.decode(frame.payload)
            self.winsize = bytes(frame.payload)
            if agent is not None and self.winsize != self.winsize_sent:
                agent.send(frame.raw)
                self.winsize_sent = self.winsize
        elif ftype == FrameType.SUSPEND:
            check_empty(FrameType.SUSPEND, frame.payload)
            self.detach(SessionInput.SUSPEND, "client suspended")
        elif ftype == FrameType.DISCONNECT:
            Disconnect.decode(frame.payload)
            if agent is not None:
                agent.send(frame.raw)
            self.end("client disconnected", SessionInput.DISCONNECT)
        elif ftype == FrameType.ERROR:
            # The client is going away with an error; the session stays (SPEC §12).
            self.detach(SessionInput.TRANSPORT_LOST, "client sent ERROR")
        elif ftype in _CLIENT_NEVER_SENDS:
            raise ProtocolViolation(f"unexpected {FrameType(ftype).name} from client")
        else:
            self.counters.frames_unknown_type += 1

    def attach(self, client: Leg, last_rx_seq: int, capabilities: int) -> None:
        """Attach a client that sent a valid RESUME (or just got ACCEPT).

        Sends RESUMED (when resuming), replays what the client has not got,
        and tells the agent the client is back (SPEC §6, §14). The caller has
        already detached any previous client (takeover).
        """
        resuming = self.sm.state is not SessionState.CONNECTING
        self.sm.handle(SessionInput.RESUME if resuming else SessionInput.ACCEPTED)
        self.client = client
        self.capabilities = capabilities
        self.acks_itself = bool(capabilities & Capability.ACK)
        self.detached_at = None
        self._client_paused = False
        if resuming:
            # The client has everything up to last_rx_seq: that is an ACK too.
            if last_rx_seq and is_newer(last_rx_seq, self.ring.acked):
                self.ring.ack(last_rx_seq)
                if self.agent_leg is not None:
                    self.agent_leg.send(
                        encode_frame(_ACK, self.session_id, 0, Ack(last_rx_seq).encode())
                    )
            flags = ResumedFlag.GAP if self.ring.gap(last_rx_seq) else 0
            client.send(
                encode_frame(
                    FrameType.RESUMED,
                    self.session_id,
                    self.a2c_last,
                    Resumed(self.session_id, self.c2a_last).encode(),
                    flags,
                )
            )
            for raw in self.ring.frames_after(last_rx_seq):
                client.send(frame_with_flags(raw, raw[10] | DataFlag.REPLAY))
                if not self.acks_itself:
                    self._legacy_ack = int.from_bytes(raw[5:9], "big")
            if self.agent_acked:
                client.send(encode_frame(_ACK, self.session_id, 0, Ack(self.agent_acked).encode()))
            if self.agent_leg is not None:
                self.agent_leg.send(encode_frame(FrameType.RESUMED, self.session_id, 0))
                if self.winsize is not None and self.winsize != self.winsize_sent:
                    self.agent_leg.send(
                        encode_frame(FrameType.WINSIZE, self.session_id, 0, self.winsize)
                    )
                    self.winsize_sent = self.winsize
        else:
            # Output the agent sent right after its ACCEPT, before the client
            # was attached: live traffic, not a replay.
            for raw in self.ring.frames_after(0):
                client.send(raw)
                if not self.acks_itself:
                    self._legacy_ack = int.from_bytes(raw[5:9], "big")
        if self.pending_disconnect is not None:
            client.send(self.pending_disconnect)
            self.pending_disconnect = None
            self.end(self.close_reason or "agent ended the session", SessionInput.DISCONNECT)
            return
        self._update_agent_reading()

    def detach(self, why: SessionInput, reason: str) -> None:
        """The client left (SUSPEND) or its transport was lost.

        The session becomes SUSPENDED and stays warm; the agent is told
        (SPEC §9, §14). Idempotent for a session with no client.
        """
        client = self.client
        if client is None or self.closed:
            return
        self.client = None
        self.sm.handle(why)
        self.close_reason = reason
        if why is SessionInput.SUSPEND:
            client.close()
        if self.agent_leg is not None:
            self.agent_leg.send(encode_frame(FrameType.SUSPEND, self.session_id, 0))
        self._client_paused = False
        self._update_agent_reading()

    def take_client(self) -> Leg | None:
        """Detach the current client without closing it (takeover, SPEC §6)."""
        client = self.client
        if client is not None:
            self.client = None
            self.sm.handle(SessionInput.TRANSPORT_LOST)
        return client

    def client_run(self, data: bytes, max_payload: int) -> int:
        """Relay the run of DATA and ACK frames ``data`` starts with; bytes taken.

        See "Runs" in the module docstring: the caller feeds what is left
        (from the returned offset) to the frame-by-frame path.
        """
        pos, last, frames, payload, acks = _scan_run(
            data, self.session_id, self.c2a_last, max_payload
        )
        if not pos:
            return 0
        self.c2a_last = last
        counters = self.counters
        counters.frames_c2a += frames
        counters.bytes_c2a += payload
        for _, acked, _ in acks:
            self.ring.ack(acked)
        if self.agent_leg is not None:
            self.agent_leg.send(data if pos == len(data) else memoryview(data)[:pos])
        if acks:
            self._update_agent_reading()
        return pos

    # -- agent side --------------------------------------------------------

    def agent_run(self, data: bytes, max_payload: int) -> int:
        """Relay the run of DATA and ACK frames ``data`` starts with; bytes taken.

        Each stretch of DATA between ACKs becomes one ring entry. See "Runs"
        in the module docstring.
        """
        pos, last, frames, payload, acks = _scan_run(
            data, self.session_id, self.a2c_last, max_payload
        )
        if not pos:
            return 0
        ring = self.ring
        start = 0  # where the current stretch of DATA begins
        for at, acked, before in acks:
            if at > start:
                ring.append(before, data[start:at])
            start = at + _ACK_U32_SIZE
            self.agent_acked = acked
        if pos > start:
            ring.append(last, data if start == 0 and pos == len(data) else data[start:pos])
        self.a2c_last = last
        counters = self.counters
        counters.frames_a2c += frames
        counters.bytes_a2c += payload
        client = self.client
        if client is not None:
            client.send(data if pos == len(data) else memoryview(data)[:pos])
            if frames and not self.acks_itself:
                self._legacy_ack = last
        if not self._agent_paused and ring.full:
            self._set_agent_paused(True)
        return pos

    def agent_frame(self, frame: Frame) -> None:
        """Handle one frame from the agent after its handshake."""
        ftype = frame.type
        client = self.client
        if ftype == _DATA:
            seq, last = frame.seq, self.a2c_last
            if (
                frame.session_id != self.session_id
                or seq == 0
                or (last and not 0 < ((seq - last) & _SEQ_MASK) < _SEQ_HALF)
            ):
                self.counters.frames_dropped_duplicate += 1
                return
            self.a2c_last = seq
            raw = bytes(frame.raw)
            ring = self.ring
            ring.append(seq, raw)
            counters = self.counters
            counters.frames_a2c += 1
            counters.bytes_a2c += len(raw) - 15
            if client is not None:
                client.send(raw)
                if not self.acks_itself:
                    self._legacy_ack = seq
            if not self._agent_paused and ring.full:
                self._set_agent_paused(True)
        elif ftype == _ACK:
            acked = _ack_seq(frame)
            if acked is not None:
                self.agent_acked = acked
                if client is not None:
                    client.send(frame.raw)
        elif ftype == FrameType.KEEPALIVE:
            if frame.flags & _PING and self.agent_leg is not None:
                self.agent_leg.send(
                    encode_frame(FrameType.KEEPALIVE, self.session_id, 0, flags=KeepaliveFlag.PONG)
                )
        elif ftype == FrameType.DISCONNECT:
            Disconnect.decode(frame.payload)
            self.agent_ended(bytes(frame.raw), "agent disconnected")
        elif ftype == FrameType.ERROR:
            self.agent_gone("agent sent ERROR")
        else:
            self.counters.frames_unknown_type += 1

    def agent_ended(self, disconnect: bytes, reason: str) -> None:
        """The agent ended the session with ``disconnect`` (an encoded frame).

        Delivered to the client behind the output before it; if the client is
        away, on its next RESUME (SPEC §10).
        """
        if self.closed:
            return
        leg = self.agent_leg
        self.agent_leg = None
        if leg is not None:
            leg.close()
        self.close_reason = reason
        if self.client is not None:
            self.client.send(disconnect)
            self.end(reason, SessionInput.DISCONNECT)
        else:
            self.pending_disconnect = disconnect

    def agent_gone(self, reason: str = "agent gone") -> None:
        """The agent connection broke: AGENT_GONE toward the client (SPEC §14)."""
        if self.closed:
            return
        self.agent_ended(
            encode_frame(
                FrameType.DISCONNECT,
                self.session_id,
                self.a2c_last,
                Disconnect(ErrorCode.AGENT_GONE, reason).encode(),
            ),
            reason,
        )

    # -- end and flush -----------------------------------------------------

    def end(self, reason: str, why: SessionInput) -> None:
        """End the session: close both legs, drop the ring."""
        if self.closed:
            return
        self.close_reason = reason
        if self.sm.can(why):
            self.sm.handle(why)
        else:
            self.sm.state = SessionState.CLOSED
        client, agent = self.client, self.agent_leg
        self.client = self.agent_leg = None
        if client is not None:
            client.close()
        if agent is not None:
            agent.close()
        self.ring.clear()

    def flush(self) -> None:
        """Write what the last burst queued on both legs."""
        if self._legacy_ack is not None:
            seq, self._legacy_ack = self._legacy_ack, None
            # The daemon acknowledges on write for clients without ACK (SPEC §4).
            self.ring.ack(seq)
            if self.agent_leg is not None:
                self.agent_leg.send(encode_frame(_ACK, self.session_id, 0, Ack(seq).encode()))
            self._update_agent_reading()
        if self.client is not None:
            self.client.flush()
        if self.agent_leg is not None:
            self.agent_leg.flush()

    # -- backpressure ------------------------------------------------------

    def _set_agent_paused(self, paused: bool) -> None:
        self._agent_paused = paused
        leg = self.agent_leg
        if leg is not None:
            if paused:
                leg.pause_reading()
            else:
                leg.resume_reading()

    def _update_agent_reading(self) -> None:
        client = self.client
        pause = self.ring.full or (client is not None and client.writing_paused)
        if pause != self._agent_paused:
            self._set_agent_paused(pause)

    def client_writing_changed(self) -> None:
        """The client's transport crossed its high- or low-water mark."""
        self._update_agent_reading()

    def agent_writing_changed(self) -> None:
        """The agent's transport crossed its high- or low-water mark."""
        leg, client = self.agent_leg, self.client
        pause = leg is not None and leg.writing_paused
        if client is not None and pause != self._client_paused:
            self._client_paused = pause
            if pause:
                client.pause_reading()
            else:
                client.resume_reading()

    def agent_attached(self, leg: Leg) -> None:
        """A (re)connected agent leg; apply the current backpressure to it."""
        self.agent_leg = leg
        if self._agent_paused:
            leg.pause_reading()


def _scan_run(
    data: bytes, sid: int, last: int, max_payload: int
) -> tuple[int, int, int, int, list[tuple[int, int, int]]]:
    """The run ``data`` starts with: in-order DATA and u32 ACK frames of ``sid``.

    ``last`` is the newest DATA SEQ already taken on this leg. Every frame's
    header, SEQ order and CRC are checked; the run ends at the first frame
    that is anything else (or is cut by the end of ``data``). Returns the
    run's end offset, its newest DATA SEQ, how many DATA frames and payload
    bytes it holds, and each ACK as (offset, SEQ acknowledged, newest DATA
    SEQ before it). One loop per read and no object per DATA frame: this is
    the daemon's per-frame cost for bulk traffic.
    """
    unpack, check = _unpack_header, crc16
    end = len(data)
    pos = frames = payload = 0
    acks: list[tuple[int, int, int]] = []
    mv = memoryview(data)
    while end - pos >= OVERHEAD:
        flag, fsid, seq, typ, _, length = unpack(data, pos)
        stop = pos + OVERHEAD + length
        if flag != _FLAG or fsid != sid or stop > end or length > max_payload:
            break
        if typ == _DATA:
            if seq == 0 or (last and not 0 < ((seq - last) & _SEQ_MASK) < _SEQ_HALF):
                break
            if check(mv[pos:stop]):
                break
            last = seq
            frames += 1
            payload += length
        elif typ == _ACK and length == 4:
            if check(mv[pos:stop]):
                break
            acks.append((pos, _unpack_u32(data, pos + 13)[0], last))
        else:
            break
        pos = stop
    return pos, last, frames, payload, acks


def _ack_seq(frame: Frame) -> int | None:
    """The SEQ an ACK acknowledges, None for the legacy empty ACK (SPEC §4).

    The usual u32 ACK is read straight from ``raw``; any other length goes
    through :meth:`Ack.decode`, which raises BAD_PAYLOAD for a wrong one.
    """
    raw = frame.raw
    if len(raw) == _ACK_U32_SIZE:
        seq: int = _unpack_u32(raw, 13)[0]
        return seq
    return Ack.decode(frame.payload).seq


_CLIENT_NEVER_SENDS = frozenset(
    {
        FrameType.CONNECT,
        FrameType.ACCEPT,
        FrameType.RESUME,
        FrameType.RESUMED,
        FrameType.NACK,
    }
)
