"""SendBuffer and ReceiveState: two peers back to back, in memory."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from clawterm.frame import FrameDecoder
from clawterm.sequencing import ReceiveState, SendBuffer
from clawterm.serial import SEQ_MAX


def test_numbering_starts_at_one_and_keeps_frames() -> None:
    buf = SendBuffer(limit=100)
    raws = [buf.encode_data(9, b"x" * 10) for _ in range(3)]
    assert [f.seq for r in raws for f in FrameDecoder().feed(r)] == [1, 2, 3]
    assert len(buf) == 3 and buf.unacked_bytes == 75 and not buf.full
    buf.encode_data(9, b"y" * 20)
    assert buf.full


def test_ack_releases_cumulatively() -> None:
    buf = SendBuffer()
    for _ in range(5):
        buf.encode_data(1, b"a")
    assert buf.ack(3) == 3 * 16
    assert len(buf) == 2 and buf.acked == 3
    assert buf.ack(2) == 0 and buf.acked == 3  # an older ACK changes nothing
    assert buf.resend_after(0) == buf.resend_after(3)


def test_resumed_resends_without_releasing() -> None:
    buf = SendBuffer()
    raws = [buf.encode_data(1, bytes([i])) for i in range(5)]
    buf.ack(1)
    # The daemon got up to 3; the far peer acknowledged only 1.
    assert buf.resumed(3) == raws[3:]
    assert len(buf) == 4  # frames 2..5 still held until the agent ACKs


def test_new_device_continues_numbering_from_peer() -> None:
    buf = SendBuffer()
    assert buf.resumed(57) == []
    (frame,) = FrameDecoder().feed(buf.encode_data(1, b"z"))
    assert frame.seq == 58


def test_wraparound_skips_zero() -> None:
    buf = SendBuffer()
    buf.last_seq = SEQ_MAX - 1
    seqs = [next(iter(FrameDecoder().feed(buf.encode_data(1, b"")))).seq for _ in range(3)]
    assert seqs == [SEQ_MAX, 1, 2]
    buf.ack(1)
    assert [next(iter(FrameDecoder().feed(r))).seq for r in buf.resend_after(0)] == [2]


def test_receive_drops_duplicates() -> None:
    rx = ReceiveState()
    assert rx.receive(1, 10, 0.0)
    assert rx.receive(2, 10, 0.0)
    assert not rx.receive(2, 10, 0.0)
    assert not rx.receive(1, 10, 0.0)
    assert rx.receive(5, 10, 0.0)  # gaps are allowed
    assert rx.last_rx == 5


def test_ack_pacing_by_time_frames_and_bytes() -> None:
    rx = ReceiveState(ack_delay=0.1, ack_frames=4, ack_bytes=1000)
    assert not rx.ack_due(0.0) and rx.get_timer() is None
    rx.receive(1, 10, 1.0)
    assert rx.get_timer() == 1.1
    assert not rx.ack_due(1.05) and rx.ack_due(1.1)
    assert rx.take_ack() == 1 and not rx.ack_due(5.0)
    for s in range(2, 6):
        rx.receive(s, 10, 2.0)
    assert rx.ack_due(2.0)  # four frames
    rx.take_ack()
    rx.receive(6, 1000, 3.0)
    assert rx.ack_due(3.0)  # 1000 bytes


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 20)), max_size=60))
def test_peers_back_to_back_deliver_exactly_once(rounds: list[tuple[int, int]]) -> None:
    """Resends after stale last_rx reports and cut transports never deliver twice or skip."""
    tx, rx = SendBuffer(), ReceiveState()
    delivered: list[int] = []
    for i in range(20):
        tx.encode_data(1, bytes([i]))
    decoder = FrameDecoder()

    def deliver(raws: list[bytes]) -> None:
        for raw in raws:
            for f in decoder.feed(raw):
                if rx.receive(f.seq, len(f.payload), 0.0):
                    delivered.append(f.payload[0])

    for lag, cut in rounds:
        # The peer reports a possibly stale last_rx; the transport drops after `cut` frames.
        reported = max(0, rx.last_rx - lag)
        deliver(tx.resumed(reported)[:cut])
        if cut % 3 == 0:
            tx.ack(rx.take_ack())
    deliver(tx.resumed(rx.last_rx))
    assert delivered == list(range(20))


def test_ack_beyond_last_sent_is_clamped() -> None:
    buf = SendBuffer()
    assert buf.first_seq is None
    buf.encode_data(1, b"a")
    buf.encode_data(1, b"b")
    assert buf.first_seq == 1
    buf.ack(1000)
    assert buf.acked == 2 and len(buf) == 0 and buf.first_seq is None
