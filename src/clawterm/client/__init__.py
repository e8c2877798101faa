"""The ClawTerm client: an asyncio library and the ``clawterm`` command.

Library entry points: :func:`connect` (new session) and :func:`resume`
(saved session or handoff link), both used as ``async with``. The
sans-I/O core is :class:`ClientConnection` in :mod:`clawterm.client.protocol`.
See ``docs/client.md``.
"""

from __future__ import annotations

from .aio import (
    HEAD_START,
    TRANSPORTS,
    Session,
    SessionContext,
    StateInfo,
    TransportMode,
    connect,
    parse_token,
    resume,
)
from .backoff import Backoff
from .errors import (
    AuthenticationFailed,
    CertificateChanged,
    ClientError,
    ConnectFailed,
    LinkError,
    ProtocolFailure,
    SavedSessionError,
    SessionEnded,
    SessionGone,
    SessionRefused,
    SessionTakenOver,
    TrustError,
    UnknownHost,
)
from .events import ClientState, CloseReason
from .link import HandoffLink
from .protocol import ClientConfig, ClientConnection, ResumeTicket
from .saved import SavedSession, SessionStore
from .trust import KnownHosts, Trust

__all__ = [
    "HEAD_START",
    "TRANSPORTS",
    "AuthenticationFailed",
    "Backoff",
    "CertificateChanged",
    "ClientConfig",
    "ClientConnection",
    "ClientError",
    "ClientState",
    "CloseReason",
    "ConnectFailed",
    "HandoffLink",
    "KnownHosts",
    "LinkError",
    "ProtocolFailure",
    "ResumeTicket",
    "SavedSession",
    "SavedSessionError",
    "Session",
    "SessionContext",
    "SessionEnded",
    "SessionGone",
    "SessionRefused",
    "SessionStore",
    "SessionTakenOver",
    "StateInfo",
    "TransportMode",
    "Trust",
    "TrustError",
    "UnknownHost",
    "connect",
    "parse_token",
    "resume",
]
