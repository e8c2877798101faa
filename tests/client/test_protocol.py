"""The client core fed bytes: handshake, resume, resend, duplicates, ACKs, keepalive, errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clawterm.client.backoff import Backoff
from clawterm.client.events import (
    Accepted,
    ClientState,
    CloseReason,
    CloseTransport,
    DataReceived,
    Event,
    OpenTransport,
    Resumed,
    StateChanged,
)
from clawterm.client.protocol import ClientConfig, ClientConnection, ResumeTicket
from clawterm.constants import Capability, ErrorCode, FrameType, KeepaliveFlag
from clawterm.errors import LocalProtocolError
from clawterm.frame import encode_frame
from clawterm.payloads import Ack, Connect, Error, Resume, WinSize

from .fakes import RESUME_TOKEN, SID, TOKEN, FakeDaemon, frames

NO_JITTER = Backoff(initial=1.0, factor=2.0, maximum=8.0, jitter=0.0)


@pytest.fixture(params=["whole", "bytewise"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Pair:
    """A ClientConnection and a FakeDaemon, with a clock."""

    def __init__(
        self, mode: str = "whole", config: ClientConfig | None = None, **kw: object
    ) -> None:
        self.mode = mode
        self.now = 100.0
        cfg = config or ClientConfig(backoff=NO_JITTER)
        if "resume" not in kw:
            kw.setdefault("token", TOKEN)
        self.client = ClientConnection(
            tenant_id=5, agent_id=7, config=cfg, random=lambda: 0.5, **kw
        )  # type: ignore[arg-type]
        self.daemon = FakeDaemon()
        self.events: list[Event] = []

    def take(self) -> list[Event]:
        self.events += self.client.events_received()
        ev, self.events = self.events, []
        return ev

    def to_daemon(self) -> list:  # type: ignore[type-arg]
        return self.daemon.feed(self.client.data_to_send())

    def to_client(self, data: bytes) -> None:
        if self.mode == "bytewise":
            for i in range(len(data)):
                self.client.receive_data(data[i : i + 1], self.now)
        else:
            self.client.receive_data(data, self.now)

    def open(self) -> list:  # type: ignore[type-arg]
        self.daemon.new_transport()
        self.client.transport_opened(self.now)
        return self.to_daemon()

    def connect(self) -> None:
        assert isinstance(self.take()[0], OpenTransport)
        (hello,) = self.open()
        assert hello.type == FrameType.CONNECT
        self.to_client(self.daemon.accept())
        self.take()

    def tick(self, dt: float) -> None:
        self.now += dt
        self.client.handle_timer(self.now)


def states(events: list[Event]) -> list[ClientState]:
    return [e.state for e in events if isinstance(e, StateChanged)]


def data_of(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataReceived))


def test_connect_handshake(mode: str) -> None:
    p = Pair(mode)
    assert p.take() == [OpenTransport(0)]
    assert p.client.get_timer() is None
    (hello,) = p.open()
    c = Connect.decode(hello.payload)
    assert (hello.session_id, hello.seq) == (0, 0)
    assert c.capabilities == Capability.ACK | Capability.RESUME2 | Capability.WINSIZE == 0x07
    assert (c.tenant_id, c.agent_id, c.token, len(c.nonce), c.size) == (5, 7, TOKEN, 16, 58)
    p.to_client(p.daemon.accept())
    ev = p.take()
    assert ev == [
        Accepted(SID, RESUME_TOKEN, 30.0, 7),
        StateChanged(ClientState.CONNECTED),
    ]
    assert p.client.session_id == SID and p.client.resume_token == RESUME_TOKEN
    assert p.client.transport_open and p.client.keepalive == 30.0


def test_data_both_ways_numbering_and_ack_pacing(mode: str) -> None:
    p = Pair(mode)
    p.connect()
    p.client.send_data(b"hello", p.now)
    p.client.send_data(b"x" * 40000, p.now)  # split at max_frame_payload (16384)
    sent = p.to_daemon()
    assert [(f.type, f.seq, f.session_id) for f in sent] == [
        (FrameType.DATA, s, SID) for s in (1, 2, 3, 4)
    ]
    assert b"".join(p.daemon.received) == b"hello" + b"x" * 40000
    p.to_client(p.daemon.data(b"out1") + p.daemon.data(b"out2"))
    assert data_of(p.take()) == b"out1out2"
    assert p.client.data_to_send() == b""  # ACK waits up to 100 ms
    assert p.client.get_timer() == pytest.approx(p.now + 0.1)
    p.tick(0.1)
    (ack,) = p.to_daemon()
    assert ack.type == FrameType.ACK and Ack.decode(ack.payload).seq == 2 and ack.seq == 4
    # 32 frames force an ACK at once.
    p.to_client(b"".join(p.daemon.data(b"y") for _ in range(32)))
    assert [Ack.decode(f.payload).seq for f in p.to_daemon() if f.type == FrameType.ACK] == [34]
    # The agent's ACK releases the send buffer.
    assert p.client.unacked_bytes > 0
    p.to_client(p.daemon.ack())
    assert p.client.unacked_bytes == 0


def test_duplicates_dropped_and_empty_data_delivered(mode: str) -> None:
    p = Pair(mode)
    p.connect()
    one = p.daemon.data(b"a")
    empty = p.daemon.data(b"")
    p.to_client(one + one + empty + one)
    ev = [e for e in p.take() if isinstance(e, DataReceived)]
    assert [(e.data, e.seq) for e in ev] == [(b"a", 1), (b"", 2)]


def test_reconnect_resume_resend_and_replay(mode: str) -> None:
    p = Pair(mode)
    p.connect()
    for i in range(5):
        p.client.send_data(bytes([65 + i]), p.now)
    p.to_daemon()
    # The daemon only got 1..3 before the drop; the agent acknowledged 1.
    p.daemon.agent_rx.last_rx = 3
    p.daemon.received = p.daemon.received[:3]
    p.to_client(p.daemon.ack(1))
    p.to_client(p.daemon.data(b"o1") + p.daemon.data(b"o2"))
    p.take()
    p.client.receive_eof(p.now, "reset by peer")
    assert p.take() == [StateChanged(ClientState.RECONNECTING, None, None, "reset by peer")]
    assert p.client.get_timer() == p.now + 1.0
    # Typed while down: queued, not numbered yet.
    p.client.send_data(b"F", p.now)
    assert p.client.unsent_bytes == 1
    p.tick(0.99)
    assert p.take() == []
    p.tick(0.01)
    assert p.take() == [OpenTransport(1)]
    (resume,) = p.open()
    r = Resume.decode(resume.payload)
    assert (resume.type, resume.session_id) == (FrameType.RESUME, SID)
    assert (r.session_id, r.last_rx_seq, r.resume_token) == (SID, 2, RESUME_TOKEN)
    # RESUMED with the daemon's last_rx 3, then a replay of the agent's 1..3 (2 already had).
    p.daemon.data(b"o3")
    p.to_client(p.daemon.resumed() + p.daemon.replay(0))
    ev = p.take()
    assert Resumed(SID, 3, False, 2) in ev and states(ev) == [ClientState.CONNECTED]
    assert data_of(ev) == b"o3"
    after = p.to_daemon()
    assert [(f.type, f.seq) for f in after if f.type == FrameType.DATA] == [
        (FrameType.DATA, 4),
        (FrameType.DATA, 5),
        (FrameType.DATA, 6),
    ]
    assert b"".join(p.daemon.received) == b"ABCDEF"
    assert p.client.unsent_bytes == 0


def test_gap_is_reported_not_an_error() -> None:
    p = Pair()
    p.connect()
    p.client.receive_eof(p.now)
    p.tick(1.0)
    p.take()
    p.open()
    p.to_client(p.daemon.resumed(gap=True))
    ev = p.take()
    assert Resumed(SID, 0, True, 0) in ev
    assert p.client.state is ClientState.CONNECTED and p.client.gaps == 1


def test_nack_resends_after_its_seq() -> None:
    p = Pair()
    p.connect()
    for i in range(4):
        p.client.send_data(bytes([i]), p.now)
    p.to_daemon()
    p.to_client(p.daemon.nack(2))
    assert [f.seq for f in p.to_daemon() if f.type == FrameType.DATA] == [3, 4]


def test_empty_legacy_ack_releases_oldest() -> None:
    p = Pair()
    p.connect()
    for i in range(3):
        p.client.send_data(bytes([i]), p.now)
    p.to_daemon()
    p.to_client(p.daemon.frame(FrameType.ACK, b""))
    assert p.client.unacked_bytes == 2 * 16
    p.to_client(p.daemon.ack(99))  # ACK for frames never sent: ignored
    assert p.client.unacked_bytes == 2 * 16


def test_keepalive_ping_pong_and_idle() -> None:
    p = Pair()
    p.connect()
    p.to_client(p.daemon.ping())
    (pong,) = p.to_daemon()
    assert pong.type == FrameType.KEEPALIVE and pong.flags == KeepaliveFlag.PONG
    p.to_client(p.daemon.pong() + p.daemon.frame(FrameType.KEEPALIVE))
    assert p.client.data_to_send() == b""  # never answer anything but PING
    assert p.client.get_timer() == p.now + 30.0
    p.tick(30.0)
    (ka,) = p.to_daemon()
    assert ka.type == FrameType.KEEPALIVE and ka.flags == KeepaliveFlag.PING
    # Sending resets the idle clock.
    p.tick(10.0)
    p.client.send_data(b"z", p.now)
    p.to_daemon()
    p.tick(29.0)
    assert p.client.data_to_send() == b""


def test_keepalive_death_reconnects() -> None:
    p = Pair()
    p.connect()
    for _ in range(2):
        p.tick(30.0)
        p.to_daemon()  # our PINGs go out, nothing comes back
    assert p.client.transport_open
    p.tick(30.0)
    ev = p.take()
    assert isinstance(ev[0], CloseTransport) and ev[0].abort
    assert states(ev) == [ClientState.RECONNECTING]
    assert "nothing received for 90 s" in ev[-1].message  # type: ignore[attr-defined]


def test_reading_paused_suspends_liveness() -> None:
    p = Pair()
    p.connect()
    p.client.set_reading_paused(True, p.now)
    for _ in range(5):
        p.tick(30.0)
        p.to_daemon()
    assert p.client.transport_open
    p.client.set_reading_paused(False, p.now)
    assert p.client.get_timer() == p.now + 30.0


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (ErrorCode.TAKEN_OVER, CloseReason.TAKEN_OVER),
        (ErrorCode.NO_SUCH_SESSION, CloseReason.NO_SUCH_SESSION),
        (ErrorCode.AUTH_FAILED, CloseReason.AUTH_FAILED),
        (ErrorCode.AGENT_GONE, CloseReason.REFUSED),
        (999, CloseReason.REFUSED),
    ],
)
def test_terminal_errors_stop_retrying(code: int, reason: CloseReason) -> None:
    p = Pair()
    p.connect()
    p.to_client(p.daemon.error(code, "bye"))
    ev = p.take()
    assert isinstance(ev[0], CloseTransport) and not ev[0].abort and ev[0].data == b""
    assert ev[-1] == StateChanged(ClientState.CLOSED, reason, code, ev[-1].message)  # type: ignore[attr-defined]
    assert "bye" in p.client.close_message
    assert p.client.get_timer() is None
    p.tick(1000.0)
    assert p.take() == []
    with pytest.raises(LocalProtocolError):
        p.client.send_data(b"x", p.now)


@pytest.mark.parametrize("code", [ErrorCode.SHUTTING_DOWN, ErrorCode.TIMEOUT, ErrorCode.LIMIT])
def test_retryable_errors_reconnect(code: int) -> None:
    p = Pair()
    p.connect()
    p.to_client(p.daemon.error(code))
    assert states(p.take()) == [ClientState.RECONNECTING]
    p.tick(1.0)
    assert p.take() == [OpenTransport(1)]


def test_taken_over_during_resume_ends() -> None:
    p = Pair()
    p.connect()
    p.client.receive_eof(p.now)
    p.tick(1.0)
    p.open()
    p.to_client(p.daemon.error(ErrorCode.TAKEN_OVER))
    assert p.client.state is ClientState.CLOSED
    assert p.client.close_reason is CloseReason.TAKEN_OVER


def test_refused_connect_is_not_retried() -> None:
    p = Pair()
    p.take()
    p.open()
    p.to_client(p.daemon.error(ErrorCode.SHUTTING_DOWN))
    assert p.client.close_reason is CloseReason.REFUSED
    p2 = Pair()
    p2.take()
    p2.client.receive_eof(p2.now, "connection refused")
    assert p2.take() == [
        StateChanged(ClientState.CLOSED, CloseReason.CONNECT_FAILED, None, "connection refused")
    ]


def test_disconnect_from_daemon_exposes_code() -> None:
    p = Pair()
    p.connect()
    p.to_client(p.daemon.data(b"last words") + p.daemon.disconnect(3, "exit status 3"))
    ev = p.take()
    assert data_of(ev) == b"last words"
    assert ev[-1] == StateChanged(ClientState.CLOSED, CloseReason.DISCONNECTED, 3, "exit status 3")
    assert p.client.close_code == 3


def test_backoff_schedule_and_give_up() -> None:
    cfg = ClientConfig(
        backoff=Backoff(initial=1.0, factor=2.0, maximum=8.0, jitter=0.0, give_up_after=20.0)
    )
    p = Pair(config=cfg)
    p.connect()
    p.client.receive_eof(p.now)
    start = p.now
    delays = []
    while p.client.state is ClientState.RECONNECTING:
        t = p.client.get_timer()
        assert t is not None
        delays.append(t - p.now)
        p.now = t
        p.client.handle_timer(p.now)
        p.take()
        p.client.receive_eof(p.now, "refused")
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert p.client.close_reason is CloseReason.GAVE_UP and p.now - start == 23.0


def test_backoff_jitter_and_validation() -> None:
    b = Backoff(initial=0.5, factor=3.0, maximum=10.0, jitter=0.5)
    assert b.delay(0, 0.0) == 0.5 and b.delay(0, 0.999) == pytest.approx(0.25025)
    assert b.delay(2, 0.0) == 4.5 and b.delay(50, 0.0) == 10.0 and b.delay(10**6, 1.0) == 5.0
    for bad in (
        {"jitter": 2.0},
        {"factor": 0.5},
        {"initial": -1.0},
        {"maximum": 0.1},
        {"give_up_after": -1.0},
    ):
        with pytest.raises(ValueError):
            Backoff(**bad)  # type: ignore[arg-type]


def test_reconnect_attempts_reset_after_resumed() -> None:
    p = Pair()
    p.connect()
    for _ in range(2):
        p.client.receive_eof(p.now)
        p.tick(p.client.get_timer() - p.now)  # type: ignore[operator]
        p.take()
        p.open()
    assert p.client.get_timer() == p.now + 10.0  # handshake timeout
    p.to_client(p.daemon.resumed())
    p.client.receive_eof(p.now)
    assert p.client.get_timer() == p.now + 1.0


def test_handshake_timeout_drops_transport() -> None:
    p = Pair(resume=ResumeTicket(SID, RESUME_TOKEN, 0))
    p.take()
    p.open()
    p.tick(10.0)
    ev = p.take()
    assert isinstance(ev[0], CloseTransport) and ev[0].abort
    assert p.client.state is ClientState.RECONNECTING


def test_fresh_resume_numbers_above_daemon_and_wants_everything(mode: str) -> None:
    p = Pair(mode, resume=ResumeTicket(SID, RESUME_TOKEN, 0))
    p.take()
    p.client.send_data(b"typed early", p.now)
    (resume,) = p.open()
    assert Resume.decode(resume.payload).last_rx_seq == 0 and resume.seq == 0
    p.daemon.agent_rx.last_rx = 57  # another device sent 57 frames
    for i in range(3):
        p.daemon.data(bytes([48 + i]))
    p.to_client(p.daemon.resumed() + p.daemon.replay(0))
    ev = p.take()
    assert data_of(ev) == b"012"
    sent = p.to_daemon()
    assert [f.seq for f in sent if f.type == FrameType.DATA] == [58]
    p.tick(0.1)
    assert [Ack.decode(f.payload).seq for f in p.to_daemon()] == [3]
    assert p.daemon.received == [b"typed early"]


def test_backpressure_limit() -> None:
    p = Pair(config=ClientConfig(send_limit=1000, max_frame_payload=100))
    p.connect()
    p.client.send_data(b"a" * 800, p.now)  # 8 frames of 115 encoded bytes
    assert not p.client.send_blocked
    p.client.send_data(b"a" * 100, p.now)
    assert p.client.send_blocked
    p.to_daemon()
    p.to_client(p.daemon.ack())
    assert not p.client.send_blocked and p.client.unacked_bytes == 0


def test_server_without_ack_capability_counts_written_as_delivered() -> None:
    p = Pair()
    p.take()
    p.open()
    p.to_client(p.daemon.frame(FrameType.ACCEPT, bytes.fromhex("01020304") + b"\x01\x00"))
    assert p.client.resume_token is None
    p.client.send_data(b"q" * 10, p.now)
    assert p.client.unacked_bytes == 0
    p.client.receive_eof(p.now)
    assert p.client.close_reason is CloseReason.NOT_RESUMABLE


def test_winsize_on_open_and_after_resume() -> None:
    p = Pair()
    p.take()
    p.client.send_winsize(24, 80, now=p.now)
    p.open()
    p.to_client(p.daemon.accept())
    (ws,) = p.to_daemon()
    assert ws.type == FrameType.WINSIZE and WinSize.decode(ws.payload) == WinSize(24, 80)
    p.client.send_winsize(50, 132, 800, 600, now=p.now)
    (ws,) = p.to_daemon()
    assert WinSize.decode(ws.payload) == WinSize(50, 132, 800, 600)
    p.client.receive_eof(p.now)
    p.tick(1.0)
    p.open()
    p.to_client(p.daemon.resumed())
    assert [WinSize.decode(f.payload) for f in p.to_daemon()] == [WinSize(50, 132, 800, 600)]
    with pytest.raises(LocalProtocolError):
        p.client.send_winsize(70000, 1, now=p.now)


def test_suspend_and_disconnect() -> None:
    p = Pair()
    p.connect()
    p.client.send_data(b"bye", p.now)
    p.client.send_suspend(p.now)
    ev = p.take()
    assert isinstance(ev[0], CloseTransport) and not ev[0].abort
    assert [f.type for f in frames(ev[0].data)] == [FrameType.DATA, FrameType.SUSPEND]
    assert ev[-1] == StateChanged(ClientState.SUSPENDED, CloseReason.SUSPENDED)
    p.client.send_suspend(p.now)  # idempotent
    with pytest.raises(LocalProtocolError):
        p.client.send_data(b"x", p.now)

    q = Pair()
    q.connect()
    q.client.send_disconnect(0, "done", now=q.now)
    ev = q.take()
    (f,) = frames(ev[0].data)  # type: ignore[attr-defined]
    assert f.type == FrameType.DISCONNECT and f.payload == b"\x00\x00done"
    assert q.client.close_reason is CloseReason.CLOSED
    with pytest.raises(LocalProtocolError):
        q.client.send_suspend(q.now)


def test_suspend_while_reconnecting_and_fail() -> None:
    p = Pair()
    p.connect()
    p.client.receive_eof(p.now)
    p.client.send_suspend(p.now)
    assert p.client.state is ClientState.SUSPENDED and p.client.get_timer() is None
    q = Pair()
    q.take()
    q.client.fail(CloseReason.UNTRUSTED, "certificate changed", q.now)
    ev = q.take()
    assert isinstance(ev[0], CloseTransport) and ev[0].abort
    assert q.client.close_reason is CloseReason.UNTRUSTED


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (b"\x00" * 20, ErrorCode.BAD_FRAME),
        (encode_frame(FrameType.DATA, SID, 1, b"x")[:-1] + b"\x00", ErrorCode.BAD_CRC),
        (encode_frame(FrameType.ACK, SID, 0, b"\x01"), ErrorCode.BAD_PAYLOAD),
        (encode_frame(FrameType.DATA, 77, 1, b"x"), ErrorCode.PROTOCOL),
        (encode_frame(FrameType.ACCEPT, SID, 0, bytes(24)), ErrorCode.PROTOCOL),
    ],
)
def test_protocol_violations_answer_error_and_stop(bad: bytes, code: int) -> None:
    p = Pair()
    p.connect()
    p.to_client(bad)
    ev = p.take()
    assert isinstance(ev[0], CloseTransport)
    (err,) = frames(ev[0].data)
    assert err.type == FrameType.ERROR and Error.decode(err.payload).code == code
    assert p.client.close_reason is CloseReason.PROTOCOL_ERROR


def test_data_before_resumed_is_a_violation() -> None:
    p = Pair(resume=ResumeTicket(SID, RESUME_TOKEN, 0))
    p.take()
    p.open()
    p.to_client(p.daemon.data(b"too early"))
    assert p.client.close_reason is CloseReason.PROTOCOL_ERROR


def test_unknown_and_client_only_types_are_ignored() -> None:
    p = Pair()
    p.connect()
    p.to_client(p.daemon.frame(0x77, b"future") + p.daemon.frame(FrameType.SUSPEND))
    assert p.client.ignored_frames == 2 and p.client.state is ClientState.CONNECTED


def test_stale_input_and_misuse() -> None:
    p = Pair()
    p.take()
    p.client.receive_data(b"junk", p.now)  # no transport yet: ignored
    p.client.receive_eof(p.now)  # ends the first attempt
    p.client.receive_eof(p.now)  # nothing more to end
    with pytest.raises(LocalProtocolError):
        p.client.transport_opened(p.now)
    with pytest.raises(LocalProtocolError):
        ClientConnection()
    with pytest.raises(LocalProtocolError):
        ClientConnection(token=b"short")
    with pytest.raises(ValueError):
        ResumeTicket(0, RESUME_TOKEN)
    with pytest.raises(ValueError):
        ClientConfig(max_frame_payload=0)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["c2a", "a2c", "cut", "ack", "nack"]), st.integers(0, 6)),
        max_size=60,
    )
)
def test_exactly_once_across_cuts(script: list[tuple[str, int]]) -> None:
    """Both directions arrive complete and in order whatever is cut where."""
    p = Pair(config=ClientConfig(backoff=Backoff(initial=0.1, jitter=0.0), max_frame_payload=3))
    p.connect()
    sent_c, sent_a, got_c = bytearray(), bytearray(), bytearray()

    def reconnect() -> None:
        p.client.receive_eof(p.now)
        got_c.extend(data_of(p.take()))
        p.tick(0.1)
        p.take()
        p.open()
        p.client.receive_data(p.daemon.resumed() + p.daemon.replay(0), p.now)
        got_c.extend(data_of(p.take()))
        p.daemon.feed(p.client.data_to_send())

    for n, (op, k) in enumerate(script, 1):
        chunk = bytes([n % 251]) * (k + 1)
        if op == "c2a":
            sent_c += chunk
            p.client.send_data(chunk, p.now)
            out = frames(p.client.data_to_send())
            # An ordered transport that breaks delivers a prefix, then nothing.
            p.daemon.feed(b"".join(bytes(f.raw) for f in out[:k]))
            if k < len(out):
                reconnect()
        elif op == "a2c":
            sent_a += chunk
            out = frames(p.daemon.data(chunk))
            for f in out[:k]:
                p.client.receive_data(f.raw, p.now)
            got_c.extend(data_of(p.take()))
            if k < len(out):
                reconnect()
        elif op == "ack":
            p.tick(0.2)
            p.daemon.feed(p.client.data_to_send())
            p.client.receive_data(p.daemon.ack(), p.now)
        elif op == "nack":
            p.client.receive_data(p.daemon.nack(p.daemon.agent_rx.last_rx), p.now)
            p.daemon.feed(p.client.data_to_send())
        else:
            reconnect()
    reconnect()  # a last clean reconnect delivers everything still held
    assert bytes(got_c) == bytes(sent_a)
    assert b"".join(p.daemon.received) == bytes(sent_c)
