"""TLS for the client leg (SPEC §1, §16).

The TCP listener speaks TLS 1.3 and nothing older. The daemon selects ALPN
``clawterm/1`` when the client offers it; a client offering no ALPN is still
accepted (SPEC §1).

With no certificate configured the daemon makes a self-signed ECDSA P-256
certificate in its state directory on first start and prints its SHA-256
fingerprint; clients pin that fingerprint on first use (SPEC §16). The
fingerprint is the SHA-256 of the certificate's DER encoding, written as 64
lower-case hex digits (:func:`fingerprint`) and, for people, as colon-separated
upper-case pairs (:func:`format_fingerprint`).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import logging
import os
import socket
import ssl
import stat
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..constants import ALPN
from ..errors import ClawTermError

__all__ = [
    "ALPN",
    "CERT_NAME",
    "CERT_VALIDITY_DAYS",
    "KEY_NAME",
    "TLSConfigError",
    "ensure_certificate",
    "fingerprint",
    "fingerprint_der",
    "format_fingerprint",
    "server_context",
]

logger = logging.getLogger("clawterm.daemon.tls")

#: File names of the self-signed certificate and its key in the state directory.
CERT_NAME = "cert.pem"
KEY_NAME = "key.pem"
#: Lifetime of a generated certificate.
CERT_VALIDITY_DAYS = 3650
#: A generated certificate is valid from this long before its creation (clock skew).
CERT_BACKDATE = datetime.timedelta(minutes=5)


class TLSConfigError(ClawTermError):
    """A certificate or key cannot be used; the message names the file."""


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context for the TLS listener: TLS 1.3 only, ALPN ``clawterm/1``.

    ``cert`` is a PEM chain (leaf first), ``key`` its PEM private key.
    Clients that offer no ALPN, or none we know, are accepted without one
    (SPEC §1). Raises :class:`TLSConfigError` if the files cannot be loaded
    or do not match.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # SPEC §1: TLS 1.3 only; 1.2 and lower are refused in the handshake.
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.set_alpn_protocols([ALPN])
    try:
        ctx.load_cert_chain(certfile=os.fspath(cert), keyfile=os.fspath(key))
    except FileNotFoundError as exc:
        raise TLSConfigError(f"{exc.filename or cert}: no such file") from None
    except ssl.SSLError as exc:
        raise TLSConfigError(
            f"cannot use certificate {cert} with key {key}: {exc.reason or exc} "
            "(not PEM, or the key does not match the certificate)"
        ) from None
    except OSError as exc:
        raise TLSConfigError(f"cannot read {exc.filename or cert}: {exc.strerror or exc}") from None
    return ctx


# ---------------------------------------------------------------------------
# Fingerprints


def fingerprint_der(der: bytes) -> str:
    """SHA-256 of a DER certificate as 64 lower-case hex digits."""
    return hashlib.sha256(der).hexdigest()


def fingerprint(cert_pem: bytes | Path) -> str:
    """SHA-256 fingerprint of the first certificate in a PEM file or PEM bytes.

    Returns 64 lower-case hex digits. Raises :class:`TLSConfigError` if
    there is no readable certificate.
    """
    where = str(cert_pem) if isinstance(cert_pem, Path) else "PEM data"
    if isinstance(cert_pem, Path):
        try:
            cert_pem = cert_pem.read_bytes()
        except OSError as exc:
            raise TLSConfigError(f"cannot read {where}: {exc.strerror or exc}") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise TLSConfigError(f"{where}: no PEM certificate found") from None
    return fingerprint_der(cert.public_bytes(serialization.Encoding.DER))


def format_fingerprint(hex_digest: str) -> str:
    """``"ab12…"`` → ``"AB:12:…"``, the form people compare by eye."""
    h = hex_digest.strip().replace(":", "").upper()
    return ":".join(h[i : i + 2] for i in range(0, len(h), 2))


# ---------------------------------------------------------------------------
# Self-signed certificate


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` atomically; the temp file has ``mode`` from its creation."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)  # mkstemp creates 0600; this only ever narrows or keeps
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _subject_alt_names() -> tuple[str, list[x509.GeneralName]]:
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    common_name = "localhost"
    host = socket.gethostname()
    if host and host != "localhost":
        try:
            host_ascii = host.encode("idna").decode("ascii")
            names.append(x509.DNSName(host_ascii))
            common_name = host_ascii[:64]
        except (UnicodeError, ValueError):
            logger.info("host name %r is not a DNS name; left out of the certificate", host)
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    names.append(x509.IPAddress(ipaddress.ip_address("::1")))
    return common_name, names


def _generate() -> tuple[bytes, bytes]:
    """A new self-signed P-256 certificate and key, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    common_name, sans = _subject_alt_names()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ClawTerm"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CERT_BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=CERT_VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def ensure_certificate(state_dir: Path) -> tuple[Path, Path, bool]:
    """The self-signed certificate in ``state_dir``, made on first use (SPEC §16).

    Returns ``(cert_path, key_path, created)``. If both ``cert.pem`` and
    ``key.pem`` exist they are reused as they are (a key readable by others
    is logged as a warning); a damaged pair is *not* replaced, because that
    would change the fingerprint clients pinned — :func:`server_context`
    reports it. If either file is missing, a new pair is generated: key
    written first with mode 0600 (never wider, even briefly), then the
    certificate with mode 0644. The caller must have prepared ``state_dir``
    and, when ``created``, should print :func:`fingerprint` of the result.
    Raises :class:`TLSConfigError` if the files cannot be written.
    """
    state_dir = Path(state_dir)
    cert_path = state_dir / CERT_NAME
    key_path = state_dir / KEY_NAME
    if cert_path.exists() and key_path.exists():
        mode = stat.S_IMODE(key_path.stat().st_mode)
        if mode & 0o077:
            logger.warning("TLS key %s has mode %04o: chmod 600", key_path, mode)
        return cert_path, key_path, False
    if cert_path.exists() or key_path.exists():
        logger.warning(
            "only one of %s and %s exists; generating a new certificate", cert_path, key_path
        )
    cert_pem, key_pem = _generate()
    try:
        _write_private(key_path, key_pem, 0o600)
        _write_private(cert_path, cert_pem, 0o644)
    except OSError as exc:
        raise TLSConfigError(
            f"cannot write certificate to {state_dir}: {exc.strerror or exc}"
        ) from None
    return cert_path, key_path, True
