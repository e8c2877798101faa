"""Exceptions of the client library.

Everything derives from :class:`ClientError` (itself a
:class:`~clawterm.errors.ClawTermError`). A session that ends for a reason
other than a clean DISCONNECT or the application's own suspend/close raises
a :class:`SessionEnded` subclass from ``send()``, from iteration and from
``connect()``; :attr:`SessionEnded.reason` is the
:class:`~clawterm.client.events.CloseReason`.
"""

from __future__ import annotations

from ..errors import ClawTermError
from .events import CloseReason

__all__ = [
    "AuthenticationFailed",
    "CertificateChanged",
    "ClientError",
    "ConnectFailed",
    "LinkError",
    "ProtocolFailure",
    "SavedSessionError",
    "SessionEnded",
    "SessionGone",
    "SessionRefused",
    "SessionTakenOver",
    "TrustError",
    "UnknownHost",
    "describe",
    "error_for",
]


class ClientError(ClawTermError):
    """Root of the client's exceptions."""


class SessionEnded(ClientError):
    """The session cannot be used any more from here.

    ``reason`` says why; ``code`` is the ERROR or DISCONNECT code behind it,
    if any.
    """

    def __init__(
        self, message: str, reason: CloseReason, code: int | None = None, detail: str = ""
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.code = code
        self.detail = detail


class SessionTakenOver(SessionEnded):
    """Another client resumed the session (ERROR TAKEN_OVER, SPEC §6)."""


class SessionGone(SessionEnded):
    """The daemon does not know the session or the resume token (NO_SUCH_SESSION)."""


class AuthenticationFailed(SessionEnded):
    """The daemon refused the token or the agent (AUTH_FAILED, SPEC §5)."""


class SessionRefused(SessionEnded):
    """Another ERROR ended the handshake or the session (NO_SUCH_AGENT, LIMIT…)."""


class ConnectFailed(SessionEnded):
    """The first transport could not be made, or reconnecting gave up."""


class ProtocolFailure(SessionEnded):
    """The daemon broke the protocol; the session may still be resumed later."""


class TrustError(SessionEnded):
    """The daemon's certificate was not accepted; nothing was sent to it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, CloseReason.UNTRUSTED)


class CertificateChanged(TrustError):
    """The certificate differs from the pinned one (known_hosts) or the expected one."""


class UnknownHost(TrustError):
    """No pin for this daemon and trust-on-first-use is off."""


class LinkError(ClientError, ValueError):
    """A handoff link could not be parsed."""


class SavedSessionError(ClientError):
    """The saved-sessions file or a name in it could not be used."""


_BY_REASON: dict[CloseReason, type[SessionEnded]] = {
    CloseReason.TAKEN_OVER: SessionTakenOver,
    CloseReason.NO_SUCH_SESSION: SessionGone,
    CloseReason.AUTH_FAILED: AuthenticationFailed,
    CloseReason.REFUSED: SessionRefused,
    CloseReason.CONNECT_FAILED: ConnectFailed,
    CloseReason.GAVE_UP: ConnectFailed,
    CloseReason.PROTOCOL_ERROR: ProtocolFailure,
    CloseReason.NOT_RESUMABLE: ConnectFailed,
}

_TEXT: dict[CloseReason, str] = {
    CloseReason.SUSPENDED: "the session was suspended (detached) by this client",
    CloseReason.CLOSED: "the session was closed by this client",
    CloseReason.DISCONNECTED: "the session ended (DISCONNECT)",
    CloseReason.TAKEN_OVER: (
        "the session was taken over by another client (ERROR TAKEN_OVER); "
        "this client stopped reconnecting"
    ),
    CloseReason.NO_SUCH_SESSION: (
        "the daemon does not know this session or its resume token "
        "(NO_SUCH_SESSION): it ended or expired"
    ),
    CloseReason.AUTH_FAILED: (
        "authentication failed (AUTH_FAILED): check the token, tenant and agent"
    ),
    CloseReason.REFUSED: "the daemon refused",
    CloseReason.CONNECT_FAILED: "could not connect to the daemon",
    CloseReason.PROTOCOL_ERROR: "the daemon broke the protocol",
    CloseReason.UNTRUSTED: "the daemon's certificate was refused",
    CloseReason.GAVE_UP: "gave up reconnecting",
    CloseReason.NOT_RESUMABLE: (
        "the link dropped and the daemon gave no resume token (short ACCEPT), "
        "so the session cannot be resumed"
    ),
}


def describe(reason: CloseReason, code: int | None = None, detail: str = "") -> str:
    """One sentence for people: what ended the session and the daemon's words."""
    text = _TEXT[reason]
    if reason is CloseReason.DISCONNECTED and code is not None:
        text += f" with code {code}"
    if detail:
        text += f": {detail}"
    return text


def error_for(reason: CloseReason, code: int | None = None, detail: str = "") -> SessionEnded:
    """The exception that stands for ``reason`` (a plain SessionEnded if none fits)."""
    cls = _BY_REASON.get(reason, SessionEnded)
    return cls(describe(reason, code, detail), reason, code, detail)
