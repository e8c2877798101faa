"""Saved sessions: what ``clawterm resume`` needs after the client machine reboots.

Every session the CLI (or a library user passing a :class:`SessionStore`)
attaches is recorded in ``<config dir>/sessions.json`` (mode 0600; it holds
resume tokens, which are secrets): daemon host, port and certificate
fingerprint, tenant, agent, session id, resume token, last_rx_seq, last
seen time and state. The record is rewritten on every state change and as
last_rx_seq advances, at most once per ``save_interval`` (the adapter
throttles; see :mod:`clawterm.client.aio`).

The saved last_rx_seq is the SEQ of the last bytes handed to the
application, never more; it may lag by up to ``save_interval``, so a
process that dies may see those last bytes again when it resumes (the
daemon replays them if it still retains them), but never misses any.

What is *not* saved: the resend buffer. DATA sent by a client and not yet
acknowledged by the agent lives only in that client's memory; if the
process dies, a later ``clawterm resume`` cannot resend it (keystrokes
typed just before a crash may be lost). Output toward the client is safe:
the agent keeps it until the client acknowledges it (SPEC §4).

Writers take an exclusive ``flock`` on ``sessions.json.lock`` and replace
the file atomically, so concurrent clients do not lose each other's
records.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .errors import SavedSessionError
from .link import HandoffLink
from .paths import SESSIONS_NAME, config_dir, ensure_private_dir
from .protocol import ResumeTicket

__all__ = ["RESUMABLE_STATES", "SavedSession", "SessionStore"]

#: Saved states from which ``clawterm resume`` without a name picks a session.
RESUMABLE_STATES = frozenset({"connecting", "connected", "reconnecting", "suspended"})
_VERSION = 1


@dataclass(frozen=True, slots=True)
class SavedSession:
    """One saved session."""

    #: Name for ``clawterm resume NAME`` (unique in the file).
    name: str
    #: Daemon host.
    host: str
    #: Daemon TLS port.
    port: int
    #: Tenant id.
    tenant: int
    #: Agent id.
    agent: int
    #: Session id.
    session_id: int
    #: Resume token (secret).
    resume_token: bytes
    #: SEQ of the last daemon DATA handed to the application.
    last_rx_seq: int = 0
    #: Daemon certificate SHA-256 (64 hex), if known.
    fingerprint: str | None = None
    #: CA bundle the daemon was verified with, if any.
    ca: str | None = None
    #: Keepalive interval from ACCEPT, seconds.
    keepalive: float | None = None
    #: Client state when last saved (ClientState value).
    state: str = "connected"
    #: Close reason when last saved (CloseReason value), or "".
    reason: str = ""
    #: Detail text (DISCONNECT reason, ERROR message).
    detail: str = ""
    #: Unix time of creation.
    created: float = 0.0
    #: Unix time the session was last seen alive or saved.
    last_seen: float = 0.0
    #: Transport policy ("tcp", "quic", "auto"); None in records written before it existed.
    transport: str | None = None
    #: Daemon QUIC (UDP) port; None: the default 7221.
    quic_port: int | None = None

    @property
    def resumable(self) -> bool:
        """True if ``clawterm resume`` should offer this one by default."""
        return self.state in RESUMABLE_STATES

    def ticket(self, last_rx_seq: int | None = None) -> ResumeTicket:
        """The RESUME ticket (with ``last_rx_seq`` overridden, e.g. 0 for handoff)."""
        rx = self.last_rx_seq if last_rx_seq is None else last_rx_seq
        return ResumeTicket(self.session_id, self.resume_token, rx, self.keepalive)

    def link(self) -> HandoffLink:
        """The handoff link of this session."""
        return HandoffLink(
            self.host,
            self.port,
            self.session_id,
            self.resume_token,
            self.fingerprint,
            self.tenant,
            self.agent,
            self.transport,
            self.quic_port,
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["resume_token"] = self.resume_token.hex()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SavedSession:
        fields = dict(data)
        fields["resume_token"] = bytes.fromhex(fields["resume_token"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in fields.items() if k in known})


class SessionStore:
    """The saved-sessions file. Every method re-reads it: other clients write too."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else config_dir() / SESSIONS_NAME

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        ensure_private_dir(self.path.parent)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> list[SavedSession]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise SavedSessionError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(raw)
            return [SavedSession.from_json(s) for s in data.get("sessions", [])]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SavedSessionError(f"{self.path} is not a saved-sessions file: {exc}") from None

    def _write(self, sessions: list[SavedSession]) -> None:
        body = json.dumps(
            {"version": _VERSION, "sessions": [s.to_json() for s in sessions]}, indent=1
        )
        fd, tmp = tempfile.mkstemp(prefix=".sessions.", dir=self.path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(body + "\n")
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def entries(self) -> list[SavedSession]:
        """All saved sessions, most recently seen first."""
        return sorted(self._read(), key=lambda s: s.last_seen, reverse=True)

    def get(self, name: str | None = None) -> SavedSession:
        """The session called ``name`` (or the only one it is a prefix of).

        With no name: the most recently seen resumable session. Raises
        :class:`SavedSessionError` saying what matched.
        """
        sessions = self.entries()
        if name is None:
            for s in sessions:
                if s.resumable:
                    return s
            raise SavedSessionError(
                f"no resumable saved session in {self.path} (see `clawterm sessions`)"
            )
        exact = [s for s in sessions if s.name == name]
        if exact:
            return exact[0]
        matches = [s for s in sessions if s.name.startswith(name)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise SavedSessionError(f"no saved session named {name!r} (see `clawterm sessions`)")
        names = ", ".join(s.name for s in matches)
        raise SavedSessionError(f"{name!r} matches several saved sessions: {names}")

    def save(self, record: SavedSession) -> None:
        """Insert or replace the record with ``record.name``."""
        with self._lock():
            sessions = [s for s in self._read() if s.name != record.name]
            sessions.append(record)
            self._write(sessions)

    def update(self, name: str, change: Callable[[SavedSession], SavedSession]) -> None:
        """Apply ``change`` to the record called ``name``, if it is still there."""
        with self._lock():
            sessions = self._read()
            for i, s in enumerate(sessions):
                if s.name == name:
                    sessions[i] = change(s)
                    self._write(sessions)
                    return

    def remove(self, name: str) -> bool:
        """Forget the record called ``name``; True if there was one."""
        with self._lock():
            sessions = self._read()
            kept = [s for s in sessions if s.name != name]
            if len(kept) == len(sessions):
                return False
            self._write(kept)
            return True

    def prune(self) -> list[str]:
        """Forget every record that cannot be resumed; return their names."""
        with self._lock():
            sessions = self._read()
            gone = [s.name for s in sessions if not s.resumable]
            self._write([s for s in sessions if s.resumable])
            return gone

    def unique_name(self, base: str) -> str:
        """``base``, or ``base-2``, ``base-3``… whichever is free."""
        names = {s.name for s in self._read()}
        if base not in names:
            return base
        n = 2
        while f"{base}-{n}" in names:
            n += 1
        return f"{base}-{n}"

    def touch(self, name: str, **fields: Any) -> None:
        """Update some fields of ``name`` and its last-seen time."""
        self.update(name, lambda s: replace(s, last_seen=time.time(), **fields))
