"""Session states and their transitions (SPEC §9–§11).

A session lives in the daemon and the agent, never in a transport::

    CONNECTING ──ACCEPTED──▶ ACTIVE ◀──RESUME── SUSPENDED
        │                     │  ──SUSPEND / TRANSPORT_LOST──▶ │
        └─REFUSED──▶ CLOSED ◀─┴── DISCONNECT / AGENT_GONE ─────┴── EXPIRED

* CONNECTING: CONNECT received, the agent leg is being opened.
* ACTIVE: a client transport is attached.
* SUSPENDED: no client transport (SUSPEND, or the transport was lost); the
  session stays warm until RESUME or its detached TTL runs out.
* CLOSED: ended by DISCONNECT from either side, the agent going away, or
  expiry. Nothing leaves CLOSED.

A RESUME while ACTIVE is a takeover (a newer device wins, SPEC §6) and
leaves the session ACTIVE on the new transport. All of it is the table
:data:`TRANSITIONS`; :class:`SessionStateMachine` only looks things up in it.
"""

from __future__ import annotations

from enum import Enum

from .errors import LocalProtocolError

__all__ = ["TRANSITIONS", "SessionInput", "SessionState", "SessionStateMachine"]


class SessionState(Enum):
    """Where a session is in its life (SPEC §11)."""

    CONNECTING = "connecting"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    CLOSED = "closed"


class SessionInput(Enum):
    """What can happen to a session."""

    ACCEPTED = "accepted"  #: the agent answered ACCEPT
    REFUSED = "refused"  #: the agent refused or did not answer
    SUSPEND = "suspend"  #: the client sent SUSPEND
    TRANSPORT_LOST = "transport_lost"  #: the client transport closed or died
    RESUME = "resume"  #: a valid RESUME arrived (possibly a takeover)
    DISCONNECT = "disconnect"  #: DISCONNECT from the client or the agent
    AGENT_GONE = "agent_gone"  #: the agent connection broke for good
    EXPIRED = "expired"  #: the detached TTL ran out


_S = SessionState
_I = SessionInput

#: (state, input) → next state. A pair not listed is not allowed.
TRANSITIONS: dict[tuple[SessionState, SessionInput], SessionState] = {
    (_S.CONNECTING, _I.ACCEPTED): _S.ACTIVE,
    (_S.CONNECTING, _I.REFUSED): _S.CLOSED,
    (_S.CONNECTING, _I.TRANSPORT_LOST): _S.CLOSED,
    (_S.CONNECTING, _I.AGENT_GONE): _S.CLOSED,
    (_S.ACTIVE, _I.SUSPEND): _S.SUSPENDED,
    (_S.ACTIVE, _I.TRANSPORT_LOST): _S.SUSPENDED,
    (_S.ACTIVE, _I.RESUME): _S.ACTIVE,
    (_S.ACTIVE, _I.DISCONNECT): _S.CLOSED,
    (_S.ACTIVE, _I.AGENT_GONE): _S.CLOSED,
    (_S.SUSPENDED, _I.RESUME): _S.ACTIVE,
    (_S.SUSPENDED, _I.DISCONNECT): _S.CLOSED,
    (_S.SUSPENDED, _I.AGENT_GONE): _S.CLOSED,
    (_S.SUSPENDED, _I.EXPIRED): _S.CLOSED,
}


class SessionStateMachine:
    """The state of one session, advanced only through :data:`TRANSITIONS`."""

    __slots__ = ("state",)

    def __init__(self, state: SessionState = SessionState.CONNECTING) -> None:
        self.state = state

    def can(self, event: SessionInput) -> bool:
        """True if ``event`` is allowed in the current state."""
        return (self.state, event) in TRANSITIONS

    def handle(self, event: SessionInput) -> SessionState:
        """Apply ``event``; raises LocalProtocolError if it is not allowed."""
        try:
            self.state = TRANSITIONS[self.state, event]
        except KeyError:
            raise LocalProtocolError(
                f"session event {event.value} not allowed in state {self.state.value}"
            ) from None
        return self.state
