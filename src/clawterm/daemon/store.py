"""The session table: what a restarted daemon needs to find its sessions (SPEC §17).

One row per session: id, tenant, agent, SHA-256 of the resume token, state,
creation and detach times, capabilities — never session data, which lives
end to end in clients and agents (SPEC §4). The daemon writes a row on every
create and state change and deletes it when the session ends.

Storage is SQLite from the standard library, one table, in WAL mode with
``synchronous=NORMAL``:

* every :meth:`SessionStore.upsert` / :meth:`SessionStore.delete` is its own
  transaction, appended to the write-ahead log, so once it returns it
  survives the daemon being killed (SIGKILL, OOM, crash) at any instant;
* the WAL is fsynced at checkpoints, not on every commit. A power loss or
  kernel crash can therefore lose the last moments of changes. That is the
  right trade: the same power loss kills every agent on the node, and with
  them the sessions those rows describe. It is what makes a write cost tens
  of microseconds instead of an fsync.

A damaged file never stops the daemon (issue: "the daemon starts, says
clearly what it could not recover, and serves the rest"). Not a database,
malformed, or a schema this version does not know: :meth:`SessionStore.open`
salvages the rows it can still read, moves the file aside to
``sessions.db.corrupt-<unix time>``, starts a fresh table with what it
salvaged and says exactly that in :attr:`LoadResult.problems`. A row that
fails validation is dropped with one problem line. If the file cannot be
opened at all (permissions, another process holding it), the daemon runs
with an in-memory table and a problem line saying sessions will not
survive a restart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..session import SessionState

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "STATES",
    "TOKEN_HASH_SIZE",
    "LoadResult",
    "SessionRecord",
    "SessionStore",
]

logger = logging.getLogger("clawterm.daemon.store")

#: ``PRAGMA user_version`` of the table layout below.
SCHEMA_VERSION = 1
#: ``PRAGMA application_id``: "ClT1", marks the file as a ClawTerm session table.
APPLICATION_ID = 0x436C5431
#: Length of ``token_hash``: SHA-256 of the resume token.
TOKEN_HASH_SIZE = 32
#: Valid ``state`` values: :class:`~clawterm.session.SessionState` values.
STATES = frozenset(s.value for s in SessionState)

_MAX_U32 = 0xFFFFFFFF
_COLUMNS = (
    "session_id",
    "tenant",
    "agent",
    "token_hash",
    "state",
    "created_at",
    "detached_at",
    "capabilities",
)
_SCHEMA = """
CREATE TABLE sessions (
    session_id   INTEGER PRIMARY KEY,  -- u32, non-zero (SPEC §5)
    tenant       INTEGER NOT NULL,
    agent        INTEGER NOT NULL,
    token_hash   BLOB    NOT NULL,     -- SHA-256 of the resume token, never the token
    state        TEXT    NOT NULL,     -- SessionState value
    created_at   REAL    NOT NULL,     -- wall clock, UNIX seconds
    detached_at  REAL,                 -- wall clock, UNIX seconds; NULL while attached
    capabilities INTEGER NOT NULL
)
"""
_UPSERT = "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_SELECT = f"SELECT rowid, {', '.join(_COLUMNS)} FROM sessions ORDER BY session_id"

# Primary result codes that mean "this file is damaged or not ours".
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One row of the session table. Times are wall-clock UNIX seconds."""

    session_id: int  #: u32, non-zero
    tenant: int  #: u32
    agent: int  #: u32
    token_hash: bytes  #: SHA-256 of the resume token (32 bytes)
    state: str  #: a SessionState value: "connecting", "active", "suspended", "closed"
    created_at: float  #: when the session was created
    detached_at: float | None  #: when its client left; None while attached
    capabilities: int  #: the client's CONNECT capability bits (u32)


@dataclass
class LoadResult:
    """What :meth:`SessionStore.open` found."""

    records: list[SessionRecord] = field(default_factory=list)  #: valid rows, by session id
    problems: list[str] = field(default_factory=list)  #: one line per thing not recovered


def _u32(value: object) -> bool:
    return type(value) is int and 0 <= value <= _MAX_U32


def _finite(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]


def _normalised(r: SessionRecord) -> SessionRecord:
    """Times as floats, whatever numeric type SQLite handed back."""
    if type(r.created_at) is int or type(r.detached_at) is int:
        return dataclasses.replace(
            r,
            created_at=float(r.created_at),
            detached_at=None if r.detached_at is None else float(r.detached_at),
        )
    return r


def _invalid(r: SessionRecord) -> str | None:
    """Why ``r`` cannot be stored, or None."""
    if not _u32(r.session_id) or r.session_id == 0:
        return f"session id {r.session_id!r} is not a non-zero u32"
    if not _u32(r.tenant):
        return f"tenant {r.tenant!r} is not a u32"
    if not _u32(r.agent):
        return f"agent {r.agent!r} is not a u32"
    if type(r.token_hash) is not bytes or len(r.token_hash) != TOKEN_HASH_SIZE:
        return f"token hash is not {TOKEN_HASH_SIZE} bytes"
    if r.state not in STATES:
        return f"state {r.state!r} is not one of {', '.join(sorted(STATES))}"
    if not _finite(r.created_at):
        return f"created_at {r.created_at!r} is not a time"
    if r.detached_at is not None and not _finite(r.detached_at):
        return f"detached_at {r.detached_at!r} is not a time"
    if not _u32(r.capabilities):
        return f"capabilities {r.capabilities!r} is not a u32"
    return None


class _Damaged(Exception):
    """The file is not a usable session table; the message says why."""


def _is_damage(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # pragma: no cover - Python < 3.11
        return "malformed" in str(exc) or "not a database" in str(exc)
    return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


class SessionStore:
    """The session table in one SQLite file (SPEC §17).

    Call :meth:`open` once before anything else, on the daemon's thread,
    and :meth:`close` at shutdown. :meth:`upsert` and :meth:`delete` are
    synchronous and fast (tens of microseconds); when they return, the
    change survives a crash of the process. A write that fails (disk full,
    I/O error) is logged — at most once per ``error_log_interval`` seconds —
    and counted in :attr:`write_failures`, never raised: a session must not
    die because its row could not be written. Passing an invalid record is
    a bug and raises :class:`ValueError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        error_log_interval: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.error_log_interval = error_log_interval
        self.write_failures = 0
        self._conn: sqlite3.Connection | None = None
        self._persistent = False
        self._last_error_log = -math.inf

    @property
    def persistent(self) -> bool:
        """False when the table could not be opened and lives in memory only."""
        return self._persistent

    # -- opening -----------------------------------------------------------------

    def open(self) -> LoadResult:
        """Open (or create) the table and read it back.

        Returns every valid record and a list of problems, each a complete
        sentence for the log. Never raises for a damaged or unusable file.
        """
        if self._conn is not None:
            raise RuntimeError("session store already open")
        result = LoadResult()
        try:
            self._conn = self._open_file(result)
            self._persistent = True
        except _Damaged as exc:
            result.records = []
            salvaged = self._salvage()
            aside = self._move_aside()
            where = f"moved it to {aside}" if aside else "could not move it aside"
            note = (
                f"recovered {len(salvaged)} sessions from it"
                if salvaged
                else "no sessions could be recovered from it"
            )
            result.problems.append(
                f"session table {self.path} is unusable ({exc}): {where} and started a new "
                f"table; {note}"
            )
            try:
                self._conn = self._open_file(LoadResult())
                self._persistent = True
            except (_Damaged, sqlite3.Error, OSError) as exc2:
                self._conn = self._memory(result, exc2)
            for record in salvaged:
                self._write(_UPSERT, self._row(record))
            result.records = salvaged
        except (sqlite3.Error, OSError) as exc:
            self._conn = self._memory(result, exc)
        return result

    def _memory(self, result: LoadResult, exc: BaseException) -> sqlite3.Connection:
        result.problems.append(
            f"cannot open session table {self.path} ({exc}): keeping it in memory; "
            "sessions will not survive a restart of the daemon"
        )
        self._persistent = False
        conn = sqlite3.connect(":memory:", isolation_level=None)
        conn.execute(_SCHEMA)
        return conn

    def _open_file(self, result: LoadResult) -> sqlite3.Connection:
        """Open the file, check it is our table, read its rows into ``result``.

        Raises :class:`_Damaged` (with whatever rows could still be read in
        ``result.records``) if it is not a usable session table.
        """
        if not self.path.exists():
            # Create it owner-only; SQLite gives -wal and -shm the same mode.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        elif not self.path.is_file():
            raise _Damaged("not a regular file")
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout)
        try:
            self._check(conn, result)
        except _Damaged:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            if _is_damage(exc):
                raise _Damaged(str(exc)) from None
            raise
        return conn

    def _check(self, conn: sqlite3.Connection, result: LoadResult) -> None:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        if app_id == 0 and version == 0 and not tables:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(_SCHEMA)
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
            return
        if app_id != APPLICATION_ID:
            raise _Damaged("not a ClawTerm session table")
        if version != SCHEMA_VERSION:
            raise _Damaged(
                f"schema version {version}, this clawtermd reads version {SCHEMA_VERSION}"
            )
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            logger.warning("session table %s: journal mode %s, not WAL", self.path, mode)
        conn.execute("PRAGMA synchronous=NORMAL")
        columns = tuple(r[1] for r in conn.execute("PRAGMA table_info(sessions)"))
        if columns != _COLUMNS:
            raise _Damaged("unexpected table layout")

        damaged: str | None = None
        bad: list[int] = []
        try:
            for row in conn.execute(_SELECT):
                rowid, values = row[0], row[1:]
                record = SessionRecord(*values)
                why = _invalid(record)
                if why is None:
                    result.records.append(_normalised(record))
                else:
                    bad.append(rowid)
                    result.problems.append(f"session table {self.path}: dropped row {rowid}: {why}")
        except sqlite3.Error as exc:
            if not _is_damage(exc):
                raise
            damaged = str(exc)
        try:
            check = [r[0] for r in conn.execute("PRAGMA quick_check")]
        except sqlite3.Error as exc:
            if not _is_damage(exc):
                raise
            check = [str(exc)]
        if check != ["ok"] and damaged is None:
            damaged = f"integrity check: {check[0]}"
        if damaged is not None:
            raise _Damaged(damaged)
        if bad:
            conn.executemany("DELETE FROM sessions WHERE rowid = ?", [(r,) for r in bad])

    def _salvage(self) -> list[SessionRecord]:
        """Every valid row still readable from a damaged file, best effort.

        ``writable_schema`` lets SQLite open a file shorter than its header
        says (truncated); nothing is written through this connection.
        """
        found: dict[int, SessionRecord] = {}
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout)
        except sqlite3.Error:
            return []
        try:
            conn.execute("PRAGMA writable_schema=ON")
            for row in conn.execute(_SELECT):
                record = _normalised(SessionRecord(*row[1:]))
                if _invalid(record) is None:
                    found[record.session_id] = record
        except (sqlite3.Error, TypeError, ValueError):
            pass  # read up to the damage
        finally:
            conn.close()
        return [found[k] for k in sorted(found)]

    def _move_aside(self) -> Path | None:
        """Rename the damaged file (and its -wal/-shm) to ``<name>.corrupt-<unix time>``."""
        stamp = int(time.time())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while os.path.lexists(aside):
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        try:
            os.rename(self.path, aside)
        except OSError as exc:
            logger.error("cannot move %s aside: %s", self.path, exc.strerror or exc)
            return None
        for suffix in ("-wal", "-shm", "-journal"):
            side = Path(f"{self.path}{suffix}")
            if side.exists():
                with contextlib.suppress(OSError):
                    os.rename(side, f"{aside}{suffix}")
        return aside

    # -- writing -------------------------------------------------------------------

    @staticmethod
    def _row(r: SessionRecord) -> tuple[object, ...]:
        return (
            r.session_id,
            r.tenant,
            r.agent,
            r.token_hash,
            r.state,
            float(r.created_at),
            None if r.detached_at is None else float(r.detached_at),
            r.capabilities,
        )

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        conn = self._conn
        if conn is None:
            raise RuntimeError("session store is not open")
        try:
            conn.execute(sql, params)
        except sqlite3.Error as exc:
            self.write_failures += 1
            now = time.monotonic()
            if now - self._last_error_log >= self.error_log_interval:
                self._last_error_log = now
                logger.error(
                    "cannot write session table %s (%s); %d writes failed so far; sessions "
                    "keep running but may not survive a restart",
                    self.path,
                    exc,
                    self.write_failures,
                )

    def upsert(self, record: SessionRecord) -> None:
        """Insert or replace the row of ``record.session_id`` (create or state change)."""
        why = _invalid(record)
        if why is not None:
            raise ValueError(f"invalid session record: {why}")
        self._write(_UPSERT, self._row(record))

    def delete(self, session_id: int) -> None:
        """Remove a session's row (the session ended). Unknown ids are ignored."""
        self._write("DELETE FROM sessions WHERE session_id = ?", (session_id,))

    def close(self) -> None:
        """Close the file (SQLite checkpoints the WAL). Safe to call twice."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                logger.error("closing session table %s: %s", self.path, exc)
