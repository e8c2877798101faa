"""Sessions survive a daemon restart (SPEC §17): real processes, killed for real."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import sqlite3
from pathlib import Path

import pytest

from clawterm.constants import ErrorCode, FrameType
from clawterm.payloads import Disconnect
from tests.daemon.test_handshake import run
from tests.daemon.test_resume import reopen, session
from tests.helpers import DaemonProcess, EchoAgent, WireClient, daemon, until


async def _pump(clients: list[WireClient], received: dict[int, bytearray], seconds: float) -> None:
    async def drain(c: WireClient) -> None:
        try:
            while True:
                frame = await c.read_frame(timeout=seconds)
                if frame.type == FrameType.DATA and c.rx.receive(frame.seq, 0, 0):
                    received[c.session_id] += frame.payload
                    c.send(FrameType.ACK, frame.seq.to_bytes(4, "big"))
                elif frame.type == FrameType.ACK:
                    c.tx.ack(int.from_bytes(frame.payload, "big"))
        except (TimeoutError, EOFError, ConnectionError, OSError):
            pass

    await asyncio.gather(*(drain(c) for c in clients))


def _restart_many(tmp_path: Path, sig: int, sessions: int, suspended: int) -> None:
    rng = random.Random(sig)
    with daemon(tmp_path, "--resume-failures", "100000", "--max-handshakes-per-ip", "10000") as d:

        async def main() -> None:
            agent = await EchoAgent(d.socket_dir).start()
            upstream: dict[int, bytearray] = {}
            agent.transform = None
            clients = [await session(d, agent) for _ in range(sessions)]
            for c in clients:
                upstream[c.session_id] = bytearray()

            def make_recorder(sid: int):  # type: ignore[no-untyped-def]
                return lambda payload: (upstream[sid].extend(payload), b"")[1]

            # Per-session recording of what reaches the agent.
            original = agent._frame

            def frame_hook(frame, state, writer):  # type: ignore[no-untyped-def]
                agent.transform = (
                    make_recorder(frame.session_id) if frame.session_id in upstream else None
                )
                return original(frame, state, writer)

            agent._frame = frame_hook  # type: ignore[method-assign]
            size = 64 * 1024
            up = {c.session_id: os.urandom(size) for c in clients}
            down = {c.session_id: os.urandom(size) for c in clients}
            received = {c.session_id: bytearray() for c in clients}
            half = size // 2
            # First half both ways, then some sessions suspend, then the daemon dies.
            for c in clients:
                for i in range(0, half, 4096):
                    c.send_data(up[c.session_id][i : i + 4096])
                agent.write(c.session_id, down[c.session_id][:half])
            await _pump(clients, received, 0.3)
            for c in clients[:suspended]:
                c.send(FrameType.SUSPEND)
            await asyncio.sleep(0.2)
            # More output and input in flight while the daemon goes away.
            for c in clients:
                agent.write(c.session_id, down[c.session_id][half:])
                for i in range(half, size, 4096):
                    c.send_data(up[c.session_id][i : i + 4096])
            await asyncio.sleep(rng.random() * 0.05)
            await asyncio.get_running_loop().run_in_executor(None, d.kill, sig)
            for c in clients:
                c.abort()
            await asyncio.get_running_loop().run_in_executor(None, d.start)
            # Every client reconnects and resumes, as after any network drop.
            resumed = []
            for c in clients:
                c2, _ = await reopen(d, c)
                resumed.append(c2)
            await _pump(resumed, received, 1.5)
            for c in resumed:
                sid = c.session_id
                assert (
                    hashlib.sha256(received[sid]).digest() == hashlib.sha256(down[sid]).digest()
                ), sid
                assert hashlib.sha256(upstream[sid]).digest() == hashlib.sha256(up[sid]).digest(), (
                    sid
                )
            await agent.stop()

        run(main())


def test_sigkill_mid_stream_nothing_lost(tmp_path: Path) -> None:
    _restart_many(
        tmp_path,
        signal.SIGKILL,
        sessions=int(os.environ.get("CLAWTERM_RESTART_SESSIONS", "40")),
        suspended=10,
    )


def test_sigterm_mid_stream_nothing_lost(tmp_path: Path) -> None:
    _restart_many(tmp_path, signal.SIGTERM, sessions=20, suspended=5)


@pytest.mark.slow
def test_sigkill_200_sessions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAWTERM_RESTART_SESSIONS", "200")
    test_sigkill_mid_stream_nothing_lost(tmp_path)


def test_sigterm_tells_clients_shutting_down(tmp_path: Path) -> None:
    with daemon(tmp_path) as d:

        async def main() -> None:
            agent = await EchoAgent(d.socket_dir).start()
            c = await session(d, agent)
            d.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            await c.expect_error(ErrorCode.SHUTTING_DOWN)
            await agent.stop()

        run(main())
        assert d.proc is not None and d.proc.wait(6) == 0


def test_agent_died_while_daemon_down(tmp_path: Path) -> None:
    with daemon(tmp_path) as d:

        async def main() -> None:
            a1 = await EchoAgent(d.socket_dir, agent=1).start()
            a2 = await EchoAgent(d.socket_dir, agent=2).start()
            c1 = await session(d, a1)
            await until(lambda: d.metric("clawterm_agents_registered") >= 2)
            c2 = await WireClient.open(d.port)
            await c2.connect(d.token, agent=2)
            c1.send_data(b"one")
            c2.send_data(b"two")
            assert await c1.data() == b"one" and await c2.data() == b"two"
            await asyncio.get_running_loop().run_in_executor(None, d.kill, signal.SIGKILL)
            await a2.stop()  # agent 2 dies while the daemon is down
            await asyncio.get_running_loop().run_in_executor(None, d.start)
            r1, _ = await reopen(d, c1)
            r1.send_data(b"still")
            assert await r1.data() == b"still"
            r2, _ = await reopen(d, c2)
            frame = await r2.expect(FrameType.DISCONNECT)
            assert Disconnect.decode(frame.payload).code == ErrorCode.AGENT_GONE
            await a1.stop()

        run(main())


def test_corrupt_state_file(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path)
    d.state_dir.mkdir(parents=True, exist_ok=True)
    (d.state_dir / "sessions.db").write_bytes(b"this is not a database" * 100)
    with d:

        async def main() -> None:
            agent = await EchoAgent(d.socket_dir).start()
            c = await session(d, agent)
            c.send_data(b"serving")
            assert await c.data() == b"serving"
            await agent.stop()

        run(main())
        assert "session table" in d.log()


def test_truncated_state_file_keeps_what_it_can(tmp_path: Path) -> None:
    with daemon(tmp_path) as d:

        async def main() -> None:
            agent = await EchoAgent(d.socket_dir).start()
            for _ in range(30):
                await session(d, agent)
            await agent.stop(unlink=False)

        run(main())
    db = d.state_dir / "sessions.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    for extra in ("sessions.db-wal", "sessions.db-shm"):
        (d.state_dir / extra).unlink(missing_ok=True)
    d.start()
    try:
        assert d.ready()
        assert "session table" in d.log()
    finally:
        d.stop()
