"""QUIC transport (SPEC §1) against a real clawtermd over real UDP on loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clawterm.constants import ErrorCode
from clawterm.daemon.tls import fingerprint
from clawterm.quic.client import QuicClientConnection, open_quic_stream
from tests.helpers import ROOT, DaemonProcess, EchoAgent, WireClient, free_port
from tests.quic.relay import LossyRelay


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


def start_daemon(tmp: Path, *args: str) -> DaemonProcess:
    d = DaemonProcess(tmp, "--resume-failures", "1000", *args)
    d.quic_port = free_port(socket.SOCK_DGRAM)
    d.start()
    return d


@pytest.fixture
def d(tmp_path: Path) -> Iterator[DaemonProcess]:
    proc = start_daemon(tmp_path)
    try:
        yield proc
    finally:
        proc.stop()


async def agent_ready(d: DaemonProcess, agent: EchoAgent) -> None:
    for _ in range(250):
        if agent.path.exists() and d.metric("clawterm_agents_registered") >= 1:
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("agent not registered")


async def quic_client(d: DaemonProcess, **kw: Any) -> tuple[WireClient, QuicClientConnection]:
    reader, writer, conn = await open_quic_stream("127.0.0.1", d.quic_port, **kw)
    return WireClient(reader, writer), conn  # type: ignore[arg-type]


async def echo(c: WireClient, payload: bytes) -> None:
    c.send_data(payload)
    assert await c.read_exactly(len(payload)) == payload


def test_connect_accept_and_byte_exact_echo(d: DaemonProcess) -> None:
    async def main() -> None:
        agent = await EchoAgent(d.socket_dir).start()
        await agent_ready(d, agent)
        c, conn = await quic_client(d, fingerprint=fingerprint(d.state_dir / "cert.pem"))
        assert conn.peer_certificate_sha256 == fingerprint(d.state_dir / "cert.pem")
        accept = await c.connect(d.token)
        assert accept.session_id == c.session_id != 0
        for size in (1, 100, 1500, 60000):
            await echo(c, os.urandom(size))
        blob = bytes(range(256)) * 4000  # ~1 MB in many frames, 0x7E included
        for i in range(0, len(blob), 50000):
            c.send_data(blob[i : i + 50000])
        assert await c.read_exactly(len(blob)) == blob
        await c.close()
        await agent.stop()

    run(main())


def test_wrong_fingerprint_is_refused(d: DaemonProcess) -> None:
    async def main() -> None:
        with pytest.raises(ConnectionError, match="fingerprint"):
            await open_quic_stream("127.0.0.1", d.quic_port, fingerprint="00" * 32)

    run(main())


def test_migration_to_a_new_udp_socket_keeps_the_stream(d: DaemonProcess) -> None:
    async def main() -> None:
        agent = await EchoAgent(d.socket_dir).start()
        await agent_ready(d, agent)
        c, conn = await quic_client(d)
        await c.connect(d.token)
        sid = c.session_id
        await echo(c, b"before migration")
        old = conn.local_address
        # Migrate with data in flight both ways.
        c.send_data(b"in flight " * 1000)
        agent.write(sid, b"agent says hi " * 1000)
        new = await conn.migrate()
        assert new[1] != old[1]
        assert conn.local_address == new
        got = await c.read_exactly(len(b"in flight " * 1000) + len(b"agent says hi " * 1000))
        assert got.count(b"in flight ") == 1000 and got.count(b"agent says hi ") == 1000
        await echo(c, os.urandom(30000))
        # Migrate again, with a key update on the new path.
        await conn.migrate()
        conn.request_key_update()
        await echo(c, b"after second migration")
        assert c.session_id == sid
        assert all(ev in ("connect",) for s, ev in agent.events if s == sid), agent.events
        assert d.metric("clawterm_resumes_total") == 0
        # The daemon's log names the address the connection moved to: a
        # takeover logs the old client's peer.
        now = conn.local_address
        c2 = await WireClient.open(d.port)
        await c2.resume(sid, c.resume_token)
        await c.expect_error(ErrorCode.TAKEN_OVER)
        takeover = [line for line in d.log().splitlines() if "event=takeover" in line]
        assert takeover and f"peer=127.0.0.1:{now[1]} " in takeover[-1] + " ", takeover
        assert f":{old[1]} " not in takeover[-1] + " "
        await c2.close()
        await agent.stop()

    run(main())


async def reopen(old: WireClient, new: WireClient) -> None:
    """``new`` RESUMEs ``old``'s session, carrying its sequencing state."""
    new.tx, new.rx = old.tx, old.rx
    frame = await new.resume(old.session_id, old.resume_token)
    new.resend_after_resumed(frame)


def test_resume_across_transports_tcp_quic_tcp(d: DaemonProcess) -> None:
    async def main() -> None:
        agent = await EchoAgent(d.socket_dir).start()
        await agent_ready(d, agent)
        c1 = await WireClient.open(d.port)
        await c1.connect(d.token)
        sid = c1.session_id
        await echo(c1, b"on tcp")
        # Unacknowledged client data and agent output while the client is away.
        c1.send_data(b"sent just before the tcp loss")
        await asyncio.sleep(0.05)
        c1.abort()
        expected = b"sent just before the tcp loss"
        for _ in range(100):
            if (sid, "suspend") in agent.events or d.metric("clawterm_sessions", state="suspended"):
                break
            await asyncio.sleep(0.02)
        away = os.urandom(100_000)
        agent.write(sid, away)
        expected += away

        c2, _conn = await quic_client(d)
        await reopen(c1, c2)
        assert c2.session_id == sid
        got = await c2.read_exactly(len(expected))
        # Echo of the client's last DATA and the agent's output, each exactly once.
        assert away in got and b"sent just before the tcp loss" in got
        await echo(c2, b"on quic")
        c2.send_data(b"sent just before the quic loss")
        await asyncio.sleep(0.05)
        c2.writer.transport.abort()  # type: ignore[attr-defined]
        away2 = os.urandom(50_000)
        agent.write(sid, away2)

        c3 = await WireClient.open(d.port)
        await reopen(c2, c3)
        expected3 = b"sent just before the quic loss" + away2
        got3 = await c3.read_exactly(len(expected3))
        assert away2 in got3 and b"sent just before the quic loss" in got3
        await echo(c3, b"back on tcp")
        assert d.metric("clawterm_resumes_total", result="ok") == 2
        await c3.close()
        await agent.stop()

    run(main())


def test_garbage_datagrams_leave_the_daemon_serving(d: DaemonProcess) -> None:
    async def main() -> None:
        agent = await EchoAgent(d.socket_dir).start()
        await agent_ready(d, agent)
        c, _ = await quic_client(d)
        await c.connect(d.token)
        rnd = os.urandom
        junk = [b"", b"\x00", b"\xff" * 5, rnd(20), rnd(1200), rnd(1500), rnd(65000)]
        # Long headers that look like Initials (version 1, and unknown versions).
        for version in (b"\x00\x00\x00\x01", b"\x00\x00\x00\x00", b"\x1a\x2a\x3a\x4a"):
            for first in (0xC0, 0xC3, 0xF0, 0x80):
                junk += [bytes([first]) + version + b"\x08" + rnd(8) + b"\x08" + rnd(8) + rnd(1300)]
                junk += [bytes([first]) + version + b"\xff" + rnd(30)]
        junk += [bytes([0x40]) + rnd(8) + rnd(100) for _ in range(20)]  # short headers
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            for _ in range(3):
                for j in junk:
                    if j:
                        sock.sendto(j, ("127.0.0.1", d.quic_port))
        finally:
            sock.close()
        await echo(c, b"still here")
        c2, _ = await quic_client(d)
        await c2.connect(d.token)
        await echo(c2, b"new connection works")
        assert d.proc is not None and d.proc.poll() is None
        await c.close()
        await c2.close()
        await agent.stop()

    run(main())


def test_stalled_quic_client_keeps_daemon_memory_bounded(tmp_path: Path) -> None:
    # drop-oldest: the replay ring never blocks the agent, so only the QUIC
    # stream's write-buffer limit (pause_writing) can stop the daemon reading.
    d = start_daemon(tmp_path, "--overflow", "drop-oldest")

    async def main() -> None:
        agent = await EchoAgent(d.socket_dir).start()
        await agent_ready(d, agent)
        c, _ = await quic_client(d)
        await c.connect(d.token)
        sid = c.session_id
        await echo(c, b"warm up")
        base = d.rss()
        # The client now reads nothing; the agent writes as fast as it may.
        writer = agent.sessions[sid]["writer"]
        chunk = os.urandom(60000)
        pushed = 0
        stalled = False
        while pushed < 256 << 20:
            for _ in range(16):
                agent.write(sid, chunk)
                pushed += len(chunk)
            try:
                await asyncio.wait_for(writer.drain(), 0.5)
            except TimeoutError:
                stalled = True
                break
        assert stalled, "the daemon never stopped reading the agent"
        growth = d.rss() - base
        assert growth < 48 << 20, f"daemon grew {growth >> 20} MiB with {pushed >> 20} MiB pushed"
        # Reading again drains it all, byte-exact.
        got = await c.read_exactly(len(chunk) * 4, timeout=20)
        assert len(got) == len(chunk) * 4
        await asyncio.wait_for(writer.drain(), 20)
        await agent.stop()

    try:
        run(main())
    finally:
        d.stop()


def test_connection_cap_refuses_beyond_it(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "--max-quic-connections", "2")

    async def main() -> None:
        agent = await EchoAgent(d.socket_dir).start()
        await agent_ready(d, agent)
        a, _ = await quic_client(d)
        b, _ = await quic_client(d)
        with pytest.raises(ConnectionError):
            await open_quic_stream("127.0.0.1", d.quic_port, connect_timeout=5)
        await a.connect(d.token)
        await echo(a, b"first still works")
        a.writer.transport.abort()  # type: ignore[attr-defined]
        for _ in range(200):  # the slot frees once the connection has drained
            try:
                c, _ = await quic_client(d, connect_timeout=1)
                break
            except (ConnectionError, TimeoutError):
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("slot never freed")
        await c.connect(d.token)
        await echo(c, b"third after a slot freed")
        await b.close()
        await c.close()
        await agent.stop()

    try:
        run(main())
    finally:
        d.stop()


@pytest.mark.parametrize(("host", "retry"), [("0.0.0.0", True), ("127.0.0.1", False)])
def test_retry_auto_is_on_unless_bound_to_loopback(tmp_path: Path, host: str, retry: bool) -> None:
    """The default ``--quic-retry auto``: a daemon reachable off the machine
    validates client addresses with a Retry; one bound to loopback does not."""
    d = DaemonProcess(tmp_path, "--quic-retry", "auto")
    d.host = host
    d.quic_port = free_port(socket.SOCK_DGRAM)
    d.start()

    async def main() -> None:
        agent = await EchoAgent(d.socket_dir).start()
        await agent_ready(d, agent)
        c, conn = await quic_client(d)
        got_retry = conn.protocol._quic._retry_source_connection_id is not None
        assert got_retry is retry
        await c.connect(d.token)
        await echo(c, b"retry " + str(retry).encode())
        await c.close()
        await agent.stop()

    try:
        run(main())
        assert f"retry {'on' if retry else 'off'}" in d.log()
    finally:
        d.stop()


def test_retry_on_validates_the_address_first(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "--quic-retry", "on")

    async def main() -> None:
        agent = await EchoAgent(d.socket_dir).start()
        await agent_ready(d, agent)
        c, conn = await quic_client(d)
        assert conn.protocol._quic._retry_source_connection_id is not None  # got a Retry
        await c.connect(d.token)
        await echo(c, b"after retry")
        await conn.migrate()
        await echo(c, b"after retry and migration")
        await c.close()
        await agent.stop()

    try:
        run(main())
    finally:
        d.stop()


def test_second_stream_closes_the_connection(d: DaemonProcess) -> None:
    async def main() -> None:
        agent = await EchoAgent(d.socket_dir).start()
        await agent_ready(d, agent)
        c, conn = await quic_client(d)
        await c.connect(d.token)
        quic = conn.protocol._quic
        quic.send_stream_data(quic.get_next_available_stream_id(), b"\x7e" * 20)
        conn.protocol.transmit()
        with pytest.raises((ConnectionError, EOFError)):
            while True:
                await c.data(timeout=5)
        # The session was suspended, not lost: it resumes on a new connection.
        c2, _ = await quic_client(d)
        await reopen(c, c2)
        await echo(c2, b"resumed")
        await c2.close()
        await agent.stop()

    run(main())


def test_daemon_stop_sends_shutting_down_over_quic(d: DaemonProcess) -> None:
    async def main() -> None:
        agent = await EchoAgent(d.socket_dir).start()
        await agent_ready(d, agent)
        c, _ = await quic_client(d)
        await c.connect(d.token)
        await echo(c, b"hello")
        loop = asyncio.get_running_loop()
        stopper = loop.run_in_executor(None, d.stop)
        await c.expect_error(ErrorCode.SHUTTING_DOWN)
        await stopper
        await agent.stop()

    run(main())


def test_echo_and_migration_through_a_lossy_reordering_relay(d: DaemonProcess) -> None:
    async def main() -> None:
        agent = await EchoAgent(d.socket_dir).start()
        await agent_ready(d, agent)
        relay = await LossyRelay.start(("127.0.0.1", d.quic_port), loss=0.05, reorder=0.15)
        try:
            reader, writer, conn = await open_quic_stream("127.0.0.1", relay.port)
            c = WireClient(reader, writer)  # type: ignore[arg-type]
            await c.connect(d.token)
            blob = os.urandom(400_000)
            for i in range(0, len(blob), 40_000):
                c.send_data(blob[i : i + 40_000])
            assert await c.read_exactly(len(blob), timeout=30) == blob
            # The relay opens a new upstream socket per client address: the daemon
            # sees the migration as a new source port, behind loss and reordering.
            await conn.migrate(within=10)
            assert len(relay.upstreams) == 2
            c.send_data(blob[:50_000])
            c.send_data(blob[50_000:100_000])
            assert await c.read_exactly(100_000, timeout=30) == blob[:100_000]
            assert relay.dropped > 0 and relay.reordered > 0
            await c.close()
        finally:
            relay.close()
            await agent.stop()

    run(main())


def test_client_address_change_keeps_the_stream(d: DaemonProcess) -> None:
    # 127.0.0.2 is another local address on Linux's loopback: a real change of
    # the client's source IP, not just its port.
    async def main() -> None:
        agent = await EchoAgent(d.socket_dir).start()
        await agent_ready(d, agent)
        c, conn = await quic_client(d, local_host="127.0.0.1")
        await c.connect(d.token)
        await echo(c, b"from 127.0.0.1")
        new = await conn.migrate(local_host="127.0.0.2")
        assert new[0] == "127.0.0.2"
        await echo(c, os.urandom(50_000))
        agent.write(c.session_id, b"pushed after the address change")
        assert await c.data() == b"pushed after the address change"
        assert d.metric("clawterm_resumes_total") == 0
        await c.close()
        await agent.stop()

    run(main())


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace joined to this one by a veth pair (10.231.x.0/24)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    tag = f"{os.getpid() % 100000}"
    ns, host_if, ns_if = f"ctq{tag}", f"ctqh{tag}", f"ctqc{tag}"
    try:
        _sh("ip", "netns", "add", ns)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot create a network namespace: {exc}")
    try:
        _sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _sh("ip", "link", "set", ns_if, "netns", ns)
        _sh("ip", "addr", "add", "10.231.0.1/24", "dev", host_if)
        _sh("ip", "link", "set", host_if, "up")
        _sh(
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            f"net.ipv4.conf.{ns_if}.promote_secondaries=1",
        )
        _sh("ip", "-n", ns, "addr", "add", "10.231.0.2/24", "dev", ns_if)
        _sh("ip", "-n", ns, "link", "set", ns_if, "up")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@pytest.mark.netns
def test_client_ip_change_in_a_network_namespace(tmp_path: Path, netns: str) -> None:
    """The client's address changes under an unchanged socket (as on a network
    switch): the daemon validates the new path and the stream goes on."""
    d = DaemonProcess(tmp_path, "--quic-retry", "off", "--log-level", "debug")
    d.host = "0.0.0.0"
    d.quic_port = free_port(socket.SOCK_DGRAM)
    d.start()
    ns_if = f"ctqc{netns[3:]}"
    proc: subprocess.Popen[str] | None = None

    async def main() -> None:
        nonlocal proc
        agent = await EchoAgent(d.socket_dir).start()
        await agent_ready(d, agent)
        cmd = ["ip", "netns", "exec", netns, sys.executable, "-m", "tests.quic.netns_client"]
        cmd += ["10.231.0.1", str(d.quic_port), d.token.hex()]
        proc = subprocess.Popen(  # noqa: ASYNC220 - read through the executor below
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        assert proc.stdin is not None and proc.stdout is not None
        loop = asyncio.get_running_loop()
        line = await loop.run_in_executor(None, proc.stdout.readline)
        assert line.startswith("READY"), line
        # New address, then the old one removed: the same socket now sends from .3.
        _sh("ip", "-n", netns, "addr", "add", "10.231.0.3/24", "dev", ns_if)
        _sh("ip", "-n", netns, "addr", "del", "10.231.0.2/24", "dev", ns_if)
        proc.stdin.write("GO\n")
        proc.stdin.flush()
        line = await loop.run_in_executor(None, proc.stdout.readline)
        assert line.startswith("OK"), line
        proc.stdin.close()
        assert await loop.run_in_executor(None, proc.wait, 10) == 0
        assert d.metric("clawterm_resumes_total") == 0
        # The daemon really saw, validated and used the new address.
        assert "Network path ('10.231.0.3'" in d.log() and "validated by challenge" in d.log()
        await agent.stop()

    try:
        run(main())
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        d.stop()


@pytest.mark.parametrize("how", ["stop_sending", "reset"])
def test_stream_stopped_or_reset_by_client_suspends_the_session(d: DaemonProcess, how: str) -> None:
    async def main() -> None:
        agent = await EchoAgent(d.socket_dir).start()
        await agent_ready(d, agent)
        c, conn = await quic_client(d)
        await c.connect(d.token)
        await echo(c, b"hello")
        quic = conn.protocol._quic
        if how == "stop_sending":
            quic.stop_stream(0, 0x10)
        else:
            quic.reset_stream(0, 0x10)
        conn.protocol.transmit()
        # The daemon's output keeps coming for a moment; it must not trip over it.
        blob = os.urandom(200_000)
        agent.write(c.session_id, blob)
        await asyncio.wait_for(conn.wait_closed(), 10)
        c2, _ = await quic_client(d)
        await reopen(c, c2)
        assert await c2.read_exactly(len(blob)) == blob  # replayed, nothing lost
        await echo(c2, b"resumed after " + how.encode())
        await c2.close()
        assert d.proc is not None and d.proc.poll() is None
        assert "Traceback" not in d.log()
        await agent.stop()

    run(main())


def test_connection_without_a_stream_is_closed_after_the_handshake_timeout(
    tmp_path: Path,
) -> None:
    d = start_daemon(tmp_path, "--handshake-timeout", "1")

    async def main() -> None:
        _reader, _writer, conn = await open_quic_stream("127.0.0.1", d.quic_port)
        await asyncio.wait_for(conn.wait_closed(), 10)
        event = conn.protocol._quic._close_event
        assert event is not None and event.error_code == 0x2, event

    try:
        run(main())
    finally:
        d.stop()
