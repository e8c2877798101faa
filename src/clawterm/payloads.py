"""Typed payloads of every frame type (SPEC §3, §5, §6, §10, §12, §13, §14).

Each class is a frozen dataclass with ``encode() -> bytes`` and a
``decode(payload)`` classmethod. ``decode`` accepts exactly the lengths the
spec allows and raises :class:`~clawterm.errors.BadPayload` for any other
(:class:`~clawterm.errors.UnsupportedVersion` for a CONNECT whose version is
not 1, whatever its length, SPEC §5). DATA has no payload class: its payload
is the session's bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Self

from .constants import ACCEPT_SHORT_SIZE, MAX_ERROR_MESSAGE, PROTOCOL_VERSION, FrameType
from .errors import BadPayload, LocalProtocolError, UnsupportedVersion
from .frame import Buffer

__all__ = [
    "PAYLOAD_TYPES",
    "Accept",
    "Ack",
    "Connect",
    "Disconnect",
    "Error",
    "Keepalive",
    "Nack",
    "Resume",
    "Resumed",
    "Suspend",
    "WinSize",
    "check_empty",
]

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U32U32 = struct.Struct(">II")

# CONNECT: version, capabilities (u8 / u16 / u32), tenant, agent, token, nonce.
_CONNECT = {
    58: struct.Struct(">BBII32s16s"),
    59: struct.Struct(">BHII32s16s"),
    61: struct.Struct(">BIII32s16s"),
}
_ACCEPT = struct.Struct(">IBB16sH")
_ACCEPT_SHORT = struct.Struct(">IBB")
_RESUME = struct.Struct(">II16s")
_WINSIZE4 = struct.Struct(">HH")
_WINSIZE8 = struct.Struct(">HHHH")


def _bad(kind: str, payload: Buffer, allowed: str) -> BadPayload:
    return BadPayload(f"{kind} payload of {len(payload)} bytes (allowed: {allowed})")


def check_empty(kind: FrameType, payload: Buffer) -> None:
    """Raise BadPayload unless ``payload`` is empty (KEEPALIVE, SUSPEND)."""
    if len(payload):
        raise _bad(kind.name, payload, "0")


@dataclass(frozen=True, slots=True)
class Connect:
    """CONNECT (SPEC §5): open a session."""

    #: Protocol version; always 1.
    version: int
    #: Client capability bits (:class:`~clawterm.constants.Capability`).
    capabilities: int
    #: Tenant the token belongs to.
    tenant_id: int
    #: Agent to connect to.
    agent_id: int
    #: 32-byte secret token (all zero on the agent leg, SPEC §14).
    token: bytes
    #: 16 random bytes, never reused (replay guard).
    nonce: bytes
    #: Payload length it was (or will be) encoded with: 58, 59 or 61.
    size: int = 58

    type: ClassVar[FrameType] = FrameType.CONNECT

    def encode(self) -> bytes:
        layout = _CONNECT.get(self.size)
        if layout is None:
            raise LocalProtocolError(f"CONNECT size must be 58, 59 or 61, not {self.size}")
        if len(self.token) != 32 or len(self.nonce) != 16:
            raise LocalProtocolError("CONNECT token must be 32 bytes and nonce 16 bytes")
        try:
            return layout.pack(
                self.version,
                self.capabilities,
                self.tenant_id,
                self.agent_id,
                self.token,
                self.nonce,
            )
        except struct.error as exc:
            raise LocalProtocolError(f"CONNECT field out of range: {exc}") from None

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        # Order of checks, SPEC §5: version first, whatever the length.
        if len(payload) == 0 or payload[0] != PROTOCOL_VERSION:
            version = payload[0] if len(payload) else None
            raise UnsupportedVersion(f"unsupported protocol version {version}")
        layout = _CONNECT.get(len(payload))
        if layout is None:
            raise _bad("CONNECT", payload, "58, 59 or 61")
        version, caps, tenant, agent, token, nonce = layout.unpack(payload)
        return cls(version, caps, tenant, agent, token, nonce, len(payload))


@dataclass(frozen=True, slots=True)
class Accept:
    """ACCEPT (SPEC §5): the session is open.

    Always encoded with all 24 bytes. Decoding also takes the 6-byte prefix
    that published peers send (session id, version, capabilities); the
    missing fields are then ``None``.
    """

    #: The new session's id.
    session_id: int
    #: Server protocol version; always 1.
    version: int
    #: Server capability bits.
    capabilities: int
    #: 16-byte secret the client must present to RESUME (SPEC §6).
    resume_token: bytes | None = None
    #: Keepalive interval in seconds (SPEC §8).
    keepalive: int | None = None

    type: ClassVar[FrameType] = FrameType.ACCEPT

    def encode(self) -> bytes:
        token = self.resume_token if self.resume_token is not None else bytes(16)
        if len(token) != 16:
            raise LocalProtocolError("resume token must be 16 bytes")
        try:
            return _ACCEPT.pack(
                self.session_id, self.version, self.capabilities, token, self.keepalive or 0
            )
        except struct.error as exc:
            raise LocalProtocolError(f"ACCEPT field out of range: {exc}") from None

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        n = len(payload)
        if n == _ACCEPT.size:
            sid, version, caps, token, keepalive = _ACCEPT.unpack(payload)
            result = cls(sid, version, caps, token, keepalive)
        elif n == ACCEPT_SHORT_SIZE:
            sid, version, caps = _ACCEPT_SHORT.unpack(payload)
            result = cls(sid, version, caps)
        else:
            raise _bad("ACCEPT", payload, "6 or 24")
        if result.version != PROTOCOL_VERSION:
            raise UnsupportedVersion(f"unsupported protocol version {result.version}")
        return result


@dataclass(frozen=True, slots=True)
class Resume:
    """RESUME (SPEC §6, §14): reattach to a session.

    The legacy 4-byte form (session id alone) has ``last_rx_seq`` and
    ``resume_token`` set to ``None``; it carries no proof.
    """

    #: Session to reattach to; must equal the header's SESSION_ID.
    session_id: int
    #: Highest DATA SEQ the sender received in order.
    last_rx_seq: int | None = None
    #: The 16-byte resume token (all zero on the agent leg).
    resume_token: bytes | None = None

    type: ClassVar[FrameType] = FrameType.RESUME

    @property
    def legacy(self) -> bool:
        """True for the 4-byte form of published clients."""
        return self.resume_token is None

    def encode(self) -> bytes:
        try:
            if self.resume_token is None:
                return _U32.pack(self.session_id)
            if len(self.resume_token) != 16:
                raise LocalProtocolError("resume token must be 16 bytes")
            return _RESUME.pack(self.session_id, self.last_rx_seq or 0, self.resume_token)
        except struct.error as exc:
            raise LocalProtocolError(f"RESUME field out of range: {exc}") from None

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        n = len(payload)
        if n == _RESUME.size:
            return cls(*_RESUME.unpack(payload))
        if n == 4:
            return cls(_U32.unpack(payload)[0])
        raise _bad("RESUME", payload, "24 or 4")


@dataclass(frozen=True, slots=True)
class Resumed:
    """RESUMED (SPEC §6, §14).

    Toward whoever sent RESUME it carries the session id and the sender's
    last_rx_seq (8 bytes). Daemon → agent it is an empty notification that
    the client is back; both fields are then ``None``.
    """

    #: The session id, or None for the empty agent notification.
    session_id: int | None = None
    #: Highest DATA SEQ the sender received in order.
    last_rx_seq: int | None = None

    type: ClassVar[FrameType] = FrameType.RESUMED

    @property
    def notification(self) -> bool:
        """True for the empty daemon → agent form."""
        return self.session_id is None

    def encode(self) -> bytes:
        if self.session_id is None:
            return b""
        try:
            return _U32U32.pack(self.session_id, self.last_rx_seq or 0)
        except struct.error as exc:
            raise LocalProtocolError(f"RESUMED field out of range: {exc}") from None

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        n = len(payload)
        if n == 8:
            return cls(*_U32U32.unpack(payload))
        if n == 0:
            return cls()
        raise _bad("RESUMED", payload, "8 or 0")


@dataclass(frozen=True, slots=True)
class Ack:
    """ACK (SPEC §4): cumulative acknowledgement.

    ``seq`` is None for the legacy empty ACK, which acknowledges the oldest
    unacknowledged DATA frame.
    """

    #: Highest DATA SEQ received so far, or None (legacy).
    seq: int | None = None

    type: ClassVar[FrameType] = FrameType.ACK

    def encode(self) -> bytes:
        return b"" if self.seq is None else _pack_u32(self.seq, "ACK")

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        n = len(payload)
        if n == 4:
            return cls(_U32.unpack(payload)[0])
        if n == 0:
            return cls()
        raise _bad("ACK", payload, "4 or 0")


@dataclass(frozen=True, slots=True)
class Nack:
    """NACK (SPEC §14): resend your unacknowledged DATA with SEQ after ``seq``."""

    #: Resend DATA frames newer than this SEQ.
    seq: int

    type: ClassVar[FrameType] = FrameType.NACK

    def encode(self) -> bytes:
        return _pack_u32(self.seq, "NACK")

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        if len(payload) != 4:
            raise _bad("NACK", payload, "4")
        return cls(_U32.unpack(payload)[0])


@dataclass(frozen=True, slots=True)
class Disconnect:
    """DISCONNECT (SPEC §10): clean end of the session.

    The payload is optional: empty, or a u16 code and a UTF-8 reason.
    """

    #: A code (an exit status, or an :class:`~clawterm.constants.ErrorCode`), or None.
    code: int | None = None
    #: Human-readable reason.
    reason: str = ""

    type: ClassVar[FrameType] = FrameType.DISCONNECT

    def encode(self) -> bytes:
        if self.code is None:
            if self.reason:
                raise LocalProtocolError("a DISCONNECT reason needs a code")
            return b""
        reason = self.reason.encode()
        if len(reason) > 0xFFFF - 2:
            raise LocalProtocolError("DISCONNECT reason too long")
        return _pack_u16(self.code, "DISCONNECT") + reason

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        n = len(payload)
        if n == 0:
            return cls()
        if n == 1:
            raise _bad("DISCONNECT", payload, "0, or 2 and more")
        return cls(_U16.unpack_from(payload)[0], _utf8(payload, "DISCONNECT"))


@dataclass(frozen=True, slots=True)
class WinSize:
    """WINSIZE (SPEC §13): terminal size, with optional pixel size."""

    #: Rows.
    rows: int
    #: Columns.
    cols: int
    #: Width in pixels, or None when the 4-byte form was used.
    xpixel: int | None = None
    #: Height in pixels, or None when the 4-byte form was used.
    ypixel: int | None = None

    type: ClassVar[FrameType] = FrameType.WINSIZE

    def encode(self) -> bytes:
        try:
            if self.xpixel is None and self.ypixel is None:
                return _WINSIZE4.pack(self.rows, self.cols)
            return _WINSIZE8.pack(self.rows, self.cols, self.xpixel or 0, self.ypixel or 0)
        except struct.error as exc:
            raise LocalProtocolError(f"WINSIZE field out of range: {exc}") from None

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        n = len(payload)
        if n == 4:
            return cls(*_WINSIZE4.unpack(payload))
        if n == 8:
            return cls(*_WINSIZE8.unpack(payload))
        raise _bad("WINSIZE", payload, "4 or 8")


@dataclass(frozen=True, slots=True)
class Error:
    """ERROR (SPEC §12): u16 code and a UTF-8 message of at most 1024 bytes."""

    #: An :class:`~clawterm.constants.ErrorCode` value (unknown codes kept as int).
    code: int
    #: Human-readable message; never internal details.
    message: str = ""

    type: ClassVar[FrameType] = FrameType.ERROR

    def encode(self) -> bytes:
        message = self.message.encode()
        if len(message) > MAX_ERROR_MESSAGE:
            # Cut on a character boundary rather than refuse: an ERROR must go out.
            message = message[:MAX_ERROR_MESSAGE].decode(errors="ignore").encode()
        return _pack_u16(self.code, "ERROR") + message

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        n = len(payload)
        if n < 2 or n > 2 + MAX_ERROR_MESSAGE:
            raise _bad("ERROR", payload, f"2 to {2 + MAX_ERROR_MESSAGE}")
        return cls(_U16.unpack_from(payload)[0], _utf8(payload, "ERROR"))


@dataclass(frozen=True, slots=True)
class Keepalive:
    """KEEPALIVE (SPEC §8): empty; PING and PONG are FLAGS bits."""

    type: ClassVar[FrameType] = FrameType.KEEPALIVE

    def encode(self) -> bytes:
        return b""

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        check_empty(FrameType.KEEPALIVE, payload)
        return cls()


@dataclass(frozen=True, slots=True)
class Suspend:
    """SUSPEND (SPEC §9, §14): empty."""

    type: ClassVar[FrameType] = FrameType.SUSPEND

    def encode(self) -> bytes:
        return b""

    @classmethod
    def decode(cls, payload: Buffer) -> Self:
        check_empty(FrameType.SUSPEND, payload)
        return cls()


def _pack_u16(value: int, kind: str) -> bytes:
    try:
        return _U16.pack(value)
    except struct.error:
        raise LocalProtocolError(f"{kind} code out of range: {value}") from None


def _pack_u32(value: int, kind: str) -> bytes:
    try:
        return _U32.pack(value)
    except struct.error:
        raise LocalProtocolError(f"{kind} value out of range: {value}") from None


def _utf8(payload: Buffer, kind: str) -> str:
    try:
        return bytes(payload[2:]).decode()
    except UnicodeDecodeError:
        raise BadPayload(f"{kind} text is not valid UTF-8") from None


#: The payload class of each frame type that has one (DATA has none).
PAYLOAD_TYPES: dict[
    int,
    type[
        Connect
        | Accept
        | Resume
        | Resumed
        | Ack
        | Nack
        | Disconnect
        | WinSize
        | Error
        | Keepalive
        | Suspend
    ],
] = {
    cls.type: cls
    for cls in (
        Connect,
        Accept,
        Resume,
        Resumed,
        Ack,
        Nack,
        Disconnect,
        WinSize,
        Error,
        Keepalive,
        Suspend,
    )
}
