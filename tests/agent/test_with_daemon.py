"""The agent SDK, the PTY runner and ``clawterm-agent`` behind a real ``clawtermd``."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from clawterm.agent import Session
from clawterm.agent.pty_runner import pty_handler
from clawterm.constants import ErrorCode, FrameType
from clawterm.payloads import Ack, Connect, Disconnect, WinSize
from tests.helpers import DaemonProcess, WireClient

from .leg import eventually, serving
from .test_cli import AgentProcess

pytestmark = pytest.mark.skipif(
    not (Path(__file__).parents[2] / "src/clawterm/daemon/cli.py").exists(), reason="no daemon"
)


@pytest.fixture
def d(socket_dir: Path) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(socket_dir, "--resume-failures", "1000")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


async def registered(d: DaemonProcess, count: int = 1) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(500):
        if await loop.run_in_executor(None, d.metric, "clawterm_agents_registered") == count:
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"registry never had {count} agent(s):\n{d.log()}")


async def output_until(c: WireClient, needle: bytes, timeout: float = 5.0) -> bytes:
    out = b""
    while needle not in out:
        out += await c.data(timeout)
    return out


async def disconnect_of(c: WireClient) -> Disconnect:
    while True:
        frame = await c.read_frame()
        if frame.type == FrameType.DISCONNECT:
            return Disconnect.decode(frame.payload)


async def reopen(d: DaemonProcess, old: WireClient) -> WireClient:
    c = await WireClient.open(d.port)
    c.tx, c.rx = old.tx, old.rx
    c.resend_after_resumed(await c.resume(old.session_id, old.resume_token))
    return c


async def test_sdk_agent_behind_clawtermd(d: DaemonProcess) -> None:
    notes: list[object] = []

    async def handler(session: Session) -> None:
        session.on_presence = notes.append
        session.on_winsize = lambda ws: notes.append((ws.rows, ws.cols))
        await session.send(b"welcome\r\n")
        async for data in session:
            await session.send(data.upper())
        notes.append((session.close_code, session.close_reason))

    async with serving(handler, d.socket_dir) as server:
        await registered(d)
        c = await WireClient.open(d.port)
        await c.connect(d.token)
        assert await c.data() == b"welcome\r\n"
        c.send_data(b"hello")
        assert await c.data() == b"HELLO"
        c.send(FrameType.WINSIZE, WinSize(30, 100).encode())
        await eventually(lambda: (30, 100) in notes)
        # ACKs pass end to end: the client's reach the agent, the agent's the client.
        session = server.sessions[0]
        await eventually(lambda: session.unacked_bytes == 0)
        ack = await c.expect(FrameType.ACK)
        assert Ack.decode(ack.payload).seq == 1
        # The client leaves on purpose and comes back on a new transport.
        c.send(FrameType.SUSPEND)
        await c.expect_closed()
        await eventually(lambda: False in notes)
        c2 = await reopen(d, c)
        await eventually(lambda: notes[-1] is True)
        c2.send_data(b"again")
        assert await c2.data() == b"AGAIN"
        c2.send(FrameType.DISCONNECT, Disconnect(0, "bye").encode())
        await eventually(lambda: notes[-1] == (0, "bye"))
        await eventually(lambda: not server.sessions)


async def test_pty_runner_behind_clawtermd(d: DaemonProcess) -> None:
    async with serving(pty_handler(["bash", "--norc", "--noprofile"]), d.socket_dir):
        await registered(d)
        c = await WireClient.open(d.port)
        await c.connect(d.token)
        c.send(FrameType.WINSIZE, WinSize(30, 100).encode())
        c.send_data(b"stty size; echo x-$((2*21))\r")
        await output_until(c, b"30 100\r\nx-42")
        c.send_data(b"exit 4\r")
        d_ = await disconnect_of(c)
        assert (d_.code, d_.reason) == (4, "exited with status 4")


async def test_sdk_agent_survives_a_daemon_restart(d: DaemonProcess) -> None:
    async def echo(session: Session) -> None:
        async for data in session:
            await session.send(data)

    async with serving(echo, d.socket_dir, grace=30):
        await registered(d)
        clients = []
        for _ in range(3):
            c = await WireClient.open(d.port)
            await c.connect(d.token)
            clients.append(c)
        up = {c.session_id: os.urandom(96 * 1024) for c in clients}
        got = {c.session_id: bytearray() for c in clients}
        for c in clients:
            for i in range(0, 48 * 1024, 4096):
                c.send_data(up[c.session_id][i : i + 4096])
        for c in clients:
            got[c.session_id] += await c.read_exactly(16 * 1024)
        # More in flight when the daemon dies.
        for c in clients:
            for i in range(48 * 1024, 96 * 1024, 4096):
                c.send_data(up[c.session_id][i : i + 4096])
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, d.kill, signal.SIGKILL)
        for c in clients:
            c.abort()
        await loop.run_in_executor(None, d.start)
        # The new daemon RESUMEs each agent leg; the clients RESUME as after a drop.
        resumed = [await reopen(d, c) for c in clients]
        for c in resumed:
            sid = c.session_id
            rest = len(up[sid]) - len(got[sid])
            got[sid] += await c.read_exactly(rest, timeout=10)
            assert hashlib.sha256(got[sid]).digest() == hashlib.sha256(up[sid]).digest()


async def test_sigterm_of_the_agent_unregisters_it(d: DaemonProcess) -> None:
    agent = AgentProcess(
        d.socket_dir,
        "echo",
        "--socket-dir",
        str(d.socket_dir),
        log=d.dir / "agent.log",
    )
    try:
        await agent.ready()
        await registered(d)
        c = await WireClient.open(d.port)
        await c.connect(d.token)
        c.send_data(b"ping")
        assert await c.data() == b"ping"
        agent.proc.send_signal(signal.SIGTERM)
        d_ = await disconnect_of(c)
        assert d_.reason == "agent shutting down"
        assert await agent.wait() == 0
        await registered(d, 0)
        c2 = await WireClient.open(d.port)
        connect = Connect(1, 7, 0, 1, d.token, os.urandom(16))
        c2.send(FrameType.CONNECT, connect.encode(), sid=0)
        await c2.expect_error(ErrorCode.NO_SUCH_AGENT)
    finally:
        agent.kill()
