"""Exceptions.

There is one root, :class:`ClawTermError`, and two families under it, kept
apart as h11 does:

* :class:`LocalProtocolError` — *you* misused the API (sent DATA on a closed
  session, encoded an out-of-range field). A bug in the caller.
* :class:`RemoteProtocolError` — the *peer* broke the protocol. Each subclass
  carries the ERROR code the spec answers it with (SPEC §12) as a class
  attribute, and a short message that is safe to put on the wire. Internal
  details never go into that message.

:class:`PeerError` is not a protocol violation: it is an ERROR frame the peer
sent us, surfaced to the application (for example ``TAKEN_OVER``).
"""

from __future__ import annotations

from .constants import ErrorCode

__all__ = [
    "BadCrc",
    "BadFrame",
    "BadPayload",
    "ClawTermError",
    "LocalProtocolError",
    "PeerError",
    "ProtocolViolation",
    "RemoteProtocolError",
    "TooLarge",
    "UnsupportedVersion",
]


class ClawTermError(Exception):
    """Root of every exception this package raises on purpose."""


class LocalProtocolError(ClawTermError):
    """The caller asked for something the protocol or the API does not allow."""


class RemoteProtocolError(ClawTermError):
    """The peer sent something the protocol does not allow.

    ``code`` is the ERROR code to answer with; ``message`` is wire-safe text.
    """

    code: ErrorCode = ErrorCode.PROTOCOL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadFrame(RemoteProtocolError):
    """A frame did not start with 0x7E (SPEC §2)."""

    code = ErrorCode.BAD_FRAME


class BadCrc(RemoteProtocolError):
    """A frame's CRC-16 did not match (SPEC §2)."""

    code = ErrorCode.BAD_CRC


class TooLarge(RemoteProtocolError):
    """A frame's LEN was above the receiver's limit (SPEC §2)."""

    code = ErrorCode.TOO_LARGE


class BadPayload(RemoteProtocolError):
    """A payload had a length or content its layout does not allow (SPEC §3)."""

    code = ErrorCode.BAD_PAYLOAD


class UnsupportedVersion(RemoteProtocolError):
    """A CONNECT or ACCEPT carried a version other than 1 (SPEC §5)."""

    code = ErrorCode.UNSUPPORTED_VERSION


class ProtocolViolation(RemoteProtocolError):
    """A well-formed frame at the wrong time or for the wrong session (SPEC §5)."""

    code = ErrorCode.PROTOCOL


class PeerError(ClawTermError):
    """The peer sent an ERROR frame (SPEC §12)."""

    def __init__(self, code: int, message: str) -> None:
        try:
            name = ErrorCode(code).name
        except ValueError:
            name = f"code {code}"
        super().__init__(f"{name}: {message}" if message else name)
        self.code = code
        self.message = message
