"""Handoff links: one URL that lets another device take a session over.

Format::

    clawterm://HOST:PORT/resume?sid=SESSION_ID&tok=RESUME_TOKEN&fp=FINGERPRINT&tenant=T&agent=A

* ``HOST`` — name or address of the daemon (IPv6 in brackets), ``PORT`` its
  TLS port;
* ``sid`` — the session id in decimal;
* ``tok`` — the 16-byte resume token, 32 hex digits. **It is a secret**:
  whoever holds the link can take the session over (SPEC §6), until the
  session ends;
* ``fp`` — SHA-256 of the daemon's certificate, 64 hex digits (optional):
  the receiving device refuses any other certificate and pins this one;
* ``tenant``, ``agent`` — for display and for the saved-session record;
* ``tr``, ``qp`` — optional: the transport policy (``tcp``, ``quic``,
  ``auto``) and the daemon's QUIC port, when not the defaults. Links without
  them (older clients) mean TLS/TCP and 7221; older clients ignore them.

The token the session was opened with (CONNECT) is never in a link: a
RESUME needs only the session id and the resume token. The receiving device
RESUMEs with last_rx_seq = 0, so the daemon replays everything it retains
(the full context), and the device that had the session gets ERROR
TAKEN_OVER.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit

from .errors import LinkError
from .trust import normalize_fingerprint

__all__ = ["SCHEME", "HandoffLink", "is_link"]

SCHEME = "clawterm"
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")


def is_link(text: str) -> bool:
    """True if ``text`` looks like a handoff link rather than a host name."""
    return text.lower().startswith(SCHEME + "://")


@dataclass(frozen=True, slots=True)
class HandoffLink:
    """The contents of a handoff link."""

    #: Daemon host name or address.
    host: str
    #: Daemon TLS port.
    port: int
    #: Session id.
    session_id: int
    #: 16-byte resume token (secret).
    resume_token: bytes
    #: Certificate SHA-256 as 64 hex digits, or None.
    fingerprint: str | None = None
    #: Tenant id.
    tenant: int = 0
    #: Agent id.
    agent: int = 1
    #: Transport policy ("tcp", "quic", "auto"), or None (the receiver decides).
    transport: str | None = None
    #: Daemon QUIC port, or None (7221).
    quic_port: int | None = None

    def to_url(self) -> str:
        """The link as text."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        query: dict[str, str | int] = {"sid": self.session_id, "tok": self.resume_token.hex()}
        if self.fingerprint:
            query["fp"] = self.fingerprint
        query["tenant"] = self.tenant
        query["agent"] = self.agent
        if self.transport:
            query["tr"] = self.transport
        if self.quic_port is not None and self.quic_port != 7221:
            query["qp"] = self.quic_port
        return f"{SCHEME}://{host}:{self.port}/resume?{urlencode(query)}"

    @classmethod
    def parse(cls, url: str) -> HandoffLink:
        """Parse a link; raises :class:`LinkError` saying what is wrong."""
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as exc:
            raise LinkError(f"not a clawterm link: {exc}") from None
        if parts.scheme.lower() != SCHEME:
            raise LinkError(f"a handoff link starts with {SCHEME}://")
        if not parts.hostname:
            raise LinkError("the link names no host")
        if parts.path.strip("/").lower() != "resume":
            raise LinkError(f"unknown link action {parts.path!r} (expected /resume)")
        query = {k: v[-1] for k, v in parse_qs(parts.query, strict_parsing=False).items()}
        try:
            sid = int(query["sid"])
            token_hex = query["tok"]
        except KeyError as exc:
            raise LinkError(f"the link lacks {exc.args[0]}=") from None
        except ValueError:
            raise LinkError("sid= must be a decimal session id") from None
        if not 0 < sid <= 0xFFFFFFFF:
            raise LinkError("sid= is out of range")
        if not _HEX32.fullmatch(token_hex):
            raise LinkError("tok= must be 32 hex digits")
        fp = query.get("fp")
        try:
            fingerprint = normalize_fingerprint(fp) if fp else None
            tenant = int(query.get("tenant", "0"))
            agent = int(query.get("agent", "1"))
            quic_port = int(query["qp"]) if "qp" in query else None
        except ValueError as exc:
            raise LinkError(f"bad link field: {exc}") from None
        transport = query.get("tr") or None
        if transport not in (None, "tcp", "quic", "auto"):
            raise LinkError(f"unknown transport tr={transport!r} (tcp, quic or auto)")
        if quic_port is not None and not 0 < quic_port < 65536:
            raise LinkError("qp= is out of range")
        return cls(
            parts.hostname,
            port if port is not None else 7220,
            sid,
            bytes.fromhex(token_hex),
            fingerprint,
            tenant,
            agent,
            transport,
            quic_port,
        )
