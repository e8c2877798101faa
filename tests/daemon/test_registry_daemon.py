"""The daemon's use of the pod registry (SPEC §15): agents come and go."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from clawterm.constants import ErrorCode, FrameType
from clawterm.payloads import Connect, Disconnect
from tests.daemon.test_handshake import run
from tests.helpers import EchoAgent, WireClient, daemon


async def _connect(port: int, token: bytes, tenant: int, agent: int) -> WireClient:
    c = await WireClient.open(port)
    c.send(FrameType.CONNECT, Connect(1, 7, tenant, agent, token, os.urandom(16)).encode(), sid=0)
    return c


async def _until_accepts(port: int, token: bytes, tenant: int, agent: int) -> WireClient:
    for _ in range(100):
        c = await _connect(port, token, tenant, agent)
        frame = await c.read_frame()
        if frame.type == FrameType.ACCEPT:
            c.session_id = frame.session_id
            return c
        await c.close()
        await asyncio.sleep(0.05)
    raise AssertionError("agent never registered")


def test_agents_appear_disappear_and_new_tenant_dirs(tmp_path: Path) -> None:
    with daemon(tmp_path) as d:

        async def main() -> None:
            # A tenant directory created after start, agent renamed into place.
            agent = await EchoAgent(d.socket_dir, tenant=0, agent=4).start()
            c = await _until_accepts(d.port, d.token, 0, 4)
            c.send_data(b"ping")
            assert await c.data() == b"ping"
            # Agent crash mid-session: the client gets DISCONNECT AGENT_GONE.
            agent.crash_connections()
            frame = await c.expect(FrameType.DISCONNECT)
            assert Disconnect.decode(frame.payload).code == ErrorCode.AGENT_GONE
            await c.expect_closed()
            # The socket file removed: unregistered.
            await agent.stop()
            for _ in range(100):
                c = await _connect(d.port, d.token, 0, 4)
                frame = await c.read_frame()
                await c.close()
                if frame.type == FrameType.ERROR:
                    break
                await asyncio.sleep(0.05)
            assert frame.type == FrameType.ERROR

        run(main())


def test_stale_socket_is_not_an_agent(tmp_path: Path) -> None:
    with daemon(tmp_path) as d:

        async def main() -> None:
            agent = await EchoAgent(d.socket_dir, tenant=0, agent=5).start()
            await _until_accepts(d.port, d.token, 0, 5)
            await agent.stop(unlink=False)  # socket file left behind, nobody listening
            c = await _connect(d.port, d.token, 0, 5)
            await c.expect_error(ErrorCode.NO_SUCH_AGENT)

        run(main())
