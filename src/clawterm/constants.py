"""Wire values and defaults of ClawTerm protocol version 1.

Every value here mirrors a table of ``docs/protocol.md`` (SPEC §2, §3, §5, §12,
§16); nothing else in the package spells a wire number.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

__all__ = [
    "ACCEPT_SHORT_SIZE",
    "ACK_EVERY_BYTES",
    "ACK_EVERY_FRAMES",
    "ACK_MAX_DELAY",
    "ALPN",
    "DEFAULT_AGENT_GRACE",
    "DEFAULT_AGENT_TIMEOUT",
    "DEFAULT_DETACHED_TTL",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_KEEPALIVE",
    "DEFAULT_METRICS",
    "DEFAULT_PORT",
    "DEFAULT_QUIC_PORT",
    "DEFAULT_RING_SIZE",
    "DEFAULT_SOCKET_DIR",
    "FLAG",
    "HEADER_SIZE",
    "MAX_ERROR_MESSAGE",
    "MAX_PAYLOAD",
    "OVERHEAD",
    "PROTOCOL_VERSION",
    "Capability",
    "DataFlag",
    "ErrorCode",
    "FrameType",
    "KeepaliveFlag",
    "ResumedFlag",
]

#: First byte of every frame (SPEC §2).
FLAG = 0x7E
#: Bytes before the payload: FLAG, SESSION_ID, SEQ, TYPE, FLAGS, LEN.
HEADER_SIZE = 13
#: Fixed bytes per frame: the header plus the trailing CRC-16.
OVERHEAD = 15
#: LEN is a u16, so no payload can be longer.
MAX_PAYLOAD = 0xFFFF
#: The only protocol version (CONNECT/ACCEPT version byte).
PROTOCOL_VERSION = 1
#: ALPN protocol id on TLS and QUIC (SPEC §1).
ALPN = "clawterm/1"
#: ERROR messages are at most this many UTF-8 bytes (SPEC §12).
MAX_ERROR_MESSAGE = 1024
#: Published clients read only this prefix of ACCEPT (SPEC §5).
ACCEPT_SHORT_SIZE = 6

# Acknowledgement pacing (SPEC §4): acknowledge within 100 ms of receiving
# DATA, and at least every 32 frames or 32 KiB.
ACK_MAX_DELAY = 0.1
ACK_EVERY_FRAMES = 32
ACK_EVERY_BYTES = 32 * 1024

# Configuration defaults (SPEC §16).
DEFAULT_PORT = 7220
DEFAULT_QUIC_PORT = 7221
DEFAULT_SOCKET_DIR = "/run/claw/sockets"
DEFAULT_RING_SIZE = 256 * 1024
DEFAULT_KEEPALIVE = 30.0
DEFAULT_DETACHED_TTL = 24 * 3600.0
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_AGENT_TIMEOUT = 5.0
DEFAULT_AGENT_GRACE = 60.0
DEFAULT_METRICS = "127.0.0.1:9720"


class FrameType(IntEnum):
    """The TYPE byte of a frame (SPEC §3)."""

    CONNECT = 0x01  #: client → daemon, opens a session (§5)
    ACCEPT = 0x02  #: daemon → client, the session is open (§5)
    RESUME = 0x03  #: client → daemon, reattach to a session (§6)
    RESUMED = 0x04  #: daemon → client, reattached; replay follows (§6)
    DATA = 0x10  #: bytes of the session stream, both ways
    ACK = 0x11  #: highest DATA SEQ received so far (§4)
    NACK = 0x12  #: resend your unacknowledged DATA after this SEQ (§14)
    KEEPALIVE = 0x20  #: liveness, optionally PING/PONG (§8)
    SUSPEND = 0x30  #: client leaving on purpose (§9)
    DISCONNECT = 0x40  #: clean end of the session (§10)
    WINSIZE = 0x50  #: terminal size (§13)
    ERROR = 0xFF  #: failure; the sender then closes the transport (§12)


class DataFlag(IntFlag):
    """FLAGS bits of DATA frames."""

    MORE = 0x01  #: the message continues in the next DATA frame
    REPLAY = 0x02  #: set by the daemon on frames replayed after RESUME


class KeepaliveFlag(IntFlag):
    """FLAGS bits of KEEPALIVE frames."""

    PING = 0x01  #: the receiver must answer with PONG
    PONG = 0x02  #: answer to a PING; never answered


class ResumedFlag(IntFlag):
    """FLAGS bits of RESUMED frames."""

    GAP = 0x04  #: frames after the client's last_rx_seq were dropped (§7)


class Capability(IntFlag):
    """Capability bits of CONNECT and ACCEPT (SPEC §5)."""

    ACK = 0x01  #: the peer sends ACK frames
    RESUME2 = 0x02  #: the peer uses resume tokens (24-byte RESUME)
    WINSIZE = 0x04  #: the peer sends WINSIZE


class ErrorCode(IntEnum):
    """ERROR codes (SPEC §12)."""

    BAD_FRAME = 1  #: first byte not 0x7E
    BAD_CRC = 2  #: CRC-16 mismatch
    UNSUPPORTED_VERSION = 3  #: CONNECT version other than 1
    BAD_PAYLOAD = 4  #: a payload length or content its layout does not allow
    PROTOCOL = 5  #: a valid frame at the wrong time or with the wrong session id
    AUTH_FAILED = 6  #: bad token, agent not allowed, replayed nonce, legacy resume refused
    NO_SUCH_AGENT = 7  #: the agent is not registered
    NO_SUCH_SESSION = 8  #: unknown session or wrong resume token (one answer for both)
    AGENT_REFUSED = 9  #: the agent refused the session or did not answer in time
    AGENT_GONE = 10  #: the agent went away
    TAKEN_OVER = 11  #: a newer RESUME took the session to another transport
    LIMIT = 12  #: a configured limit was reached
    TOO_LARGE = 13  #: LEN above the receiver's limit
    TIMEOUT = 14  #: handshake, liveness or detached TTL ran out
    SHUTTING_DOWN = 15  #: the daemon is stopping; reconnect and RESUME
    INTERNAL = 16  #: a fault inside the sender
