"""Self-signed certificates and a minimal TLS 1.3 'daemon' for the trust tests."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clawterm.constants import FrameType
from clawterm.frame import FrameDecoder, encode_frame
from clawterm.payloads import Accept


def make_cert(directory: Path, name: str = "daemon") -> tuple[Path, Path, bytes]:
    """Write a self-signed cert and key for localhost/127.0.0.1; return paths and the DER."""
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / f"{name}.pem"
    key_path = directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, cert.public_bytes(serialization.Encoding.DER)


class TinyDaemon:
    """A real TLS 1.3 listener that answers CONNECT with ACCEPT and never ACKs.

    ``received`` counts the bytes clients sent, so a test can prove that a
    refused daemon never saw CONNECT (nor its token).
    """

    def __init__(self, cert: Path, key: Path) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.ctx.set_alpn_protocols(["clawterm/1"])
        self.ctx.load_cert_chain(cert, key)
        self.received = 0
        self.alpn: list[str | None] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self, port: int = 0) -> TinyDaemon:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port, ssl=self.ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.transport.abort()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        self.alpn.append(writer.get_extra_info("ssl_object").selected_alpn_protocol())
        decoder = FrameDecoder()
        try:
            while data := await reader.read(65536):
                self.received += len(data)
                for frame in decoder.feed(data):
                    if frame.type == FrameType.CONNECT:
                        accept = Accept(4242, 1, 7, bytes(range(16)), 30)
                        writer.write(encode_frame(FrameType.ACCEPT, 4242, 0, accept.encode()))
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
