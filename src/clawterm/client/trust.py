"""Trusting the daemon: TLS 1.3, a CA bundle or a pinned certificate.

Two ways to trust a daemon (SPEC §1, §16):

* **CA** — given a CA bundle (``--ca``), the certificate chain and the host
  name are verified by :mod:`ssl`, as for any TLS server.
* **Pinning** (the default, like SSH ``known_hosts``) — the daemon's
  certificate is not checked against any authority; instead the SHA-256 of
  its DER encoding is compared with the line for ``host:port`` in the
  known-hosts file. On first use there is no line: the fingerprint is
  written there (trust on first use) and reported through ``on_pin`` so
  the user can compare it with what the daemon printed at start. A
  different fingerprint later is refused with :class:`CertificateChanged`,
  whose message names the file and the line to remove. A change is never
  accepted silently; nothing is sent to a refused daemon (the check runs
  after the TLS handshake and before CONNECT, which carries the token).

An expected fingerprint (from a handoff link or ``--fingerprint``) is
checked in both modes and, when there is no line yet, pinned.

Known-hosts format: one ``host:port fingerprint`` per line, the fingerprint
as 64 lower-case hex digits; ``#`` comments and blank lines are kept. IPv6
addresses are written ``[addr]:port``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..constants import ALPN
from .errors import CertificateChanged, UnknownHost
from .paths import KNOWN_HOSTS_NAME, config_dir, ensure_private_dir

__all__ = [
    "KnownHost",
    "KnownHosts",
    "Trust",
    "fingerprint_der",
    "format_fingerprint",
    "host_key",
    "make_ssl_context",
    "normalize_fingerprint",
]

_HEX64 = re.compile(r"[0-9a-f]{64}")


def fingerprint_der(der: bytes) -> str:
    """SHA-256 of a DER certificate, 64 lower-case hex digits."""
    return hashlib.sha256(der).hexdigest()


def normalize_fingerprint(text: str) -> str:
    """Accept ``ab12…``, ``AB:12:…`` or ``SHA256:AB:12…``; return 64 lower-case hex.

    Raises :class:`ValueError` for anything else.
    """
    t = text.strip()
    if t.lower().startswith("sha256:"):
        t = t[7:]
    t = t.replace(":", "").lower()
    if not _HEX64.fullmatch(t):
        raise ValueError(f"not a SHA-256 fingerprint: {text!r}")
    return t


def format_fingerprint(fp: str) -> str:
    """``AB:12:…``, the form ``clawtermd`` prints at start."""
    h = fp.upper()
    return ":".join(h[i : i + 2] for i in range(0, len(h), 2))


def host_key(host: str, port: int) -> str:
    """The known-hosts key of a daemon: ``host:port`` (``[v6]:port``)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def make_ssl_context(ca: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A client context: TLS 1.3 minimum, ALPN ``clawterm/1``.

    With ``ca`` the chain and host name are verified against that bundle;
    without it nothing is verified by :mod:`ssl` and the caller must pin
    (:meth:`Trust.check`) before sending anything.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3  # SPEC §1: TLS 1.3 only
    ctx.set_alpn_protocols([ALPN])
    if ca is not None:
        ctx.load_verify_locations(cafile=os.fspath(ca))
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass(frozen=True, slots=True)
class KnownHost:
    """One line of the known-hosts file."""

    #: ``host:port``.
    key: str
    #: 64 lower-case hex digits.
    fingerprint: str
    #: 1-based line number.
    lineno: int


class KnownHosts:
    """The known-hosts file (default ``<config dir>/known_hosts``)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else config_dir() / KNOWN_HOSTS_NAME

    def _entries(self, text: str) -> Iterator[KnownHost]:
        for lineno, line in enumerate(text.splitlines(), 1):
            parts = line.split()
            if len(parts) < 2 or parts[0].startswith("#"):
                continue
            try:
                fp = normalize_fingerprint(parts[1])
            except ValueError:
                continue  # a line we cannot read pins nothing; ssh does the same
            yield KnownHost(parts[0], fp, lineno)

    def _read(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""

    def lookup(self, key: str) -> KnownHost | None:
        """The first line for ``key``, if any."""
        return next((e for e in self._entries(self._read()) if e.key == key), None)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[IO[str]]:
        ensure_private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "r+", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield f

    def add(self, key: str, fingerprint: str) -> KnownHost:
        """Pin ``fingerprint`` for ``key`` unless a line for it exists; return that line.

        The caller compares the returned fingerprint: another process may
        have pinned a different one first.
        """
        fp = normalize_fingerprint(fingerprint)
        with self._locked() as f:
            f.seek(0)
            text = f.read()
            existing = next((e for e in self._entries(text) if e.key == key), None)
            if existing is not None:
                return existing
            prefix = "" if not text or text.endswith("\n") else "\n"
            f.write(f"{prefix}{key} {fp}\n")
            f.flush()
            lineno = len((text + prefix).splitlines()) + 1
        return KnownHost(key, fp, lineno)


def _changed_message(key: str, seen: str, pinned: KnownHost, path: Path) -> str:
    n = pinned.lineno
    return (
        "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
        "@    WARNING: CLAWTERMD CERTIFICATE HAS CHANGED!          @\n"
        "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
        "IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\n"
        "Someone could be intercepting this connection (man-in-the-middle),\n"
        "or the daemon's certificate was replaced.\n"
        f"The daemon at {key} presented the certificate with SHA-256 fingerprint\n"
        f"    {format_fingerprint(seen)}\n"
        f"but line {n} of {path} pins\n"
        f"    {format_fingerprint(pinned.fingerprint)}\n"
        f"Offending line: {path}:{n}\n"
        f"If you know the certificate was replaced on purpose, remove line {n} of {path}\n"
        f"(for example: sed -i '{n}d' {path}) and connect again.\n"
        "Nothing was sent to this daemon; the connection was closed."
    )


class Trust:
    """How this client decides to trust a daemon, and the check itself.

    ``ca``: CA bundle (verify chain and host name); otherwise pin in
    ``known_hosts``. ``fingerprint``: the certificate must have exactly this
    SHA-256 (from a handoff link). ``tofu``: pin an unknown daemon on first
    use (True) or refuse it with :class:`UnknownHost`. ``on_pin(key, fp,
    path)`` is called after a new pin is written.
    """

    def __init__(
        self,
        *,
        ca: str | os.PathLike[str] | None = None,
        known_hosts: KnownHosts | None = None,
        fingerprint: str | None = None,
        tofu: bool = True,
        on_pin: Callable[[str, str, Path], None] | None = None,
    ) -> None:
        self.ca = ca
        self.known_hosts = known_hosts if known_hosts is not None else KnownHosts()
        self.expected = normalize_fingerprint(fingerprint) if fingerprint else None
        self.tofu = tofu
        self.on_pin = on_pin

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context for every transport of a session."""
        return make_ssl_context(self.ca)

    def check(self, host: str, port: int, der: bytes) -> str:
        """Decide on the certificate ``der`` of ``host:port``; return its fingerprint.

        Must be called after the TLS handshake and before anything is sent.
        Raises :class:`CertificateChanged` or :class:`UnknownHost`.
        """
        seen = fingerprint_der(der)
        key = host_key(host, port)
        if self.expected is not None and seen != self.expected:
            raise CertificateChanged(
                f"The daemon at {key} presented the certificate with SHA-256 fingerprint\n"
                f"    {format_fingerprint(seen)}\n"
                "but the handoff link (or --fingerprint) expects\n"
                f"    {format_fingerprint(self.expected)}\n"
                "Refusing to connect: someone could be intercepting the connection, or the\n"
                "link is for another daemon. Nothing was sent to this daemon."
            )
        if self.ca is not None:
            return seen  # the chain and name were verified by ssl
        path = self.known_hosts.path
        pinned = self.known_hosts.lookup(key)
        if pinned is None:
            if self.expected is None and not self.tofu:
                raise UnknownHost(
                    f"No certificate is pinned for {key} in {path}, and trust on first use is "
                    f"off.\nThe daemon presented SHA-256 fingerprint {format_fingerprint(seen)}.\n"
                    "Compare it with the one clawtermd printed at start, then connect with "
                    "--fingerprint."
                )
            pinned = self.known_hosts.add(key, seen)
            if pinned.fingerprint == seen and self.on_pin is not None:
                self.on_pin(key, seen, path)
        if pinned.fingerprint != seen:
            raise CertificateChanged(_changed_message(key, seen, pinned, path))
        return seen
