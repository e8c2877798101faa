"""Tokens: the token file, CONNECT authentication, nonce replay guard (SPEC §5, §16).

A token is 32 random bytes, shown to people as 64 lower-case hex characters.
The daemon never stores a token, only its SHA-256, in a TOML file::

    [[token]]
    tenant = 0
    agents = "*"          # or a list of agent ids: [1, 2]
    sha256 = "…64 hex…"   # SHA-256 of the 32 raw token bytes
    label = "development"

How CONNECT is checked (SPEC §5): :meth:`TokenStore.check` hashes the
presented token once, compares the hash with every entry of the tenant using
:func:`hmac.compare_digest`, without stopping at a match, and only then looks
at the agent id. The answer is one bool, so the daemon sends the same
AUTH_FAILED whatever was wrong. Comparing hashes rather than tokens already
means a timing difference would leak bits of a hash of a secret, not of the
secret; the constant-time loop is a second wall.

:class:`NonceGuard` remembers ``(tenant, nonce)`` pairs for ten minutes so a
recorded CONNECT cannot be replayed (SPEC §5). It holds a bounded number of
entries and refuses new ones when full rather than forgetting a live one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import stat
import tempfile
import tomllib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from ..errors import ClawTermError

__all__ = [
    "DEV_TOKEN_LABEL",
    "DEV_TOKEN_NAME",
    "MAX_ID",
    "MAX_LABEL_LENGTH",
    "MAX_TOKEN_FILE_SIZE",
    "NONCE_SIZE",
    "TOKEN_SIZE",
    "NonceGuard",
    "NonceResult",
    "TokenEntry",
    "TokenFileError",
    "TokenStore",
    "cmd_token_list",
    "cmd_token_new",
    "ensure_dev_token",
    "format_agents",
    "generate_token",
    "parse_agents",
    "parse_token",
    "token_hash",
]

logger = logging.getLogger("clawterm.daemon.tokens")

#: Raw token length in bytes (SPEC §5).
TOKEN_SIZE = 32
#: CONNECT nonce length in bytes (SPEC §5).
NONCE_SIZE = 16
#: Tenant and agent ids are u32 (SPEC §5).
MAX_ID = 0xFFFFFFFF
#: Longest label accepted, in characters.
MAX_LABEL_LENGTH = 256
#: A token file larger than this is refused rather than parsed.
MAX_TOKEN_FILE_SIZE = 16 * 1024 * 1024
#: File name of the development token inside the state directory.
DEV_TOKEN_NAME = "dev-token"
#: Label of the development token entry.
DEV_TOKEN_LABEL = "development"

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_ENTRY_KEYS = frozenset({"tenant", "agents", "sha256", "label"})


class TokenFileError(ClawTermError):
    """The token file cannot be read or is malformed.

    The message names the file and, where there is one, the entry (its
    position and label) and what is wrong with it.
    """


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One ``[[token]]`` table of the token file."""

    tenant: int  #: tenant the token belongs to
    agents: frozenset[int] | None  #: agent ids it may reach; None means all ("*")
    sha256: bytes  #: SHA-256 of the 32 raw token bytes
    label: str  #: free text for people ("" when absent)

    def allows(self, agent: int) -> bool:
        """True if this entry grants access to ``agent``."""
        return self.agents is None or agent in self.agents


# ---------------------------------------------------------------------------
# Small helpers


def generate_token() -> bytes:
    """32 bytes from the operating system's CSPRNG."""
    return secrets.token_bytes(TOKEN_SIZE)


def token_hash(token: bytes) -> bytes:
    """SHA-256 of the raw token bytes: what the token file stores."""
    return hashlib.sha256(token).digest()


def parse_token(text: str) -> bytes:
    """The 32 raw bytes of a token written as 64 hex characters.

    Surrounding whitespace is ignored. Raises :class:`ValueError` otherwise.
    """
    text = text.strip()
    if not _HEX64.fullmatch(text):
        raise ValueError("a token is 64 hexadecimal characters")
    return bytes.fromhex(text)


def _check_id(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise ValueError(f"{what} must be an integer from 0 to {MAX_ID}, not {value!r}")
    return value


def parse_agents(spec: str) -> frozenset[int] | None:
    """Parse the ``--agents`` argument: ``"*"`` (all agents) or ``"1,2,7"``.

    Returns None for all agents. Raises :class:`ValueError` with a message
    fit for the command line on anything else.
    """
    spec = spec.strip()
    if spec == "*":
        return None
    if not spec:
        raise ValueError('--agents needs "*" or a comma-separated list of agent ids')
    ids: set[int] = set()
    for raw in spec.split(","):
        part = raw.strip()
        if not re.fullmatch(r"[0-9]+", part):
            raise ValueError(f'--agents: {part!r} is not an agent id (use "*" or ids like 1,2,7)')
        value = int(part)
        if value > MAX_ID:
            raise ValueError(f"--agents: agent id {value} is above {MAX_ID}")
        ids.add(value)
    return frozenset(ids)


def format_agents(agents: frozenset[int] | None) -> str:
    """``"*"`` or the sorted ids joined by commas (the inverse of :func:`parse_agents`)."""
    return "*" if agents is None else ",".join(str(a) for a in sorted(agents))


def _toml_string(text: str) -> str:
    """``text`` as a TOML basic string."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif (code < 0x20 and ch != "\t") or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _check_label(label: str) -> str:
    if not isinstance(label, str):
        raise ValueError(f"label must be a string, not {type(label).__name__}")
    if len(label) > MAX_LABEL_LENGTH:
        raise ValueError(f"label is longer than {MAX_LABEL_LENGTH} characters")
    try:
        label.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("label is not valid Unicode text") from None
    return label


def _entry_toml(entry: TokenEntry) -> str:
    agents = (
        '"*"' if entry.agents is None else "[" + ", ".join(map(str, sorted(entry.agents))) + "]"
    )
    return (
        "[[token]]\n"
        f"tenant = {entry.tenant}\n"
        f"agents = {agents}\n"
        f'sha256 = "{entry.sha256.hex()}"\n'
        f"label = {_toml_string(entry.label)}\n"
    )


# ---------------------------------------------------------------------------
# Parsing the file


def _describe(index: int, raw: Any) -> str:
    label = raw.get("label") if isinstance(raw, dict) else None
    if isinstance(label, str) and label:
        return f"token #{index} (label {label!r})"
    return f"token #{index}"


def _parse_entry(raw: Any, where: str) -> TokenEntry:
    if not isinstance(raw, dict):
        raise TokenFileError(f"{where}: must be a [[token]] table")
    unknown = sorted(set(raw) - _ENTRY_KEYS)
    if unknown:
        raise TokenFileError(
            f"{where}: unknown key {unknown[0]!r} (allowed: tenant, agents, sha256, label)"
        )
    for key in ("tenant", "agents", "sha256"):
        if key not in raw:
            raise TokenFileError(f"{where}: missing {key!r}")

    tenant = raw["tenant"]
    if isinstance(tenant, bool) or not isinstance(tenant, int) or not 0 <= tenant <= MAX_ID:
        raise TokenFileError(f"{where}: tenant must be an integer from 0 to {MAX_ID}")

    agents_raw = raw["agents"]
    agents: frozenset[int] | None
    if agents_raw == "*":
        agents = None
    elif isinstance(agents_raw, list):
        if not agents_raw:
            raise TokenFileError(f'{where}: agents is empty (use "*" or a list of agent ids)')
        for a in agents_raw:
            if isinstance(a, bool) or not isinstance(a, int) or not 0 <= a <= MAX_ID:
                raise TokenFileError(
                    f"{where}: agents must hold integers from 0 to {MAX_ID}, not {a!r}"
                )
        agents = frozenset(agents_raw)
    else:
        raise TokenFileError(f'{where}: agents must be "*" or a list of agent ids')

    digest = raw["sha256"]
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise TokenFileError(f"{where}: sha256 must be 64 hexadecimal characters")

    label = raw.get("label", "")
    try:
        _check_label(label)
    except ValueError as exc:
        raise TokenFileError(f"{where}: {exc}") from None

    return TokenEntry(tenant=tenant, agents=agents, sha256=bytes.fromhex(digest), label=label)


def _parse_text(text: str, path: Path) -> list[TokenEntry]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TokenFileError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - {"token"})
    if unknown:
        raise TokenFileError(
            f"{path}: unknown top-level key {unknown[0]!r} (entries are [[token]] tables)"
        )
    tables = doc.get("token", [])
    if not isinstance(tables, list):
        raise TokenFileError(f"{path}: 'token' must be an array of tables: write [[token]]")
    return [_parse_entry(raw, f"{path}: {_describe(i, raw)}") for i, raw in enumerate(tables, 1)]


def _read_file(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TokenFileError(f"{path}: token file does not exist") from None
    except OSError as exc:
        raise TokenFileError(f"{path}: cannot open token file: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise TokenFileError(f"{path}: not a regular file")
    with os.fdopen(fd, "rb") as f:
        if st.st_size > MAX_TOKEN_FILE_SIZE:
            raise TokenFileError(f"{path}: larger than {MAX_TOKEN_FILE_SIZE} bytes")
        if st.st_mode & 0o022:
            logger.warning(
                "token file %s has mode %04o: other users can add tokens to it; chmod 600",
                path,
                stat.S_IMODE(st.st_mode),
            )
        data = f.read(MAX_TOKEN_FILE_SIZE + 1)
    if len(data) > MAX_TOKEN_FILE_SIZE:
        raise TokenFileError(f"{path}: larger than {MAX_TOKEN_FILE_SIZE} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenFileError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data``: temp file in the same directory, fsync, rename.

    The temp file is created with ``mode`` from the start (never wider).
    """
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@contextlib.contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``directory`` so two ``token new`` never race."""
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(dfd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(dfd)  # releases the lock


# ---------------------------------------------------------------------------
# The store


class TokenStore:
    """The token table of one token file.

    Call :meth:`load` once at start (it raises on a bad file) and
    :meth:`reload` on SIGHUP (it keeps the old table on a bad file). The
    table is swapped whole, so :meth:`check` always sees one consistent
    version of the file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._entries: tuple[TokenEntry, ...] = ()
        self._by_tenant: dict[int, tuple[TokenEntry, ...]] = {}

    @property
    def entries(self) -> tuple[TokenEntry, ...]:
        """The entries in force, in file order."""
        return self._entries

    def _install(self, entries: Iterable[TokenEntry]) -> None:
        entries = tuple(entries)
        by_tenant: dict[int, list[TokenEntry]] = {}
        for e in entries:
            by_tenant.setdefault(e.tenant, []).append(e)
        self._entries = entries
        self._by_tenant = {t: tuple(es) for t, es in by_tenant.items()}

    def load(self) -> None:
        """Read and validate the file, then put it in force.

        Raises :class:`TokenFileError` naming the file, the entry and the
        problem; the previous table then stays in force.
        """
        entries = _parse_text(_read_file(self.path), self.path)
        if not entries:
            logger.warning(
                "token file %s has no [[token]] entries: every CONNECT will fail", self.path
            )
        self._install(entries)

    def reload(self) -> bool:
        """Load the file again (for SIGHUP). Logs and keeps the old table on error."""
        try:
            self.load()
        except TokenFileError as exc:
            logger.error("token file not reloaded, previous tokens stay in force: %s", exc)
            return False
        logger.info("token file %s reloaded: %d entries", self.path, len(self._entries))
        return True

    def check(self, tenant: int, agent: int, token: bytes) -> bool:
        """True if ``token`` is valid for ``tenant`` and allows ``agent`` (SPEC §5).

        Constant time in the token: one hash, then every entry of the tenant
        compared with :func:`hmac.compare_digest`, no early exit; the agent
        is looked at only after the loop. The caller must answer every False
        with the same AUTH_FAILED.
        """
        digest = hashlib.sha256(token).digest()
        matched: list[TokenEntry] = []
        for entry in self._by_tenant.get(tenant, ()):
            if hmac.compare_digest(digest, entry.sha256):
                matched.append(entry)
        return any(entry.allows(agent) for entry in matched)

    def add(self, tenant: int, agents: frozenset[int] | None, label: str) -> str:
        """Create a token for ``tenant`` and ``agents`` (None = all), store its hash.

        Appends one ``[[token]]`` table to the file (creating it if missing),
        keeping everything already in it, comments included, and rewrites it
        atomically with mode 0600. Returns the token as 64 hex characters:
        the only time it exists outside the caller; the file keeps only its
        SHA-256. A running daemon sees the new entry after SIGHUP. Raises
        :class:`ValueError` for a bad argument, :class:`TokenFileError` if
        the existing file is malformed or cannot be written.
        """
        _check_id(tenant, "tenant")
        if agents is not None:
            if not agents:
                raise ValueError("agents must be None (all) or a non-empty set of agent ids")
            for a in agents:
                _check_id(a, "agent id")
        _check_label(label)
        token = generate_token()
        entry = TokenEntry(tenant=tenant, agents=agents, sha256=token_hash(token), label=label)
        target = Path(os.path.realpath(self.path))
        try:
            with _dir_lock(target.parent):
                try:
                    old = _read_file(target)
                except TokenFileError:
                    if target.exists():
                        raise
                    old = ""
                _parse_text(old, self.path)  # refuse to append to a broken file
                if old and not old.endswith("\n"):
                    old += "\n"
                new = old + ("\n" if old else "") + _entry_toml(entry)
                entries = _parse_text(new, self.path)  # what we write must load
                _write_atomic(target, new.encode("utf-8"), 0o600)
        except OSError as exc:
            raise TokenFileError(
                f"{self.path}: cannot write token file: {exc.strerror or exc}"
            ) from None
        self._install(entries)
        return token.hex()


# ---------------------------------------------------------------------------
# Development token


def ensure_dev_token(state_dir: Path, tokens_path: Path) -> Path | None:
    """Create a development token if there is no token file (SPEC §16).

    If ``tokens_path`` exists, does nothing and returns None. Otherwise
    writes the plain token (64 hex characters and a newline) to
    ``state_dir/dev-token`` with mode 0600 — created that way, never
    readable by others even for a moment — and then a token file holding
    its hash (tenant 0, all agents, label "development"). Returns the
    dev-token path; the caller must tell the operator where it is. The
    caller must have prepared ``state_dir``. Raises :class:`TokenFileError`
    if either file cannot be written.
    """
    state_dir = Path(state_dir)
    tokens_path = Path(tokens_path)
    if os.path.lexists(tokens_path):
        return None
    token = generate_token()
    entry = TokenEntry(tenant=0, agents=None, sha256=token_hash(token), label=DEV_TOKEN_LABEL)
    dev_path = state_dir / DEV_TOKEN_NAME
    header = (
        "# ClawTerm token file (SPEC §5). Each [[token]] holds the SHA-256 of a token,\n"
        "# never the token. Add tokens with `clawtermd token new`; reload with SIGHUP.\n\n"
    )
    try:
        # The token first: a crash before the token file exists just starts over.
        _write_atomic(dev_path, (token.hex() + "\n").encode("ascii"), 0o600)
        _write_atomic(tokens_path, (header + _entry_toml(entry)).encode("utf-8"), 0o600)
    except OSError as exc:
        raise TokenFileError(
            f"cannot create development token ({exc.filename or tokens_path}): "
            f"{exc.strerror or exc}"
        ) from None
    return dev_path


# ---------------------------------------------------------------------------
# Command-line helpers


def cmd_token_new(
    tokens_path: str | os.PathLike[str], tenant: int, agents_spec: str, label: str
) -> str:
    """``clawtermd token new``: add a token, return it as 64 hex characters.

    Raises :class:`ValueError` for bad arguments and :class:`TokenFileError`
    for file problems; the caller prints the message and exits non-zero.
    The caller must print the token once and tell the user it is not stored.
    """
    agents = parse_agents(agents_spec)
    return TokenStore(tokens_path).add(tenant, agents, label)


def cmd_token_list(tokens_path: str | os.PathLike[str]) -> list[str]:
    """``clawtermd token list``: one header line, then one line per entry.

    Shows tenant, agents, the first 16 hex digits of each hash and the
    label. Raises :class:`TokenFileError` if the file is missing or bad.
    """
    store = TokenStore(tokens_path)
    store.load()
    lines = [f"{'TENANT':>10}  {'AGENTS':<20}  {'SHA256':<17}  LABEL"]
    for e in store.entries:
        agents = format_agents(e.agents)
        if len(agents) > 20:
            agents = agents[:19] + "…"
        lines.append(f"{e.tenant:>10}  {agents:<20}  {e.sha256.hex()[:16]}…  {e.label}")
    return lines


# ---------------------------------------------------------------------------
# Nonce replay guard


class NonceResult(Enum):
    """What :meth:`NonceGuard.check` decided."""

    OK = "ok"  #: new nonce, now remembered; go on
    REPLAY = "replay"  #: seen from this tenant within the window: answer AUTH_FAILED
    FULL = "full"  #: the table is full of live nonces: answer LIMIT


class NonceGuard:
    """Remembers ``(tenant, nonce)`` for ``window`` seconds (SPEC §5). Sans-I/O.

    Time comes in as ``now`` (monotonic seconds, never decreasing). Entries
    are kept in buckets of ``granularity`` seconds in arrival order, so
    expiry drops whole buckets from the old end; an entry may be kept up to
    one granularity longer than ``window``, never shorter. At
    ``max_entries`` live entries a new nonce is refused with FULL rather
    than forgetting a live one. Each entry costs one 20-byte ``bytes`` key
    in a set and a list slot (about 100 bytes).

    The caller must call :meth:`check` only after the token checked out, so
    that only holders of a valid token can fill the table.
    """

    def __init__(
        self, window: float = 600.0, max_entries: int = 1_000_000, *, granularity: float = 1.0
    ) -> None:
        if not (math.isfinite(window) and window > 0):
            raise ValueError("window must be a positive number of seconds")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if not (math.isfinite(granularity) and granularity > 0):
            raise ValueError("granularity must be a positive number of seconds")
        self.window = window
        self.max_entries = max_entries
        self.granularity = granularity
        self._seen: set[bytes] = set()
        # (bucket start time, keys inserted in [start, start + granularity))
        self._buckets: deque[tuple[float, list[bytes]]] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def expire(self, now: float) -> None:
        """Forget every entry older than the window."""
        horizon = now - self.window - self.granularity
        buckets = self._buckets
        seen = self._seen
        while buckets and buckets[0][0] <= horizon:
            _, keys = buckets.popleft()
            seen.difference_update(keys)

    def check(self, tenant: int, nonce: bytes, now: float) -> NonceResult:
        """Record ``nonce`` for ``tenant`` unless it is a replay or the table is full.

        Raises :class:`ValueError` if ``nonce`` is not 16 bytes or ``tenant``
        is not a u32.
        """
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
        key = _check_id(tenant, "tenant").to_bytes(4, "big") + bytes(nonce)
        self.expire(now)
        if key in self._seen:
            return NonceResult.REPLAY
        if len(self._seen) >= self.max_entries:
            return NonceResult.FULL
        self._seen.add(key)
        buckets = self._buckets
        if buckets and now < buckets[-1][0] + self.granularity:
            buckets[-1][1].append(key)
        else:
            buckets.append((now, [key]))
        return NonceResult.OK
