"""Many sessions at once, and bounded memory against a reader that stops (issue 3)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from clawterm.constants import FrameType
from tests.daemon.test_handshake import run
from tests.daemon.test_resume import session
from tests.helpers import EchoAgent, WireClient, daemon, until


def test_1000_concurrent_sessions_echo_every_byte(tmp_path: Path) -> None:
    n = int(os.environ.get("CLAWTERM_SCALE_SESSIONS", "1000"))
    with daemon(tmp_path, "--max-handshakes-per-ip", "100000") as d:

        async def main() -> None:
            agent = await EchoAgent(d.socket_dir).start()
            first = await session(d, agent)
            sem = asyncio.Semaphore(100)

            async def one(i: int) -> bytes:
                async with sem:
                    c = await WireClient.open(d.port)
                    await c.connect(d.token)
                payload = hashlib.sha256(str(i).encode()).digest() * (1 + i % 20)
                chunks = [payload[j : j + 97] for j in range(0, len(payload), 97)]
                for chunk in chunks:
                    c.send_data(chunk)
                got = await c.read_exactly(len(payload), timeout=60)
                await c.close()
                assert got == payload, i
                return got

            results = await asyncio.gather(*(one(i) for i in range(n)))
            assert len(results) == n
            first.send_data(b"last")
            assert await first.data() == b"last"
            await agent.stop()

        run(main())


def test_stopped_reader_keeps_daemon_memory_bounded(tmp_path: Path) -> None:
    with daemon(tmp_path, "--ring-size", "262144", "--max-buffer", "262144") as d:

        async def main() -> None:
            agent = await EchoAgent(d.socket_dir).start()
            c = await session(d, agent)
            sid = c.session_id
            c.writer.transport.pause_reading()  # the client stops reading, stays connected
            baseline = d.rss()
            flood = os.urandom(1 << 20)
            for _ in range(32):  # 32 MiB offered by the agent
                agent.write(sid, flood)
            writer = agent.sessions[sid]["writer"]
            await asyncio.sleep(1.5)
            grown = d.rss() - baseline
            # Ring (256 KiB) + client transport buffer + one read per leg: a few MiB at most.
            assert grown < 24 * 1024 * 1024, grown
            # The agent is the one waiting: its unsent output sits in its own buffers.
            assert writer.transport.get_write_buffer_size() > 16 * 1024 * 1024
            # Start reading again: everything arrives, in order, nothing lost.
            c.writer.transport.resume_reading()
            got = await c.read_exactly(32 << 20, timeout=60)
            assert hashlib.sha256(got).digest() == hashlib.sha256(flood * 32).digest()
            await agent.stop()

        run(main())


def test_keepalive_answered_only_for_ping(tmp_path: Path) -> None:
    with daemon(tmp_path) as d:

        async def main() -> None:
            agent = await EchoAgent(d.socket_dir).start()
            c = await session(d, agent)
            c.send(FrameType.KEEPALIVE)  # plain KEEPALIVE: never answered (SPEC §8)
            c.send_data(b"after")
            assert await c.data() == b"after"
            c.send(FrameType.KEEPALIVE, flags=0x02)  # PONG: never answered
            c.send(FrameType.KEEPALIVE, flags=0x01)
            frame = await c.expect(FrameType.KEEPALIVE)
            assert frame.flags == 0x02
            c.send(FrameType.KEEPALIVE, flags=0x02)
            c.send_data(b"end")
            assert await c.data() == b"end"
            await agent.stop()

        run(main())


def test_agent_that_stops_reading_pauses_the_client_not_the_daemon(tmp_path: Path) -> None:
    """--max-buffer: what waits for a slow agent stays with the client (issue 3)."""
    with daemon(tmp_path, "--max-buffer", "131072") as d:

        async def main() -> None:
            agent = await EchoAgent(d.socket_dir).start()
            upstream = bytearray()

            def record(payload: bytes) -> bytes:
                upstream.extend(payload)
                return b""

            agent.transform = record
            c = await session(d, agent)
            agent.reading.clear()  # the agent stops reading
            baseline = d.rss()
            blob = os.urandom(32 << 20)
            for i in range(0, len(blob), 60000):
                c.send_data(blob[i : i + 60000])
            await asyncio.sleep(1.5)
            # 32 MiB were written; the agent took at most one read of it, and the
            # daemon did not absorb the rest (it stopped reading the client), so
            # it waits in the client and the kernel's socket buffers.
            assert len(upstream) < 1 << 20
            assert d.rss() - baseline < 24 * 1024 * 1024
            agent.reading.set()
            await until(lambda: len(upstream) >= len(blob), timeout=60)
            assert hashlib.sha256(upstream).digest() == hashlib.sha256(blob).digest()
            await agent.stop()

        run(main())
