"""TLS listener context and the self-signed certificate (SPEC §1, §16): real sockets."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from clawterm.daemon.tls import (
    ALPN,
    TLSConfigError,
    ensure_certificate,
    fingerprint,
    fingerprint_der,
    format_fingerprint,
    server_context,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def certdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("state")
    ensure_certificate(d)
    return d


class OneShotServer:
    """Accepts connections on loopback and records each handshake's outcome."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.results: list[tuple[str, str | None]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            raw.settimeout(5)
            try:
                with self.ctx.wrap_socket(raw, server_side=True) as tls:
                    self.results.append((tls.version() or "", tls.selected_alpn_protocol()))
                    tls.sendall(b"hi")
            except (ssl.SSLError, OSError) as exc:
                self.results.append(("error", type(exc).__name__))
                raw.close()
            self.done.set()

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.listener.close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(certdir: Path) -> Iterator[OneShotServer]:
    srv = OneShotServer(server_context(certdir / "cert.pem", certdir / "key.pem"))
    yield srv
    srv.close()


def client_ctx(certdir: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certdir / "cert.pem"))
    return ctx


def test_tls13_with_alpn_and_verification(server: OneShotServer, certdir: Path) -> None:
    ctx = client_ctx(certdir)  # verifies the chain and the name "localhost"
    ctx.set_alpn_protocols([ALPN])
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() == "TLSv1.3"
        assert tls.selected_alpn_protocol() == "clawterm/1"
        assert tls.recv(2) == b"hi"
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        assert fingerprint_der(der) == fingerprint(certdir / "cert.pem")
    assert ALPN == "clawterm/1"


def test_ip_address_sans_verify(server: OneShotServer, certdir: Path) -> None:
    ctx = client_ctx(certdir)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.recv(2) == b"hi"


def test_no_alpn_accepted(server: OneShotServer, certdir: Path) -> None:
    ctx = client_ctx(certdir)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.selected_alpn_protocol() is None
        assert tls.recv(2) == b"hi"
    server.done.wait(5)
    assert server.results == [("TLSv1.3", None)]


def test_tls12_refused(server: OneShotServer) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        pytest.raises(ssl.SSLError),
    ):
        ctx.wrap_socket(raw, server_hostname="localhost")
    server.done.wait(5)
    assert server.results and server.results[0][0] == "error"


def test_certificate_contents(certdir: Path) -> None:
    cert = x509.load_pem_x509_certificate((certdir / "cert.pem").read_bytes())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert socket.gethostname() in sans.get_values_for_type(x509.DNSName) or (
        socket.gethostname() == "localhost"
    )
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert ips == {"127.0.0.1", "::1"}
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 3649 <= life.days <= 3651
    assert cert.serial_number > 0


def test_reuse_and_modes(tmp_path: Path) -> None:
    cert, key, created = ensure_certificate(tmp_path)
    assert created
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert.stat().st_mode) == 0o644
    first = fingerprint(cert)
    cert2, key2, created2 = ensure_certificate(tmp_path)
    assert (cert2, key2, created2) == (cert, key, False)
    assert fingerprint(cert2) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert.pem", "key.pem"]
    # Only one file left: a new pair.
    key.unlink()
    _, _, created3 = ensure_certificate(tmp_path)
    assert created3
    assert fingerprint(cert) != first


def test_fingerprint_forms(certdir: Path) -> None:
    pem = (certdir / "cert.pem").read_bytes()
    fp = fingerprint(pem)
    assert len(fp) == 64 and fp == fp.lower()
    assert fingerprint(certdir / "cert.pem") == fp
    der = ssl.PEM_cert_to_DER_cert(pem.decode())
    assert fingerprint_der(der) == fp
    shown = format_fingerprint(fp)
    assert len(shown) == 64 + 31
    assert shown == ":".join(fp[i : i + 2] for i in range(0, 64, 2)).upper()
    # A chain: the first certificate counts.
    other = ensure_certificate(certdir / "..")  # another pair elsewhere
    chain = pem + other[0].read_bytes()
    assert fingerprint(chain) == fp
    with pytest.raises(TLSConfigError):
        fingerprint(b"not a certificate")


def test_bad_files(tmp_path: Path, certdir: Path) -> None:
    with pytest.raises(TLSConfigError, match="no such file"):
        server_context(tmp_path / "missing.pem", tmp_path / "missing.key")
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(TLSConfigError, match="cannot use certificate"):
        server_context(tmp_path / "junk.pem", certdir / "key.pem")
    other, other_key, _ = ensure_certificate(tmp_path)
    with pytest.raises(TLSConfigError, match="does not match"):
        server_context(certdir / "cert.pem", other_key)
    assert other.exists()
