"""Trust against a real TLS 1.3 socket: pinning, a changed certificate refused, CA mode."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import pytest

import clawterm.client as cc
from clawterm.client.trust import (
    KnownHosts,
    fingerprint_der,
    format_fingerprint,
    host_key,
    normalize_fingerprint,
)

from .certs import TinyDaemon, make_cert

TOKEN = bytes(32)


async def test_first_use_pins_then_accepts_same_cert(short_tmp: Path) -> None:
    cert, key, der = make_cert(short_tmp)
    tiny = await TinyDaemon(cert, key).start()
    kh = short_tmp / "cfg" / "known_hosts"
    pins: list[tuple[str, str, Path]] = []
    try:
        async with cc.connect(
            "127.0.0.1",
            tiny.port,
            token=TOKEN,
            known_hosts=kh,
            on_pin=lambda *a: pins.append(a),
        ) as s:
            assert s.state is cc.ClientState.CONNECTED and s.session_id == 4242
            assert s.fingerprint == fingerprint_der(der)
        assert pins == [(f"127.0.0.1:{tiny.port}", fingerprint_der(der), kh)]
        assert kh.read_text() == f"127.0.0.1:{tiny.port} {fingerprint_der(der)}\n"
        assert os.stat(kh).st_mode & 0o777 == 0o600
        assert os.stat(kh.parent).st_mode & 0o777 == 0o700
        assert tiny.alpn[0] == "clawterm/1"
        async with cc.connect("127.0.0.1", tiny.port, token=TOKEN, known_hosts=kh):
            pass
        assert len(pins) == 1
    finally:
        await tiny.stop()


async def test_changed_certificate_is_refused_with_file_and_line(short_tmp: Path) -> None:
    cert, key, der = make_cert(short_tmp, "old")
    kh = short_tmp / "known_hosts"
    kh.write_text("# my daemons\nother:7220 " + "ab" * 32 + "\n")
    tiny = await TinyDaemon(cert, key).start()
    port = tiny.port
    async with cc.connect("127.0.0.1", port, token=TOKEN, known_hosts=kh):
        pass
    await tiny.stop()
    cert2, key2, der2 = make_cert(short_tmp, "new")
    tiny2 = await TinyDaemon(cert2, key2).start(port)
    try:
        with pytest.raises(cc.CertificateChanged) as info:
            async with cc.connect("127.0.0.1", port, token=TOKEN, known_hosts=kh):
                pass
        text = str(info.value)
        assert "CERTIFICATE HAS CHANGED" in text
        assert (
            f"{kh}:3" in text and f"remove line 3 of {kh}" in text and f"sed -i '3d' {kh}" in text
        )
        assert format_fingerprint(fingerprint_der(der2)) in text
        assert format_fingerprint(fingerprint_der(der)) in text
        assert info.value.reason is cc.CloseReason.UNTRUSTED
        assert tiny2.received == 0  # CONNECT (and the token) never left the client
        assert kh.read_text().count("\n") == 3  # nothing rewritten
    finally:
        await tiny2.stop()


async def test_expected_fingerprint_and_no_tofu(short_tmp: Path) -> None:
    cert, key, der = make_cert(short_tmp)
    tiny = await TinyDaemon(cert, key).start()
    kh = short_tmp / "known_hosts"
    try:
        with pytest.raises(cc.CertificateChanged, match="expects"):
            await cc.connect(
                "127.0.0.1", tiny.port, token=TOKEN, known_hosts=kh, fingerprint="00" * 32
            )
        with pytest.raises(cc.UnknownHost, match="trust on first use is off"):
            await cc.connect("127.0.0.1", tiny.port, token=TOKEN, known_hosts=kh, tofu=False)
        assert not kh.exists() and tiny.received == 0
        fp = format_fingerprint(fingerprint_der(der))
        s = await cc.connect(
            "127.0.0.1", tiny.port, token=TOKEN, known_hosts=kh, tofu=False, fingerprint=fp
        )
        await s.suspend()
        assert KnownHosts(kh).lookup(f"127.0.0.1:{tiny.port}") is not None
    finally:
        await tiny.stop()


async def test_ca_mode_verifies_chain_and_name(short_tmp: Path) -> None:
    cert, key, _ = make_cert(short_tmp)
    other, _, _ = make_cert(short_tmp, "other")
    tiny = await TinyDaemon(cert, key).start()
    try:
        s = await cc.connect(
            "127.0.0.1", tiny.port, token=TOKEN, ca=cert, known_hosts=short_tmp / "kh"
        )
        await s.suspend()
        assert not (short_tmp / "kh").exists()  # CA mode pins nothing
        tiny.received = 0
        with pytest.raises(cc.TrustError, match="not trusted"):
            await cc.connect("127.0.0.1", tiny.port, token=TOKEN, ca=other)
        assert tiny.received == 0
    finally:
        await tiny.stop()


async def test_tls_below_1_3_is_refused(short_tmp: Path) -> None:
    cert, key, _ = make_cert(short_tmp)
    tiny = TinyDaemon(cert, key)
    tiny.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tiny.ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    tiny.ctx.load_cert_chain(cert, key)
    await tiny.start()
    try:
        with pytest.raises(cc.ConnectFailed, match="could not connect"):
            await cc.connect("127.0.0.1", tiny.port, token=TOKEN, known_hosts=short_tmp / "kh")
        assert tiny.received == 0
    finally:
        await tiny.stop()


async def test_send_waits_while_unacknowledged_reaches_the_limit(short_tmp: Path) -> None:
    cert, key, _ = make_cert(short_tmp)
    tiny = await TinyDaemon(cert, key).start()  # never ACKs
    try:
        config = cc.ClientConfig(send_limit=4096, max_frame_payload=1000)
        s = await cc.connect(
            "127.0.0.1", tiny.port, token=TOKEN, known_hosts=short_tmp / "kh", config=config
        )
        await s.send(b"x" * 3000)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(s.send(b"y" * 5000), 0.3)
        assert s._conn.unacked_bytes + s._conn.unsent_bytes < 4096 + 1000 + 15
        await s.suspend()
        with pytest.raises(cc.SessionEnded, match="suspended"):
            await s.send(b"z")
    finally:
        await tiny.stop()


async def test_connect_refused_fails_fast(short_tmp: Path) -> None:
    from tests.helpers import free_port

    with pytest.raises(cc.ConnectFailed, match="could not connect"):
        await cc.connect("127.0.0.1", free_port(), token=TOKEN, known_hosts=short_tmp / "kh")


def test_known_hosts_file(short_tmp: Path) -> None:
    path = short_tmp / "kh"
    path.write_text("# comment\n\nbroken-line\nh:1 not-a-fingerprint\nh:1 " + "AB:" * 31 + "AB")
    kh = KnownHosts(path)
    entry = kh.lookup("h:1")
    assert entry is not None and entry.fingerprint == "ab" * 32 and entry.lineno == 5
    added = kh.add("[::1]:7220", "cd" * 32)
    assert added.lineno == 6 and path.read_text().endswith("AB\n[::1]:7220 " + "cd" * 32 + "\n")
    assert kh.add("[::1]:7220", "ef" * 32).fingerprint == "cd" * 32  # never overwritten
    assert host_key("::1", 7220) == "[::1]:7220" and host_key("node", 1) == "node:1"
    assert normalize_fingerprint("SHA256:" + "AB" * 32) == "ab" * 32
    with pytest.raises(ValueError):
        normalize_fingerprint("abc")
