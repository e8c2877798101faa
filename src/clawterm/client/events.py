"""What the client core reports: states, close reasons and events.

:class:`ClientState` is the client's view of its session (not the daemon's,
SPEC §11): it adds RECONNECTING, the time between a lost transport and the
next RESUMED. :class:`CloseReason` says why a session stopped being usable
here. Events are frozen dataclasses under :class:`Event`; the two transport
events (:class:`OpenTransport`, :class:`CloseTransport`) are orders to the
I/O adapter, the others are news for the application.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = [
    "Accepted",
    "ClientState",
    "CloseReason",
    "CloseTransport",
    "DataReceived",
    "Event",
    "OpenTransport",
    "Resumed",
    "StateChanged",
]


class ClientState(Enum):
    """Where a client session is (the client's side of SPEC §11)."""

    CONNECTING = "connecting"  #: first transport, CONNECT or first RESUME in flight
    CONNECTED = "connected"  #: ACCEPT or RESUMED received; DATA flows
    RECONNECTING = "reconnecting"  #: transport lost; backoff, then RESUME
    SUSPENDED = "suspended"  #: we sent SUSPEND (or stopped): the session stays warm
    CLOSED = "closed"  #: the session is over or unusable from here; see the reason


class CloseReason(Enum):
    """Why a session reached SUSPENDED or CLOSED."""

    SUSPENDED = "suspended"  #: the application suspended (detached) on purpose
    CLOSED = "closed"  #: the application sent DISCONNECT
    DISCONNECTED = "disconnected"  #: the daemon or agent sent DISCONNECT (SPEC §10)
    TAKEN_OVER = "taken-over"  #: a newer RESUME took the session elsewhere (SPEC §6)
    NO_SUCH_SESSION = "no-such-session"  #: unknown session or wrong resume token
    AUTH_FAILED = "auth-failed"  #: token refused (SPEC §5)
    REFUSED = "refused"  #: another ERROR ended the handshake or the session
    CONNECT_FAILED = "connect-failed"  #: the first transport could not be made
    PROTOCOL_ERROR = "protocol-error"  #: the daemon broke the protocol
    UNTRUSTED = "untrusted"  #: the daemon's certificate was refused
    GAVE_UP = "gave-up"  #: reconnecting took longer than allowed
    NOT_RESUMABLE = "not-resumable"  #: the daemon gave no resume token (short ACCEPT)


class Event:
    """Base class of everything :meth:`ClientConnection.events_received` returns."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class OpenTransport(Event):
    """Open a new transport now.

    The adapter must then call ``transport_opened(now)`` when it is up (after
    the TLS handshake and the trust check) or ``receive_eof(now, reason)`` if
    it could not be made.
    """

    #: 0 for the first transport, then the number of the reconnect attempt.
    attempt: int


@dataclass(frozen=True, slots=True)
class CloseTransport(Event):
    """Write ``data``, then close the current transport.

    The core has already forgotten the transport: the adapter must not feed
    anything from it again.
    """

    #: Last bytes for this transport (ERROR, SUSPEND, DISCONNECT…), maybe empty.
    data: bytes
    #: True to abort (drop unsent bytes, RST), False to close after flushing.
    abort: bool


@dataclass(frozen=True, slots=True)
class StateChanged(Event):
    """The client state changed."""

    #: The new state.
    state: ClientState
    #: Why, for SUSPENDED and CLOSED; None otherwise.
    reason: CloseReason | None = None
    #: The DISCONNECT code or ERROR code behind the reason, if any.
    code: int | None = None
    #: Human-readable detail (the DISCONNECT reason, ERROR message, OS error…).
    message: str = ""


@dataclass(frozen=True, slots=True)
class Accepted(Event):
    """ACCEPT arrived: a new session (SPEC §5)."""

    #: The session id.
    session_id: int
    #: The 16-byte resume token, or None if the daemon sent the short ACCEPT.
    resume_token: bytes | None
    #: Keepalive interval in force, seconds.
    keepalive: float
    #: The daemon's capability bits.
    capabilities: int


@dataclass(frozen=True, slots=True)
class Resumed(Event):
    """RESUMED arrived: the session is back on a new transport (SPEC §6)."""

    #: The session id.
    session_id: int
    #: The daemon's last_rx_seq: our DATA up to here arrived.
    peer_last_rx: int
    #: The daemon reported GAP: output after our last_rx_seq was dropped (SPEC §7).
    gap: bool
    #: DATA frames we resent.
    resent: int


@dataclass(frozen=True, slots=True)
class DataReceived(Event):
    """New session bytes, in order, duplicates already dropped (SPEC §4)."""

    #: The DATA payload (may be empty: DATA frames are relayed one for one).
    data: bytes
    #: Its SEQ.
    seq: int
    #: The daemon marked it REPLAY (sent again after a RESUME).
    replay: bool
