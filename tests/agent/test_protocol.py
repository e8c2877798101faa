"""The sans-I/O agent-leg core, fed bytes in memory (time comes in as ``now``)."""

from __future__ import annotations

import os

import pytest

from clawterm.agent.events import (
    ClientResumed,
    ClientSuspended,
    ConnectionFailed,
    DataAcknowledged,
    DataReceived,
    ErrorReceived,
    Event,
    SessionDetached,
    SessionEnded,
    SessionOpened,
    SessionReattached,
    WindowChanged,
)
from clawterm.agent.protocol import AgentConnection, AgentSession, AgentSessions, ConnectionState
from clawterm.constants import DataFlag, ErrorCode, FrameType, KeepaliveFlag
from clawterm.errors import LocalProtocolError
from clawterm.frame import Frame, FrameDecoder, encode_frame
from clawterm.payloads import (
    Accept,
    Ack,
    Connect,
    Disconnect,
    Error,
    Nack,
    Resume,
    Resumed,
    WinSize,
)

SID = 0x01020304


def connect_frame(sid: int = SID) -> bytes:
    payload = Connect(1, 7, 3, 4, bytes(32), os.urandom(16)).encode()
    return encode_frame(FrameType.CONNECT, sid, 0, payload)


def resume_frame(sid: int = SID, last_rx: int = 0) -> bytes:
    return encode_frame(FrameType.RESUME, sid, 0, Resume(sid, last_rx, bytes(16)).encode())


def data_frame(seq: int, payload: bytes, sid: int = SID) -> bytes:
    return encode_frame(FrameType.DATA, sid, seq, payload)


def frame(type: int, payload: bytes = b"", flags: int = 0, sid: int = SID) -> bytes:
    return encode_frame(type, sid, 0, payload, flags)


def out(conn: AgentConnection) -> list[Frame]:
    return [f._replace(raw=bytes(f.raw)) for f in FrameDecoder().feed(conn.data_to_send())]


def feed(conn: AgentConnection, data: bytes, now: float = 0.0, bytewise: bool = False) -> None:
    if bytewise:
        for i in range(len(data)):
            conn.receive_data(data[i : i + 1], now)
    else:
        conn.receive_data(data, now)


def opened(table: AgentSessions, now: float = 0.0) -> tuple[AgentConnection, AgentSession]:
    conn = table.connection(now)
    feed(conn, connect_frame(), now)
    (event,) = conn.events_received()
    assert isinstance(event, SessionOpened)
    out(conn)
    return conn, event.session


def kinds(events: list[Event]) -> list[type[Event]]:
    return [type(e) for e in events]


@pytest.mark.parametrize("bytewise", [False, True])
def test_connect_accept(bytewise: bool) -> None:
    table = AgentSessions()
    conn = table.connection(0.0)
    feed(conn, connect_frame(), bytewise=bytewise)
    (event,) = conn.events_received()
    assert isinstance(event, SessionOpened)
    session = event.session
    assert (session.session_id, session.tenant_id, session.agent_id) == (SID, 3, 4)
    (accept,) = out(conn)
    assert accept.type == FrameType.ACCEPT and accept.session_id == SID and accept.seq == 0
    assert Accept.decode(accept.payload) == Accept(SID, 1, 7, bytes(16), 0)
    assert conn.state is ConnectionState.OPEN and table.sessions == {SID: session}


@pytest.mark.parametrize("bytewise", [False, True])
def test_data_in_whole_or_byte_by_byte(bytewise: bool) -> None:
    conn, _ = opened(AgentSessions())
    stream = b"".join(data_frame(i, b"chunk %d" % i) for i in range(1, 6))
    feed(conn, stream + data_frame(3, b"dup"), bytewise=bytewise)
    events = conn.events_received()
    assert [e.data for e in events if isinstance(e, DataReceived)] == [
        b"chunk %d" % i for i in range(1, 6)
    ]
    assert conn.duplicates == 1


def test_ack_pacing_follows_consumption_and_time() -> None:
    conn, session = opened(AgentSessions())
    feed(conn, b"".join(data_frame(i, b"x") for i in range(1, 4)), now=1.0)
    assert conn.get_timer() is None  # nothing taken by the application yet
    for seq in (1, 2, 3):
        session.data_consumed(seq, 1, 1.01)
    assert out(conn) == []
    assert conn.get_timer() == pytest.approx(1.11)
    conn.handle_timer(1.05)
    assert out(conn) == []
    conn.handle_timer(1.11)
    (ack,) = out(conn)
    assert ack.type == FrameType.ACK and Ack.decode(ack.payload).seq == 3
    assert conn.get_timer() is None

    # 32 frames: acknowledged at once, without waiting for the timer.
    feed(conn, b"".join(data_frame(i, b"y") for i in range(4, 40)), now=2.0)
    for seq in range(4, 36):
        session.data_consumed(seq, 1, 2.0)
    (ack,) = out(conn)
    assert Ack.decode(ack.payload).seq == 35
    # 32 KiB: likewise.
    feed(conn, data_frame(40, bytes(40000)), now=3.0)
    session.data_consumed(40, 40000, 3.0)
    (ack,) = out(conn)
    assert Ack.decode(ack.payload).seq == 40


def test_send_buffer_acks_and_backpressure() -> None:
    table = AgentSessions(ring_size=120)
    conn, session = opened(table)
    session.send_data(b"a" * 40)
    session.send_data(b"b" * 40, more=True)
    assert session.writable
    session.send_data(b"c" * 40)
    assert not session.writable
    frames = out(conn)
    assert [f.seq for f in frames] == [1, 2, 3]
    assert [f.flags for f in frames] == [0, DataFlag.MORE, 0]
    feed(conn, frame(FrameType.ACK, Ack(2).encode()))
    assert kinds(conn.events_received()) == [DataAcknowledged]
    assert session.writable and session.send_buffer.unacked_bytes == 55
    # An ACK beyond what was sent releases only what was sent.
    feed(conn, frame(FrameType.ACK, Ack(99).encode()))
    (event,) = conn.events_received()
    assert event == DataAcknowledged(3) and session.send_buffer.unacked_bytes == 0
    with pytest.raises(LocalProtocolError):
        session.send_data(bytes(65536))


def test_legacy_empty_ack_and_nack() -> None:
    conn, session = opened(AgentSessions())
    raws = []
    for i in range(3):
        session.send_data(b"%d" % i)
    raws = [f.raw for f in out(conn)]
    feed(conn, frame(FrameType.ACK))
    assert conn.events_received() == [DataAcknowledged(1)]
    feed(conn, frame(FrameType.NACK, Nack(2).encode()))
    assert [f.raw for f in out(conn)] == raws[2:]


def test_keepalive_ping_only() -> None:
    conn, session = opened(AgentSessions())
    session.send_data(b"x")
    out(conn)
    feed(conn, frame(FrameType.KEEPALIVE))
    feed(conn, frame(FrameType.KEEPALIVE, flags=KeepaliveFlag.PONG))
    assert out(conn) == []
    feed(conn, frame(FrameType.KEEPALIVE, flags=KeepaliveFlag.PING))
    (pong,) = out(conn)
    assert pong.flags == KeepaliveFlag.PONG and pong.seq == 1  # our last DATA SEQ


def test_notifications_and_winsize() -> None:
    conn, session = opened(AgentSessions())
    feed(conn, frame(FrameType.SUSPEND))
    assert not session.client_present
    feed(conn, frame(FrameType.RESUMED))
    assert session.client_present
    feed(conn, frame(FrameType.WINSIZE, WinSize(10, 20).encode()))
    feed(conn, frame(FrameType.WINSIZE, WinSize(11, 21, 5, 6).encode()))
    events = conn.events_received()
    assert kinds(events) == [ClientSuspended, ClientResumed, WindowChanged, WindowChanged]
    assert session.winsize == WinSize(11, 21, 5, 6)
    feed(conn, frame(0x77, b"future"))
    assert conn.unknown_frames == 1 and conn.state is ConnectionState.OPEN


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(FrameType.WINSIZE, b"\x00\x01\x00"), ErrorCode.BAD_PAYLOAD),
        (frame(FrameType.SUSPEND, b"x"), ErrorCode.BAD_PAYLOAD),
        (frame(FrameType.RESUMED, bytes(8)), ErrorCode.PROTOCOL),
        (frame(FrameType.CONNECT, bytes(58)), ErrorCode.PROTOCOL),
        (data_frame(1, b"x", sid=SID + 1), ErrorCode.PROTOCOL),
        (b"\x7d" + bytes(20), ErrorCode.BAD_FRAME),
    ],
)
def test_protocol_errors_detach_but_keep_the_session(data: bytes, code: ErrorCode) -> None:
    table = AgentSessions(grace=10)
    conn, session = opened(table)
    feed(conn, data, now=5.0)
    events = conn.events_received()
    assert kinds(events) == [ConnectionFailed, SessionDetached]
    (error,) = out(conn)
    assert Error.decode(error.payload).code == code
    assert conn.should_close
    assert session.connection is None and session.grace_deadline == 15.0
    assert table.sessions == {SID: session} and table.get_timer() == 15.0


def test_handshake_errors() -> None:
    table = AgentSessions(handshake_timeout=2.0)
    conn = table.connection(10.0)
    assert conn.get_timer() == 12.0
    conn.handle_timer(12.0)
    (error,) = out(conn)
    assert Error.decode(error.payload).code == ErrorCode.TIMEOUT

    for data, code in [
        (data_frame(1, b"x"), ErrorCode.PROTOCOL),
        (encode_frame(FrameType.RESUME, SID, 0, Resume(SID).encode()), ErrorCode.BAD_PAYLOAD),
        (encode_frame(FrameType.RESUME, SID + 1, 0, Resume(SID, 0, bytes(16)).encode()), 5),
        (resume_frame(), ErrorCode.NO_SUCH_SESSION),
    ]:
        conn = table.connection(0.0)
        feed(conn, data)
        (error,) = out(conn)
        assert Error.decode(error.payload).code == code, data

    opened(table)
    conn = table.connection(0.0)
    feed(conn, connect_frame())
    assert Error.decode(out(conn)[0].payload).code == ErrorCode.PROTOCOL  # id in use

    table.accepting = False
    for data in (connect_frame(SID + 9), resume_frame()):
        conn = table.connection(0.0)
        feed(conn, data)
        assert Error.decode(out(conn)[0].payload).code == ErrorCode.SHUTTING_DOWN


def test_error_from_the_daemon_detaches() -> None:
    conn, session = opened(AgentSessions())
    feed(conn, frame(FrameType.ERROR, Error(ErrorCode.INTERNAL, "oops").encode()))
    assert kinds(conn.events_received()) == [ErrorReceived, SessionDetached]
    assert conn.should_close and session.connection is None and not session.ended


def test_resume_replays_after_last_rx_and_takes_over() -> None:
    table = AgentSessions()
    old, session = opened(table)
    feed(old, b"".join(data_frame(i, b"in") for i in (1, 2)))
    for i in range(5):
        session.send_data(b"out %d" % i)
    raws = [f.raw for f in out(old)]
    feed(old, frame(FrameType.ACK, Ack(1).encode()))
    old.events_received()

    new = table.connection(0.0)
    feed(new, resume_frame(last_rx=3))
    (event,) = new.events_received()
    assert isinstance(event, SessionReattached)
    assert event.replaced is old and event.last_rx_seq == 3
    frames = out(new)
    assert Resumed.decode(frames[0].payload) == Resumed(SID, 2)
    assert [f.raw for f in frames[1:]] == raws[3:]
    # The old connection gets TAKEN_OVER and no longer detaches the session.
    (error,) = out(old)
    assert Error.decode(error.payload).code == ErrorCode.TAKEN_OVER and old.should_close
    old.connection_lost(1.0)
    assert session.connection is new

    # last_rx_seq 0: everything the client has not acknowledged (SEQ 2..5).
    new.connection_lost(2.0)
    third = table.connection(3.0)
    feed(third, resume_frame(last_rx=0), now=3.0)
    assert [f.raw for f in out(third)[1:]] == raws[1:]
    # Numbering continues.
    session.send_data(b"next")
    assert out(third)[0].seq == 6


def test_disconnect_both_ways() -> None:
    table = AgentSessions()
    conn, session = opened(table)
    feed(conn, frame(FrameType.DISCONNECT, Disconnect(7, "bye").encode()))
    (event,) = conn.events_received()
    assert event == SessionEnded(7, "bye")
    assert session.ended and not table.sessions and conn.should_close

    conn, session = opened(table)
    session.send_data(b"tail")
    session.send_disconnect(3, "exited with status 3")
    session.send_disconnect(4, "ignored")
    frames = out(conn)
    assert [f.type for f in frames] == [FrameType.DATA, FrameType.DISCONNECT]
    assert Disconnect.decode(frames[1].payload) == Disconnect(3, "exited with status 3")
    assert conn.should_close and not table.sessions
    with pytest.raises(LocalProtocolError):
        session.send_data(b"more")


def test_detached_disconnect_is_delivered_on_resume() -> None:
    table = AgentSessions(grace=5)
    conn, session = opened(table)
    conn.connection_lost(1.0)
    session.send_data(b"tail")
    session.send_disconnect(0, "done")
    assert table.sessions == {SID: session}
    conn = table.connection(2.0)
    feed(conn, resume_frame(), now=2.0)
    frames = out(conn)
    assert [f.type for f in frames] == [FrameType.RESUMED, FrameType.DATA, FrameType.DISCONNECT]
    assert conn.should_close and not table.sessions


def test_grace_expiry() -> None:
    table = AgentSessions(grace=5)
    conn, session = opened(table)
    conn.receive_eof(1.0)
    assert kinds(conn.events_received()) == [SessionDetached]
    assert table.get_timer() == 6.0
    assert table.handle_timer(5.9) == []
    assert table.handle_timer(6.0) == [session]
    assert session.ended and session.end_code == ErrorCode.TIMEOUT
    assert not table.sessions and table.get_timer() is None
