"""The agent SDK over real Unix sockets, against an in-test daemon side (SPEC §4, §8–§10, §14)."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest

from clawterm.agent import AgentServer, Session, SessionClosed
from clawterm.agent.protocol import AGENT_CAPABILITIES
from clawterm.constants import ErrorCode, FrameType, KeepaliveFlag
from clawterm.frame import encode_frame
from clawterm.payloads import Ack, Connect, WinSize

from .leg import (
    DaemonLeg,
    LegClosed,
    disconnect,
    error,
    eventually,
    first_session,
    is_more,
    resumed,
    serving,
    wait_for,
)


class Collector:
    """A handler that records every session and what it received."""

    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.received: list[bytes] = []
        self.done = asyncio.Event()

    async def __call__(self, session: Session) -> None:
        self.sessions.append(session)
        async for data in session:
            self.received.append(data)
        self.done.set()

    @property
    def session(self) -> Session:
        assert self.sessions
        return self.sessions[0]

    async def first_session(self) -> Session:
        await eventually(lambda: self.sessions)
        return self.sessions[0]

    def data(self) -> bytes:
        return b"".join(self.received)


# -- socket file -----------------------------------------------------------


async def test_socket_appears_only_when_listening_and_is_removed(socket_dir: Path) -> None:
    from asyncinotify import Inotify, Mask

    tenant_dir = socket_dir / "7"
    seen: list[tuple[str, Mask, bool]] = []
    with Inotify() as inotify:
        inotify.add_watch(socket_dir, Mask.CREATE | Mask.ONLYDIR)

        server = AgentServer(Collector(), socket_dir=socket_dir, tenant_id=7, agent_id=3)
        start = asyncio.create_task(server.start())
        # The tenant directory is made by the agent (mode 0755)...
        event = await wait_for(inotify.get())
        assert event.name is not None and str(event.name) == "7"
        inotify.add_watch(tenant_dir, Mask.CREATE | Mask.MOVED_TO)
        await start
        # ...and the socket file arrives by rename, already listening (SPEC §15).
        while True:
            try:
                event = await asyncio.wait_for(inotify.get(), 0.2)
            except TimeoutError:
                break
            name = str(event.name)
            listening = True
            if name == "3.sock":
                leg = await DaemonLeg.open(tenant_dir / name)
                leg.close()
            seen.append((name, event.mask, listening))
    assert stat.S_IMODE(os.stat(tenant_dir).st_mode) == 0o755
    assert server.path == tenant_dir / "3.sock"
    assert stat.S_ISSOCK(os.stat(server.path).st_mode)
    # The final name is never *created*: it only ever appears through a rename.
    created = [n for n, m, _ in seen if m & Mask.CREATE]
    moved = [n for n, m, _ in seen if m & Mask.MOVED_TO]
    assert "3.sock" not in created
    # (the inotify watch on the tenant dir may come after a fast rename)
    assert moved in ([], ["3.sock"])
    await server.stop()
    assert not server.path.exists()
    assert os.listdir(tenant_dir) == []


async def test_socket_rename_is_atomic_for_a_watcher(socket_dir: Path) -> None:
    from asyncinotify import Inotify, Mask

    (socket_dir / "0").mkdir()
    with Inotify() as inotify:
        inotify.add_watch(socket_dir / "0", Mask.CREATE | Mask.MOVED_TO)
        async with serving(Collector(), socket_dir):
            events = []
            while True:
                event = await wait_for(inotify.get())
                events.append((str(event.name), event.mask))
                if str(event.name) == "1.sock":
                    # Connectable at the moment it appears.
                    leg = await DaemonLeg.open(socket_dir / "0" / "1.sock")
                    await leg.connect(5)
                    leg.close()
                    break
    assert events[-1][1] & Mask.MOVED_TO
    assert all(name != "1.sock" for name, mask in events if mask & Mask.CREATE)


async def test_stale_socket_is_replaced_and_live_one_refused(socket_dir: Path) -> None:
    import socket as socketmod

    from clawterm.agent import AgentSocketError

    path = socket_dir / "0" / "1.sock"
    path.parent.mkdir()
    stale = socketmod.socket(socketmod.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # file left behind, nobody listening
    async with serving(Collector(), socket_dir):
        leg = await DaemonLeg.open(path)
        await leg.connect(1)
        second = AgentServer(Collector(), socket_dir=socket_dir)
        with pytest.raises(AgentSocketError, match="another agent"):
            await second.start()
        leg.close()
    assert not path.exists()


# -- handshake -------------------------------------------------------------


async def test_connect_accept(socket_dir: Path) -> None:
    handler = Collector()
    async with serving(handler, socket_dir, tenant_id=0, agent_id=1) as server:
        leg = await DaemonLeg.open(server.path)
        accept = await leg.connect(0xDEADBEEF, tenant=0, agent=1)
        assert accept.session_id == 0xDEADBEEF
        assert accept.version == 1
        assert accept.capabilities == AGENT_CAPABILITIES == 0x07
        assert accept.resume_token == bytes(16)
        assert accept.keepalive == 0
        session = await handler.first_session()
        assert (session.id, session.tenant_id, session.agent_id) == (0xDEADBEEF, 0, 1)
        assert session.client_present and session.attached and not session.closed
        assert session.winsize is None
        leg.close()


@pytest.mark.parametrize(
    ("payload", "sid", "code"),
    [
        (b"\x02" + bytes(57), 9, ErrorCode.UNSUPPORTED_VERSION),
        (b"\x01" + bytes(50), 9, ErrorCode.BAD_PAYLOAD),
        (Connect(1, 7, 0, 1, bytes(32), bytes(16)).encode(), 0, ErrorCode.PROTOCOL),
    ],
)
async def test_bad_connect_is_answered_with_error(
    socket_dir: Path, payload: bytes, sid: int, code: ErrorCode
) -> None:
    async with serving(Collector(), socket_dir) as server:
        leg = await DaemonLeg.open(server.path)
        leg.send(FrameType.CONNECT, payload, sid=sid)
        frames = await leg.closed()
        assert [f.type for f in frames] == [FrameType.ERROR]
        assert error(frames[0]).code == code
        assert len(server.table) == 0


async def test_bad_crc_closes_but_keeps_the_session(socket_dir: Path) -> None:
    handler = Collector()
    async with serving(handler, socket_dir) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(11)
        raw = bytearray(encode_frame(FrameType.DATA, 11, 1, b"hello"))
        raw[-1] ^= 0xFF
        leg.send_raw(bytes(raw))
        frames = await leg.closed()
        assert error(frames[-1]).code == ErrorCode.BAD_CRC
        # SPEC §12: an ERROR never ends a session; it can be resumed.
        leg2 = await DaemonLeg.open(server.path)
        assert resumed(await leg2.resume(11, 0)).last_rx_seq == 0
        leg2.close()


async def test_handshake_timeout(socket_dir: Path) -> None:
    async with serving(Collector(), socket_dir, handshake_timeout=0.2) as server:
        leg = await DaemonLeg.open(server.path)
        frames = await leg.closed(timeout=2)
        assert error(frames[0]).code == ErrorCode.TIMEOUT


# -- data, acknowledgement, duplicates -------------------------------------


async def test_data_both_ways_and_ack_pacing(socket_dir: Path) -> None:
    async def handler(session: Session) -> None:
        await session.send(b"hello from the agent")
        async for data in session:
            await session.send(b"got " + data)

    async with serving(handler, socket_dir) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(21)
        hello = await leg.expect(FrameType.DATA)
        assert (hello.seq, hello.session_id, bytes(hello.payload)) == (
            1,
            21,
            b"hello from the agent",
        )

        # One DATA: acknowledged within 100 ms (SPEC §4), with a u32 payload.
        t0 = time.monotonic()
        leg.send_data(b"one")
        frames = await leg.recv_until(lambda f: f.type == FrameType.ACK)
        elapsed = time.monotonic() - t0
        ack = frames[-1]
        assert Ack.decode(ack.payload).seq == 1 and len(ack.payload) == 4
        assert 0.05 <= elapsed < 0.3
        assert ack.seq == 2  # non-DATA frames carry our last DATA SEQ (SPEC §4)
        replies = [bytes(f.payload) for f in frames if f.type == FrameType.DATA]
        assert replies == [b"got one"]

        # 40 frames at once: an ACK at 32 frames without waiting, then the rest.
        t0 = time.monotonic()
        for i in range(40):
            leg.send_data(b"x%d" % i)
        acks: list[tuple[int, float]] = []
        while not acks or acks[-1][0] != 41 or 42 not in leg.data:
            frame = await leg.recv()
            if frame.type == FrameType.ACK:
                acks.append((Ack.decode(frame.payload).seq or 0, time.monotonic() - t0))
        assert acks[0][0] == 33 and acks[0][1] < 0.09
        assert len(acks) <= 3
        # Every DATA reply came, numbered 3, 4, ... without gaps.
        assert sorted(leg.data) == list(range(1, 43))
        assert leg.data[42] == b"got x39"
        leg.close()


async def test_ack_waits_for_the_handler_to_take_the_data(socket_dir: Path) -> None:
    gate = asyncio.Event()
    got: list[bytes] = []

    async def handler(session: Session) -> None:
        await gate.wait()
        async for data in session:
            got.append(data)

    async with serving(handler, socket_dir) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(22)
        leg.send_data(b"a")
        leg.send_data(b"b")
        with pytest.raises(TimeoutError):
            await leg.recv(timeout=0.3)  # not taken, not acknowledged
        gate.set()
        ack = await leg.expect(FrameType.ACK)
        assert Ack.decode(ack.payload).seq == 2
        assert got == [b"a", b"b"]
        leg.close()


async def test_duplicates_are_dropped(socket_dir: Path) -> None:
    handler = Collector()
    async with serving(handler, socket_dir) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(31)
        leg.send_data(b"1", seq=1)
        leg.send_data(b"2", seq=2)
        leg.send_data(b"2 again", seq=2)
        leg.send_data(b"1 again", seq=1)
        leg.send_data(b"4", seq=4)  # gaps are accepted (SPEC §4)
        leg.send_data(b"3 late", seq=3)
        leg.send_data(b"5", seq=5)
        await eventually(lambda: len(handler.received) == 4)
        await asyncio.sleep(0.05)
        assert handler.received == [b"1", b"2", b"4", b"5"]
        leg.close()


async def test_large_send_is_split_with_more(socket_dir: Path) -> None:
    blob = os.urandom(200_000)

    async def handler(session: Session) -> None:
        await session.send(blob)
        await session.send(b"")
        await session.wait_closed()

    async with serving(handler, socket_dir) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(41)
        frames = [await leg.expect(FrameType.DATA) for _ in range(5)]
        assert [len(f.payload) for f in frames] == [65535, 65535, 65535, 3395, 0]
        assert [is_more(f) for f in frames] == [True, True, True, False, False]
        assert b"".join(bytes(f.payload) for f in frames) == blob
        leg.close()


# -- backpressure ----------------------------------------------------------


async def test_send_blocks_at_the_ring_size_until_acknowledged(socket_dir: Path) -> None:
    sent: list[int] = []

    async def handler(session: Session) -> None:
        for i in range(100):
            await session.send(b"%04d" % i + bytes(996))
            sent.append(i)
        await session.wait_closed()

    async with serving(handler, socket_dir, ring_size=8192) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(51)
        # 1015-byte frames: the 9th reaches 8192 bytes held; then send() waits.
        await eventually(lambda: len(sent) == 9)
        await asyncio.sleep(0.3)
        assert len(sent) == 9
        session = server.sessions[0]
        assert session.unacked_bytes == 9 * 1015
        frames = [await leg.expect(FrameType.DATA) for _ in range(9)]
        assert [f.seq for f in frames] == list(range(1, 10))
        # An ACK frees the space; the writer goes on, and stops again.
        leg.ack(4)
        await eventually(lambda: len(sent) == 13)
        await asyncio.sleep(0.2)
        assert len(sent) == 13
        leg.ack(13)
        await eventually(lambda: len(sent) == 22)
        leg.close()


async def test_send_blocks_while_the_daemon_does_not_read(socket_dir: Path) -> None:
    sent = 0

    async def handler(session: Session) -> None:
        nonlocal sent
        chunk = bytes(60_000)
        while True:
            await session.send(chunk)
            sent += len(chunk)

    async with serving(handler, socket_dir, ring_size=1 << 30) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(52)
        leg.pause_reading()
        # Nobody reads: the socket buffers fill, the transport pauses, send() waits.
        await asyncio.sleep(0.5)
        stalled = sent
        await asyncio.sleep(0.3)
        assert sent == stalled
        assert stalled < 2 << 20  # bounded by socket buffers + high-water mark
        # Reading (and acknowledging) lets it go on.
        leg.resume_reading()
        for _ in range(40):
            frame = await leg.expect(FrameType.DATA)
            leg.ack(frame.seq)
        await eventually(lambda: sent > stalled)
        leg.abort()


async def test_a_client_ignoring_its_window_is_not_read_beyond_a_bound(socket_dir: Path) -> None:
    gate = asyncio.Event()
    got = 0

    async def handler(session: Session) -> None:
        nonlocal got
        await gate.wait()
        async for data in session:
            got += len(data)

    async with serving(handler, socket_dir, ring_size=65536) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(53)
        chunk = bytes(60_000)
        for _ in range(100):  # 6 MB, never waiting for an ACK
            leg.send_data(chunk)
        session = await first_session(server)
        await asyncio.sleep(0.4)
        # The limit, plus what one read of the socket can bring.
        assert session._inbox_bytes <= server.inbox_limit + 256 * 1024 + len(chunk)
        gate.set()
        await eventually(lambda: got == 100 * len(chunk))
        leg.close()


async def test_no_deadlock_with_a_client_far_ahead_of_its_acks(socket_dir: Path) -> None:
    # A client with megabytes in flight, reading and acknowledging meanwhile:
    # the echo waits in send() for ACKs that come behind that input.
    async def echo(session: Session) -> None:
        async for data in session:
            await session.send(data)

    async with serving(echo, socket_dir, ring_size=65536) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(54)
        chunk = os.urandom(16384)
        for _ in range(256):  # 4 MB at once
            leg.send_data(chunk)
        for seq in range(1, 257):
            frame = await leg.next_data()
            assert frame.seq == seq and frame.payload == chunk
            leg.ack(seq)
        leg.close()


# -- keepalive, notifications ---------------------------------------------


async def test_ping_is_answered_and_nothing_else(socket_dir: Path) -> None:
    async with serving(Collector(), socket_dir) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(61)
        leg.send(FrameType.KEEPALIVE)
        leg.send(FrameType.KEEPALIVE, flags=KeepaliveFlag.PONG)
        leg.send(FrameType.KEEPALIVE, flags=KeepaliveFlag.PING)
        pong = await leg.expect(FrameType.KEEPALIVE)
        assert pong.flags == KeepaliveFlag.PONG and pong.session_id == 61
        with pytest.raises(TimeoutError):
            await leg.recv(timeout=0.2)
        leg.close()


async def test_suspend_resumed_and_winsize_reach_the_handler(socket_dir: Path) -> None:
    presence: list[bool] = []
    sizes: list[WinSize] = []
    waited = asyncio.Event()

    async def handler(session: Session) -> None:
        session.on_presence = presence.append
        session.on_winsize = sizes.append
        assert await session.wait_presence(False)
        assert not session.client_present
        assert await session.wait_presence(True)
        waited.set()
        await session.wait_closed()

    async with serving(handler, socket_dir) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(71)
        await eventually(lambda: server.sessions)
        leg.send(FrameType.SUSPEND)
        await eventually(lambda: presence == [False])
        leg.send(FrameType.RESUMED)
        await wait_for(waited.wait())
        assert presence == [False, True]
        leg.winsize(33, 101)
        leg.winsize(40, 120, xpixel=800)
        await eventually(lambda: len(sizes) == 2)
        assert sizes == [WinSize(33, 101), WinSize(40, 120, 800, 0)]
        assert server.sessions[0].winsize == WinSize(40, 120, 800, 0)
        # A non-empty RESUMED toward the agent is a protocol error.
        leg.send(FrameType.RESUMED, bytes(8))
        frames = await leg.closed()
        assert error(frames[-1]).code == ErrorCode.PROTOCOL


# -- ending ----------------------------------------------------------------


async def test_handler_close_sends_disconnect_after_data(socket_dir: Path) -> None:
    async def handler(session: Session) -> None:
        await session.send(b"last words")
        await session.close(3, "exited with status 3")
        with pytest.raises(SessionClosed):
            await session.send(b"more")

    async with serving(handler, socket_dir) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(81)
        frames = await leg.closed()
        assert [f.type for f in frames] == [FrameType.DATA, FrameType.DISCONNECT]
        d = disconnect(frames[1])
        assert (d.code, d.reason) == (3, "exited with status 3")
        assert frames[1].seq == 1
        await eventually(lambda: not server.sessions and not len(server.table))


@pytest.mark.parametrize("fail", [False, True])
async def test_handler_return_or_crash_ends_the_session(socket_dir: Path, fail: bool) -> None:
    async def handler(session: Session) -> None:
        if fail:
            raise RuntimeError("secret internal detail")

    async with serving(handler, socket_dir) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(82)
        frames = await leg.closed()
        d = disconnect(frames[-1])
        if fail:
            assert (d.code, d.reason) == (ErrorCode.INTERNAL, "agent error")
        else:
            assert (d.code, d.reason) == (0, "")


async def test_daemon_disconnect_ends_the_handler(socket_dir: Path) -> None:
    outcome: list[object] = []

    async def handler(session: Session) -> None:
        async for data in session:
            outcome.append(data)
        outcome.append((session.closed, session.close_code, session.close_reason))
        try:
            await session.send(b"x")
        except SessionClosed as exc:
            outcome.append(exc.code)

    async with serving(handler, socket_dir) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(83)
        leg.send_data(b"before")
        leg.send(FrameType.DISCONNECT, b"\x00\x0aclient gone", seq=1)
        await eventually(lambda: len(outcome) == 3)
        # Data queued before the DISCONNECT is still delivered.
        assert outcome == [b"before", (True, 10, "client gone"), 10]
        frames = await leg.closed()
        assert FrameType.DISCONNECT not in [f.type for f in frames]
        # It cannot be resumed.
        leg2 = await DaemonLeg.open(server.path)
        assert error(await leg2.resume(83, 0)).code == ErrorCode.NO_SUCH_SESSION


# -- agent-leg resume (SPEC §14, §17) --------------------------------------


async def test_resume_mid_stream_loses_nothing_either_way(socket_dir: Path) -> None:
    got: list[bytes] = []

    async def handler(session: Session) -> None:
        async def produce() -> None:
            for i in range(400):
                await session.send(b"out-%03d;" % i)
                if i % 10 == 0:
                    await asyncio.sleep(0.005)

        producer = asyncio.create_task(produce())
        async for data in session:
            got.append(data)
        producer.cancel()

    async with serving(handler, socket_dir, ring_size=4096) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(91)
        # Both directions flowing; acknowledge only part of what arrives.
        sent_in = []
        for i in range(30):
            sent_in.append(leg.send_data(b"in-%03d;" % i))
            frame = await leg.expect(FrameType.DATA)
            if frame.seq % 3 == 0:
                leg.ack(frame.seq)
        for i in range(30, 60):
            leg.send_data(b"in-%03d;" % i)
        leg.abort()  # no DISCONNECT: the daemon "restarted"
        last_rx = max(leg.data)
        session = server.sessions[0]
        await eventually(lambda: not session.attached)
        assert not session.closed and not session.client_present

        leg2 = await DaemonLeg.open(server.path)
        answer = resumed(await leg2.resume(91, last_rx))
        assert answer.session_id == 91
        agent_last_rx = answer.last_rx_seq or 0
        assert 30 <= agent_last_rx <= 60
        # The client resends what the agent did not get (plus a stale duplicate).
        leg2.tx_seq = agent_last_rx - 1
        for seq in range(agent_last_rx - 1, 60):
            leg2.send_data(b"in-%03d;" % seq, seq=seq + 1)
        leg2.tx_seq = 60
        for i in range(60, 80):
            leg2.send_data(b"in-%03d;" % i)
        # The replay starts right after last_rx, in order, then live output follows.
        first = await leg2.next_data()
        assert first.seq == last_rx + 1
        out = dict(leg.data)
        while 400 not in leg2.data:
            frame = await leg2.next_data()
            leg2.ack(frame.seq)
        out.update(leg2.data)
        assert sorted(out) == list(range(1, 401))
        assert b"".join(out[s] for s in sorted(out)) == b"".join(
            b"out-%03d;" % i for i in range(400)
        )
        await eventually(lambda: len(got) == 80)
        assert b"".join(got) == b"".join(b"in-%03d;" % i for i in range(80))
        # The client is back when the daemon says so (empty RESUMED).
        assert not session.client_present
        leg2.send(FrameType.RESUMED)
        await eventually(lambda: session.client_present)
        leg2.close()


async def test_resume_with_zero_replays_everything_unacknowledged(socket_dir: Path) -> None:
    async def handler(session: Session) -> None:
        for i in range(1, 6):
            await session.send(b"frame %d" % i)
        async for data in session:
            await session.send(b"echo " + data)

    async with serving(handler, socket_dir) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(92)
        for _ in range(5):
            await leg.expect(FrameType.DATA)
        leg.ack(2)
        leg.send_data(b"q")
        await leg.recv_until(lambda f: f.type == FrameType.DATA and f.seq == 6)
        await asyncio.sleep(0.05)
        leg.abort()
        await eventually(lambda: not server.sessions[0].attached)

        leg2 = await DaemonLeg.open(server.path)
        answer = resumed(await leg2.resume(92, 0))
        assert answer.last_rx_seq == 1
        replay = [await leg2.expect(FrameType.DATA) for _ in range(4)]
        assert [(f.seq, bytes(f.payload)) for f in replay] == [
            (3, b"frame 3"),
            (4, b"frame 4"),
            (5, b"frame 5"),
            (6, b"echo q"),
        ]
        # Live traffic continues the numbering.
        leg2.tx_seq = 1
        leg2.send_data(b"r")
        live = await leg2.recv_until(lambda f: f.type == FrameType.DATA)
        assert (live[-1].seq, bytes(live[-1].payload)) == (7, b"echo r")
        leg2.close()


async def test_output_while_detached_is_kept_and_replayed(socket_dir: Path) -> None:
    go = asyncio.Event()

    async def handler(session: Session) -> None:
        await go.wait()
        await session.send(b"written while nobody was there")
        await session.close(0, "done")

    async with serving(handler, socket_dir) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(93)
        leg.abort()
        await eventually(lambda: not server.sessions[0].attached)
        go.set()
        await asyncio.sleep(0.05)
        leg2 = await DaemonLeg.open(server.path)
        resumed(await leg2.resume(93, 0))
        frames = await leg2.closed()
        assert [f.type for f in frames] == [FrameType.DATA, FrameType.DISCONNECT]
        assert bytes(frames[0].payload) == b"written while nobody was there"
        assert disconnect(frames[1]).reason == "done"
        assert not len(server.table)


async def test_grace_expiry_ends_the_session(socket_dir: Path) -> None:
    handler = Collector()
    async with serving(handler, socket_dir, grace=0.3) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(94)
        session = await handler.first_session()
        t0 = time.monotonic()
        leg.abort()
        await wait_for(handler.done.wait())
        assert 0.2 <= time.monotonic() - t0 < 2
        assert session.closed and session.close_code == ErrorCode.TIMEOUT
        leg2 = await DaemonLeg.open(server.path)
        frame = await leg2.resume(94, 0)
        assert error(frame).code == ErrorCode.NO_SUCH_SESSION
        with pytest.raises(LegClosed):
            await leg2.recv()


async def test_resume_unknown_session(socket_dir: Path) -> None:
    async with serving(Collector(), socket_dir) as server:
        leg = await DaemonLeg.open(server.path)
        frame = await leg.resume(12345, 0)
        assert error(frame).code == ErrorCode.NO_SUCH_SESSION
        assert frame.session_id == 12345
        assert await leg.closed() == []


async def test_resume_takes_over_a_live_connection(socket_dir: Path) -> None:
    async def handler(session: Session) -> None:
        async for data in session:
            await session.send(data)

    async with serving(handler, socket_dir) as server:
        old = await DaemonLeg.open(server.path)
        await old.connect(95)
        old.send_data(b"a")
        await old.expect(FrameType.DATA)
        new = await DaemonLeg.open(server.path)
        assert resumed(await new.resume(95, 1)).last_rx_seq == 1
        frames = await old.closed()
        assert error(frames[-1]).code == ErrorCode.TAKEN_OVER
        new.tx_seq = 1
        new.send_data(b"b")
        frame = await new.expect(FrameType.DATA)
        assert (frame.seq, bytes(frame.payload)) == (2, b"b")
        new.close()


async def test_stop_disconnects_every_session(socket_dir: Path) -> None:
    server = AgentServer(Collector(), socket_dir=socket_dir)
    await server.start()
    legs = []
    for sid in (101, 102):
        leg = await DaemonLeg.open(server.path)
        await leg.connect(sid)
        legs.append(leg)
    await server.stop()
    assert not server.path.exists()
    for leg in legs:
        frames = await leg.closed()
        d = disconnect(frames[-1])
        assert (d.code, d.reason) == (ErrorCode.SHUTTING_DOWN, "agent shutting down")
