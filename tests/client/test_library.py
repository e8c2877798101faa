"""The client library against a real clawtermd, with transports killed under it.

Every stream is checked end to end by length and SHA-256: nothing lost,
nothing duplicated, whatever breaks (SPEC §4, §6, §17).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import clawterm.client as cc
from clawterm.client.trust import fingerprint_der
from tests.helpers import DaemonProcess, EchoAgent

FAST = cc.ClientConfig(backoff=cc.Backoff(initial=0.05, maximum=0.5, jitter=0.5))


@pytest.fixture
def d(short_tmp: Path) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(short_tmp, "--resume-failures", "1000")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@contextlib.asynccontextmanager
async def echo(d: DaemonProcess) -> AsyncIterator[EchoAgent]:
    agent = await EchoAgent(d.socket_dir).start()
    loop = asyncio.get_running_loop()
    for _ in range(500):
        if await loop.run_in_executor(None, d.metric, "clawterm_agents_registered") >= 1:
            break
        await asyncio.sleep(0.02)
    try:
        yield agent
    finally:
        await agent.stop()


def cert_fingerprint(d: DaemonProcess) -> str:
    import ssl

    pem = (d.state_dir / "cert.pem").read_text()
    return fingerprint_der(ssl.PEM_cert_to_DER_cert(pem))


def rst(session: cc.Session) -> None:
    """Reset the session's current TCP connection (SO_LINGER 0 → RST)."""
    link = session._link
    assert link is not None and link.transport is not None
    sock = link.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    link.transport.abort()


def abrupt_close(session: cc.Session) -> None:
    """Close the socket under the TLS layer, as a dying network would."""
    link = session._link
    assert link is not None and link.transport is not None
    sock = link.transport.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


async def connected(session: cc.Session) -> None:
    async for info in session.states():
        if info.state is cc.ClientState.CONNECTED and session._conn.transport_open:
            return
        if info.finished:
            raise AssertionError(info)


async def stream_through(
    session: cc.Session, total: int, breaker: object = None, seed: int = 1
) -> None:
    """Send ``total`` random bytes in random pieces; the echo must come back identical."""
    rng = random.Random(seed)
    data = rng.randbytes(total)
    sent_hash = hashlib.sha256(data).hexdigest()

    async def writer() -> None:
        pos = 0
        while pos < total:
            n = rng.randint(1, 40000)
            await session.send(data[pos : pos + n])
            pos += n

    async def reader() -> tuple[int, str]:
        h = hashlib.sha256()
        got = 0
        while got < total:
            chunk = await session.receive()
            assert chunk, session.info
            h.update(chunk)
            got += len(chunk)
        return got, h.hexdigest()

    w = asyncio.create_task(writer())
    r = asyncio.create_task(reader())
    if breaker is not None:
        await breaker  # type: ignore[misc]
    await w
    got, got_hash = await asyncio.wait_for(r, 30)
    assert (got, got_hash) == (total, sent_hash)


async def test_echo_pins_the_daemon_and_closes(d: DaemonProcess, config_dir: Path) -> None:
    async with echo(d) as agent:
        async with cc.connect(d.host, d.port, token=d.token, on_exit="close") as s:
            assert s.fingerprint == cert_fingerprint(d)
            await s.send(b"ping")
            assert await s.receive() == b"ping"
            s.resize(40, 120)
            for _ in range(100):
                if (s.session_id, "winsize") in agent.events:
                    break
                await asyncio.sleep(0.02)
            assert agent.sessions[s.session_id]["winsize"] == b"\x00\x28\x00\x78"
        assert s.info.reason is cc.CloseReason.CLOSED
        for _ in range(100):
            if (s.session_id, "disconnect") in agent.events:
                break
            await asyncio.sleep(0.02)
        assert (s.session_id, "disconnect") in agent.events
    known = (config_dir / "known_hosts").read_text()
    assert known == f"{d.host}:{d.port} {cert_fingerprint(d)}\n"


async def test_no_loss_no_duplicate_across_killed_transports(
    d: DaemonProcess, config_dir: Path
) -> None:
    async with echo(d):
        states: list[cc.ClientState] = []
        s = await cc.connect(
            d.host, d.port, token=d.token, config=FAST, on_state=lambda i: states.append(i.state)
        )

        async def breaker() -> None:
            kills = [rst, abrupt_close, lambda x: x._link.transport.abort()]  # type: ignore[union-attr]
            for i in range(9):
                await asyncio.sleep(0.15)
                await connected(s)
                kills[i % 3](s)

        await stream_through(s, 3 << 20, breaker())
        assert states.count(cc.ClientState.RECONNECTING) >= 9
        assert s.gaps == 0
        await s.close()


async def test_daemon_sigkill_and_restart(d: DaemonProcess, config_dir: Path) -> None:
    loop = asyncio.get_running_loop()
    async with echo(d):
        states: list[cc.ClientState] = []
        s = await cc.connect(
            d.host, d.port, token=d.token, config=FAST, on_state=lambda i: states.append(i.state)
        )

        async def breaker() -> None:
            await asyncio.sleep(0.05)
            await loop.run_in_executor(None, d.kill)
            await asyncio.sleep(0.2)
            await loop.run_in_executor(None, d.start)

        await stream_through(s, 4 << 20, breaker(), seed=2)
        assert cc.ClientState.RECONNECTING in states
        await s.send(b"after restart")
        assert await s.receive() == b"after restart"
        await s.close()


async def test_handoff_takes_over_with_full_context(d: DaemonProcess, config_dir: Path) -> None:
    async with echo(d):
        a = await cc.connect(d.host, d.port, token=d.token, config=FAST)
        for word in (b"one ", b"two ", b"three "):
            await a.send(word)
            assert await a.receive() == word
        link = a.handoff_link()
        assert link.fingerprint == cert_fingerprint(d)
        b = await cc.resume(link.to_url(), config=FAST)
        context = b""
        while len(context) < len(b"one two three "):
            context += await b.receive()
        assert context == b"one two three "
        with pytest.raises(cc.SessionTakenOver, match="taken over"):
            while True:
                await a.receive()
        assert a.info.reason is cc.CloseReason.TAKEN_OVER
        await asyncio.sleep(0.5)
        assert a._conn.get_timer() is None and a._link is None  # no more retries
        await b.send(b"four")
        assert await b.receive() == b"four"
        await b.close()


async def test_disconnect_from_agent_ends_iteration_with_its_code(
    d: DaemonProcess, config_dir: Path
) -> None:
    async with echo(d) as agent:
        s = await cc.connect(d.host, d.port, token=d.token)
        await s.send(b"x")
        assert await s.receive() == b"x"
        agent.write(s.session_id, b"bye")
        agent.disconnect(s.session_id, 3, "exit status 3")
        got = [chunk async for chunk in s]
        assert got == [b"bye"]
        assert (s.disconnect_code, s.disconnect_reason) == (3, "exit status 3")
        assert s.info.reason is cc.CloseReason.DISCONNECTED and s.exception() is None
        with pytest.raises(cc.SessionEnded, match="code 3"):
            await s.send(b"late")


async def test_refusals_have_clear_errors(d: DaemonProcess, config_dir: Path) -> None:
    async with echo(d):
        with pytest.raises(cc.AuthenticationFailed, match="AUTH_FAILED"):
            await cc.connect(d.host, d.port, token=os.urandom(32))
        bogus = cc.HandoffLink(d.host, d.port, 12345, os.urandom(16), cert_fingerprint(d))
        with pytest.raises(cc.SessionGone, match="NO_SUCH_SESSION"):
            await cc.resume(bogus)
        with pytest.raises(cc.SessionRefused, match="NO_SUCH_AGENT"):
            await cc.connect(d.host, d.port, token=d.token, agent=99)


async def test_saved_session_resumes_after_suspend(d: DaemonProcess, config_dir: Path) -> None:
    store = cc.SessionStore()
    async with echo(d) as agent:
        async with cc.connect(d.host, d.port, token=d.token, store=store, name="work") as s:
            await s.send(b"abc")
            assert await s.receive() == b"abc"
        assert s.info.reason is cc.CloseReason.SUSPENDED
        rec = store.get("work")
        assert (rec.state, rec.session_id, rec.last_rx_seq) == ("suspended", s.session_id, 1)
        assert os.stat(store.path).st_mode & 0o777 == 0o600
        agent.write(s.session_id, b"while away")
        async with cc.resume(store.get(), store=store) as again:
            assert again.name == "work"
            assert await again.receive() == b"while away"
            await again.send(b"back")
            assert await again.receive() == b"back"
            await again.close()
        assert store.get("work").state == "closed"
        assert store.get("work").last_rx_seq == 3


async def test_changed_daemon_certificate_stops_reconnecting(
    d: DaemonProcess, config_dir: Path
) -> None:
    loop = asyncio.get_running_loop()
    async with echo(d):
        s = await cc.connect(d.host, d.port, token=d.token, config=FAST)
        await loop.run_in_executor(None, d.kill)
        (d.state_dir / "cert.pem").unlink()
        (d.state_dir / "key.pem").unlink()
        await loop.run_in_executor(None, d.start)  # a new self-signed certificate
        info = await asyncio.wait_for(s.wait_closed(), 10)
        assert info.reason is cc.CloseReason.UNTRUSTED
        assert "CERTIFICATE HAS CHANGED" in info.message
        assert isinstance(s.exception(), cc.CertificateChanged)


class FreezingProxy:
    """A TCP relay the test can freeze: bytes stop flowing, sockets stay open."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = False
        self.port = 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.connections = 0

    async def start(self) -> FreezingProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for t in self.tasks:
            t.cancel()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.frozen = False  # a new connection gets a healthy path
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    if self.frozen:
                        await asyncio.Event().wait()  # never set: frozen for good
                    dst.write(data)
                    await dst.drain()
            dst.close()

        for a, b in ((r, uw), (ur, w)):
            t = asyncio.create_task(pump(a, b))
            self.tasks.add(t)


async def test_keepalive_answers_pings_and_detects_a_dead_path(short_tmp: Path) -> None:
    with DaemonProcess(short_tmp, "--keepalive", "1") as d:
        async with echo(d):
            proxy = await FreezingProxy(d.port).start()
            states: list[cc.StateInfo] = []
            s = await cc.connect(
                "127.0.0.1",
                proxy.port,
                token=d.token,
                config=FAST,
                known_hosts=short_tmp / "kh",
                on_state=states.append,
            )
            assert s._conn.keepalive == 1.0
            await asyncio.sleep(3.5)  # idle: PINGs answered, our KEEPALIVEs sent
            assert [i.state for i in states] == [cc.ClientState.CONNECTED]
            proxy.frozen = True
            await s.send(b"through the freeze")
            assert await asyncio.wait_for(s.receive(), 8) == b"through the freeze"
            assert any("nothing received for 3 s" in i.message for i in states)
            assert proxy.connections == 2
            await s.close()
            await proxy.stop()


async def test_graceful_daemon_restart_shutting_down_reconnects(
    d: DaemonProcess, config_dir: Path
) -> None:
    import signal

    loop = asyncio.get_running_loop()
    async with echo(d):
        states: list[cc.StateInfo] = []
        s = await cc.connect(d.host, d.port, token=d.token, config=FAST, on_state=states.append)
        await loop.run_in_executor(None, d.kill, signal.SIGTERM)
        await s.send(b"queued while down")
        await loop.run_in_executor(None, d.start)
        assert await asyncio.wait_for(s.receive(), 10) == b"queued while down"
        assert states[1].state is cc.ClientState.RECONNECTING
        assert "SHUTTING_DOWN" in states[1].message
        await s.close()


class CountingStore(cc.SessionStore):
    saves = 0

    def save(self, record: cc.SavedSession) -> None:
        self.saves += 1
        super().save(record)


async def test_slow_reader_pauses_the_socket_and_saves_are_throttled(
    d: DaemonProcess, config_dir: Path
) -> None:
    store = CountingStore()
    async with echo(d) as agent:
        s = await cc.connect(
            d.host, d.port, token=d.token, max_receive_queue=64 * 1024, store=store, name="slow"
        )
        blob = random.Random(3).randbytes(2 << 20)
        for i in range(0, len(blob), 16384):
            agent.write(s.session_id, blob[i : i + 16384])
        paused = False
        got = bytearray()
        while len(got) < len(blob):
            got += await s.receive()
            paused = paused or s._reading_paused
            if len(got) % (256 * 1024) < 16384:
                await asyncio.sleep(0.05)  # a slow application
        assert hashlib.sha256(got).digest() == hashlib.sha256(blob).digest()
        assert paused and s._rx_bytes == 0 and not s._reading_paused
        # 128 frames consumed, a handful of writes.
        assert store.saves < 20
        await asyncio.sleep(1.2)  # the throttled save catches up
        assert store.get("slow").last_rx_seq == s.last_rx_seq == 128
        await s.close()
        assert store.get("slow").state == "closed"


@pytest.mark.slow
async def test_soak_random_kills_and_daemon_restarts(d: DaemonProcess, config_dir: Path) -> None:
    """32 MiB each way through random transport kills and two daemon SIGKILLs."""
    loop = asyncio.get_running_loop()
    rng = random.Random(7)
    async with echo(d):
        s = await cc.connect(d.host, d.port, token=d.token, config=FAST)

        async def breaker() -> None:
            for i in range(40):
                await asyncio.sleep(rng.uniform(0.05, 0.4))
                if i in (13, 29):
                    await loop.run_in_executor(None, d.kill)
                    await loop.run_in_executor(None, d.start)
                    continue
                await connected(s)
                rng.choice([rst, abrupt_close])(s)

        await stream_through(s, 32 << 20, breaker(), seed=9)
        assert s.gaps == 0
        await s.close()


async def test_resume_waits_for_a_restarting_daemon(d: DaemonProcess, config_dir: Path) -> None:
    loop = asyncio.get_running_loop()
    async with echo(d):
        s = await cc.connect(d.host, d.port, token=d.token)
        await s.send(b"before")
        assert await s.receive() == b"before"
        record = s.saved()
        await s.suspend()
        await loop.run_in_executor(None, d.kill)
        states: list[cc.StateInfo] = []
        ctx = cc.resume(record, config=FAST, on_state=states.append)
        entering = asyncio.create_task(ctx.__aenter__())
        await asyncio.sleep(0.5)
        assert not entering.done() and states[0].state is cc.ClientState.RECONNECTING
        await loop.run_in_executor(None, d.start)
        again = await asyncio.wait_for(entering, 10)
        await again.send(b"after")
        assert await again.receive() == b"after"
        await again.close()
