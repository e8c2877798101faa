"""The client over QUIC, ``auto`` (happy eyeballs), migration and its fallback to RESUME.

A real clawtermd with QUIC on, real UDP sockets on loopback. Every stream is
checked end to end by length and SHA-256.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import clawterm.client as cc
from clawterm.client.link import HandoffLink
from clawterm.client.trust import KnownHosts, host_key
from tests.client.test_library import FAST, cert_fingerprint, connected, echo, stream_through
from tests.helpers import DaemonProcess, free_port


@pytest.fixture
def d(short_tmp: Path) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(short_tmp, "--resume-failures", "1000")
    proc.quic_port = free_port(socket.SOCK_DGRAM)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def resumes_ok(d: DaemonProcess) -> float:
    return d.metric("clawterm_resumes_total", result="ok")


async def metric(d: DaemonProcess, name: str, **labels: str) -> float:
    return await asyncio.get_running_loop().run_in_executor(None, lambda: d.metric(name, **labels))


class GateRelay(asyncio.DatagramProtocol):
    """A UDP relay to the daemon that serves only the first client address it sees.

    Models a new network that blocks UDP: after the client migrates to a new
    socket, nothing from it gets through (so neither does a new QUIC
    connection from any other port).
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.client: Any = None
        self.front: asyncio.DatagramTransport | None = None
        self.up: asyncio.DatagramTransport | None = None
        self.blocked = 0

    @classmethod
    async def start(cls, target: tuple[str, int]) -> GateRelay:
        loop = asyncio.get_running_loop()
        relay = cls(target)
        relay.front, _ = await loop.create_datagram_endpoint(
            lambda: relay, local_addr=("127.0.0.1", 0)
        )

        class Up(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                if relay.front is not None and relay.client is not None:
                    relay.front.sendto(data, relay.client)

        relay.up, _ = await loop.create_datagram_endpoint(Up, remote_addr=target)
        return relay

    @property
    def port(self) -> int:
        assert self.front is not None
        return int(self.front.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.client is None:
            self.client = addr
        if addr != self.client:
            self.blocked += 1
            return
        assert self.up is not None
        self.up.sendto(data)

    def close(self) -> None:
        for t in (self.front, self.up):
            if t is not None:
                t.close()


async def test_quic_end_to_end_byte_exact(d: DaemonProcess, config_dir: Path) -> None:
    async with echo(d):
        async with cc.connect(
            d.host, d.port, token=d.token, transport="quic", quic_port=d.quic_port, on_exit="close"
        ) as s:
            assert s.transport == "quic" and s.info.transport == "quic"
            assert s.fingerprint == cert_fingerprint(d)
            await stream_through(s, 600_000)
        assert s.info.reason is cc.CloseReason.CLOSED
    # One pin, shared with TLS/TCP: host:TLS port.
    assert KnownHosts(config_dir / "known_hosts").lookup(host_key(d.host, d.port)) is not None


async def test_auto_prefers_quic_and_says_so(d: DaemonProcess, config_dir: Path) -> None:
    states: list[cc.StateInfo] = []
    async with echo(d):
        t0 = time.monotonic()
        async with cc.connect(
            d.host,
            d.port,
            token=d.token,
            transport="auto",
            quic_port=d.quic_port,
            on_state=states.append,
            on_exit="close",
        ) as s:
            took = time.monotonic() - t0
            assert s.transport == "quic", took
            await s.send(b"hello")
            assert await s.receive() == b"hello"
            # The saved record and the link carry the policy and the port.
            link = HandoffLink.parse(s.handoff_link().to_url())
            assert (link.transport, link.quic_port) == ("auto", d.quic_port)
    connected = [i for i in states if i.state is cc.ClientState.CONNECTED]
    assert connected and connected[0].transport == "quic"


@pytest.mark.parametrize("how", ["no-listener", "silent"])
async def test_auto_falls_back_to_tcp_fast(d: DaemonProcess, config_dir: Path, how: str) -> None:
    """UDP blocked (silently dropped) or nothing on the port: TLS/TCP after the head start."""
    if how == "silent":
        # A bound UDP socket that never answers: the datagrams vanish, no ICMP.
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        port = sink.getsockname()[1]
    else:
        sink = None
        port = free_port(socket.SOCK_DGRAM)
    try:
        async with echo(d):
            t0 = time.monotonic()
            async with cc.connect(
                d.host, d.port, token=d.token, transport="auto", quic_port=port, on_exit="close"
            ) as s:
                took = time.monotonic() - t0
                assert s.transport == "tcp" and s.info.transport == "tcp"
                assert took < 1.5, took  # head start 0.25 s + TLS/TCP + CONNECT/ACCEPT
                await stream_through(s, 100_000)
    finally:
        if sink is not None:
            sink.close()


async def test_explicit_migrate_keeps_the_session_without_resume(
    d: DaemonProcess, config_dir: Path
) -> None:
    async with echo(d):
        async with cc.connect(
            d.host, d.port, token=d.token, transport="quic", quic_port=d.quic_port, on_exit="close"
        ) as s:
            assert s._link is not None and s._link.quic is not None
            before = s._link.quic.local_address
            took: list[float] = []

            async def migrate_mid_stream() -> None:
                await asyncio.sleep(0.1)
                for host in ("127.0.0.2", None):
                    t0 = time.monotonic()
                    assert await s.migrate(host)
                    took.append(time.monotonic() - t0)

            await stream_through(s, 400_000, breaker=migrate_mid_stream())
            assert s._link is not None and s._link.quic is not None
            assert s._link.quic.local_address != before
            assert s.migrations == 2 and s.transport == "quic"
            assert max(took) < 2.0, took
        assert await metric(d, "clawterm_resumes_total", result="ok") == 0


async def test_address_change_is_detected_and_migrated(
    d: DaemonProcess, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clawterm.client import aio

    source = ["127.0.0.1"]
    monkeypatch.setattr(aio, "_route_source", lambda addr: source[0])
    async with echo(d):
        async with cc.connect(
            d.host,
            d.port,
            token=d.token,
            transport="quic",
            quic_port=d.quic_port,
            watch_address=0.05,
            on_exit="close",
        ) as s:
            source[0] = "192.0.2.7"  # the route's source address changed
            for _ in range(200):
                if s.migrations:
                    break
                await asyncio.sleep(0.02)
            assert s.migrations == 1
            await stream_through(s, 50_000)
        assert await metric(d, "clawterm_resumes_total", result="ok") == 0


async def test_failed_migration_falls_back_to_resume(d: DaemonProcess, config_dir: Path) -> None:
    relay = await GateRelay.start(("127.0.0.1", d.quic_port))
    try:
        async with echo(d):
            async with cc.connect(
                d.host,
                d.port,
                token=d.token,
                transport="auto",
                quic_port=relay.port,
                config=FAST,
                on_exit="close",
            ) as s:
                assert s.transport == "quic"
                t0 = time.monotonic()
                fell_back: list[float] = []

                async def migrate_into_a_wall() -> None:
                    await asyncio.sleep(0.05)
                    assert not await s.migrate(within=0.5)
                    await connected(s)
                    fell_back.append(time.monotonic() - t0)

                await stream_through(s, 600_000, breaker=migrate_into_a_wall())
                assert s.failed_migrations == 1 and relay.blocked > 0
                # The new network blocks UDP: auto reconnected over TLS/TCP and RESUMEd.
                assert s.transport == "tcp"
                assert fell_back[0] < 2.0, fell_back  # 0.5 s to fail + backoff + race
            assert await metric(d, "clawterm_resumes_total", result="ok") >= 1
    finally:
        relay.close()


async def test_changed_certificate_is_refused_over_quic(d: DaemonProcess, config_dir: Path) -> None:
    kh = KnownHosts(config_dir / "known_hosts")
    kh.add(host_key(d.host, d.port), "ab" * 32)  # pinned: some other certificate
    for mode in ("quic", "auto"):
        with pytest.raises(cc.CertificateChanged):
            async with cc.connect(
                d.host, d.port, token=d.token, transport=mode, quic_port=d.quic_port
            ):
                pass
    with pytest.raises(cc.TrustError):  # a link's fingerprint, too
        async with cc.connect(
            d.host,
            d.port,
            token=d.token,
            transport="quic",
            quic_port=d.quic_port,
            fingerprint="cd" * 32,
        ):
            pass


async def test_ca_mode_over_quic_refuses_an_unknown_chain(
    d: DaemonProcess, config_dir: Path, short_tmp: Path
) -> None:
    # The daemon's self-signed certificate is its own CA: trusted with it...
    cert = d.state_dir / "cert.pem"
    async with echo(d):
        async with cc.connect(
            d.host,
            d.port,
            token=d.token,
            transport="quic",
            quic_port=d.quic_port,
            ca=cert,
            on_exit="close",
        ) as s:
            assert s.transport == "quic"
        # ...and refused against another CA, over QUIC as over TLS/TCP.
        from tests.client.certs import make_cert

        other, _, _ = make_cert(short_tmp)
        with pytest.raises(cc.TrustError):
            async with cc.connect(
                d.host, d.port, token=d.token, transport="quic", quic_port=d.quic_port, ca=other
            ):
                pass


def test_pipe_over_quic(d: DaemonProcess, config_dir: Path) -> None:
    agent = subprocess.Popen(
        [sys.executable, "-m", "clawterm.agent.cli", "echo", "-s", str(d.socket_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while d.metric("clawterm_agents_registered") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        data = os.urandom(20_000).hex().encode()
        env = {
            **os.environ,
            "CLAWTERM_TOKEN": d.token.hex(),
            "CLAWTERM_QUIC_PORT": str(d.quic_port),
        }
        # The TLS port is closed: this can only work over QUIC.
        closed_tcp = free_port()
        cmd = [sys.executable, "-m", "clawterm.client.cli", "-v", "pipe", d.host]
        cmd += ["-p", str(closed_tcp), "--transport", "quic", "--close-on-eof"]
        out = subprocess.run(cmd, check=False, input=data, capture_output=True, env=env, timeout=20)
        assert out.returncode == 0, out.stderr.decode()
        assert out.stdout == data
        assert b"over quic" in out.stderr
    finally:
        agent.terminate()
        agent.wait(5)


def test_links_and_records_carry_the_transport_and_old_ones_still_work() -> None:
    token = bytes(range(16))
    old = HandoffLink.parse(f"clawterm://h:7220/resume?sid=5&tok={token.hex()}&tenant=0&agent=1")
    assert (old.transport, old.quic_port) == (None, None)
    new = HandoffLink("h", 7220, 5, token, transport="quic", quic_port=9000)
    url = new.to_url()
    assert "tr=quic" in url and "qp=9000" in url
    assert HandoffLink.parse(url) == new
    default_port = HandoffLink("h", 7220, 5, token, transport="auto", quic_port=7221).to_url()
    assert "qp=" not in default_port
    with pytest.raises(cc.LinkError):
        HandoffLink.parse(url.replace("tr=quic", "tr=carrier-pigeon"))
    record = cc.SavedSession.from_json(
        {"name": "x", "host": "h", "port": 7220, "tenant": 0, "agent": 1, "session_id": 5}
        | {"resume_token": token.hex()}
    )
    assert (record.transport, record.quic_port) == (None, None)  # written before transports
    assert cc.SavedSession.from_json(
        {**record.to_json(), "transport": "auto", "quic_port": 9000}
    ).link() == HandoffLink("h", 7220, 5, token, None, 0, 1, "auto", 9000)


def test_cli_transport_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from clawterm.client import cli

    args = cli.build_parser().parse_args(["pipe", "h"])
    monkeypatch.delenv("CLAWTERM_TRANSPORT", raising=False)
    monkeypatch.delenv("CLAWTERM_QUIC_PORT", raising=False)
    assert cli._transport(args) == "auto" and cli._quic_port(args) is None
    assert cli._transport(args, "tcp") == "tcp" and cli._quic_port(args, 9000) == 9000
    monkeypatch.setenv("CLAWTERM_TRANSPORT", "quic")
    monkeypatch.setenv("CLAWTERM_QUIC_PORT", "7331")
    assert cli._transport(args, "tcp") == "quic" and cli._quic_port(args, 9000) == 7331
    args = cli.build_parser().parse_args(["resume", "--transport", "tcp", "--quic-port", "1"])
    assert cli._transport(args, "quic") == "tcp" and cli._quic_port(args) == 1
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["attach", "--transport", "udp"])
