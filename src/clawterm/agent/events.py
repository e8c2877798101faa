"""Events of the agent-leg core (:mod:`clawterm.agent.protocol`).

:meth:`AgentConnection.events_received() <clawterm.agent.protocol.AgentConnection.events_received>`
returns them in the order the frames that caused them arrived. Every event
but :class:`SessionOpened` and :class:`SessionReattached` concerns the
connection's current session (``connection.session``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..payloads import WinSize

if TYPE_CHECKING:
    from .protocol import AgentConnection, AgentSession

__all__ = [
    "ClientResumed",
    "ClientSuspended",
    "ConnectionFailed",
    "DataAcknowledged",
    "DataReceived",
    "ErrorReceived",
    "Event",
    "SessionDetached",
    "SessionEnded",
    "SessionOpened",
    "SessionReattached",
    "WindowChanged",
]


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of agent-leg events."""


@dataclass(frozen=True, slots=True)
class SessionOpened(Event):
    """The daemon sent CONNECT and ACCEPT is queued: start the session's handler (SPEC §14)."""

    #: The new session.
    session: AgentSession


@dataclass(frozen=True, slots=True)
class SessionReattached(Event):
    """The daemon RESUMEd a session on this connection; RESUMED and the replay are queued."""

    #: The session, now attached to this connection.
    session: AgentSession
    #: The daemon's last_rx_seq from RESUME (0: it asked for everything unacknowledged).
    last_rx_seq: int
    #: The connection the session was taken from, if it still had one. It has
    #: ERROR TAKEN_OVER queued: flush its data_to_send() and close it.
    replaced: AgentConnection | None


@dataclass(frozen=True, slots=True)
class SessionDetached(Event):
    """The connection is gone without DISCONNECT: the session waits for a RESUME (grace)."""

    #: The session that lost its connection.
    session: AgentSession


@dataclass(frozen=True, slots=True)
class DataReceived(Event):
    """A new (not duplicate) DATA frame from the client (SPEC §4).

    Call :meth:`AgentSession.data_consumed` when the application has taken it:
    that is what the agent acknowledges.
    """

    #: The frame's SEQ.
    seq: int
    #: Its payload.
    data: bytes
    #: True if the frame had FLAGS MORE (the message continues).
    more: bool


@dataclass(frozen=True, slots=True)
class DataAcknowledged(Event):
    """An ACK released held DATA frames: a blocked writer may go on (SPEC §4, §14)."""

    #: The highest SEQ the client now acknowledges.
    seq: int


@dataclass(frozen=True, slots=True)
class WindowChanged(Event):
    """WINSIZE from the client (SPEC §13)."""

    #: The new size; also stored as ``session.winsize``.
    winsize: WinSize


@dataclass(frozen=True, slots=True)
class ClientSuspended(Event):
    """Empty SUSPEND from the daemon: the client left (SPEC §14)."""


@dataclass(frozen=True, slots=True)
class ClientResumed(Event):
    """Empty RESUMED from the daemon: the client is back (SPEC §14)."""


@dataclass(frozen=True, slots=True)
class SessionEnded(Event):
    """DISCONNECT from the daemon: the session is over (SPEC §10)."""

    #: The DISCONNECT code, or None for an empty payload.
    code: int | None
    #: The DISCONNECT reason.
    reason: str


@dataclass(frozen=True, slots=True)
class ErrorReceived(Event):
    """The daemon sent ERROR; the connection closes, the session (if any) is detached (SPEC §12)."""

    #: ERROR code.
    code: int
    #: ERROR message.
    message: str


@dataclass(frozen=True, slots=True)
class ConnectionFailed(Event):
    """This side answered ERROR and the connection closes after the flush (SPEC §2, §12)."""

    #: The ERROR code sent.
    code: int
    #: The ERROR message sent.
    message: str
