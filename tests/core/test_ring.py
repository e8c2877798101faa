"""The replay ring (SPEC §7)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from clawterm.constants import FrameType
from clawterm.frame import encode_frame
from clawterm.ring import ReplayRing


def frame(seq: int, size: int = 10) -> bytes:
    return encode_frame(FrameType.DATA, 1, seq, b"x" * (size - 15))


def test_unacked_never_evicted_in_block_mode() -> None:
    ring = ReplayRing(capacity=50)
    for s in range(1, 8):
        ring.append(s, frame(s, 20))
    assert len(ring) == 7 and ring.full and ring.unacked_bytes == 140
    assert list(ring.frames_after(0)) == [frame(s, 20) for s in range(1, 8)]
    assert not ring.gap(0)


def test_acked_frames_are_scrollback_until_space_is_needed() -> None:
    ring = ReplayRing(capacity=60)
    for s in range(1, 4):
        ring.append(s, frame(s, 20))
    ring.ack(3)
    assert not ring.full and len(ring) == 3 and ring.unacked_bytes == 0
    assert len(list(ring.frames_after(0))) == 3  # full context for a new device
    ring.append(4, frame(4, 20))  # over capacity: oldest scrollback goes
    assert [s for s in range(5) if frame(s, 20) in list(ring.frames_after(0))] == [2, 3, 4]
    assert ring.gap(0) and not ring.gap(1) and ring.evicted_upto == 1


def test_drop_oldest_evicts_unacked_and_reports_gap() -> None:
    ring = ReplayRing(capacity=50, drop_oldest=True)
    for s in range(1, 8):
        ring.append(s, frame(s, 20))
    assert not ring.full and ring.size <= 50
    assert ring.gap(3) and not ring.gap(5)
    assert list(ring.frames_after(5)) == [frame(6, 20), frame(7, 20)]


def test_drop_oldest_keeps_newest_frame_even_if_oversized() -> None:
    ring = ReplayRing(capacity=10, drop_oldest=True)
    ring.append(1, frame(1, 40))
    ring.append(2, frame(2, 40))
    assert list(ring.frames_after(0)) == [frame(2, 40)]


def test_legacy_ack_oldest() -> None:
    ring = ReplayRing()
    assert ring.ack_oldest() is None
    ring.append(4, frame(4))
    ring.append(5, frame(5))
    assert ring.first_unacked == 4
    assert ring.ack_oldest() == 4 and ring.acked == 4 and ring.first_unacked == 5


def test_frames_after_skips_delivered_and_clear() -> None:
    ring = ReplayRing()
    for s in range(1, 6):
        ring.append(s, frame(s))
    ring.ack(2)
    assert list(ring.frames_after(3)) == [frame(4), frame(5)]
    ring.clear()
    assert len(ring) == 0 and ring.size == 0


@given(st.lists(st.tuples(st.integers(15, 80), st.integers(0, 3)), max_size=80), st.booleans())
def test_bounded_and_ordered(ops: list[tuple[int, int]], drop: bool) -> None:
    ring = ReplayRing(capacity=300, drop_oldest=drop)
    for seq, (size, acks) in enumerate(ops, start=1):
        ring.append(seq, frame(seq, size))
        if acks:
            ring.ack(max(1, seq - acks))
        # Acknowledged scrollback never pushes the ring over capacity.
        assert ring.size <= 300 or ring.size == ring.unacked_bytes or len(ring) == 1
        if not drop:
            # Nothing unacknowledged is ever lost in block mode.
            assert ring.first_unacked in (None, ring.acked + 1)
    got = list(ring.frames_after(0))
    assert got == sorted(got, key=lambda r: int.from_bytes(r[5:9], "big"))


# -- runs: several frames kept as one entry (the relay's fast path) ----------


def run_of(first: int, last: int, size: int = 20) -> bytes:
    return b"".join(frame(s, size) for s in range(first, last + 1))


def test_a_run_is_one_entry_split_only_for_replay() -> None:
    ring = ReplayRing()
    ring.append(3, run_of(1, 3))
    ring.append(4, frame(4, 20))
    assert len(ring) == 2 and ring.last_seq == 4
    # Acknowledged part way: the run stays unacknowledged as a whole.
    ring.ack(2)
    assert ring.acked == 2 and ring.unacked_bytes == 80 and ring.first_unacked == 3
    assert list(ring.frames_after(2)) == [frame(3, 20), frame(4, 20)]
    assert list(ring.frames_after(0)) == [frame(s, 20) for s in range(1, 5)]
    ring.ack(3)
    assert ring.unacked_bytes == 20 and ring.first_unacked == 4
    assert list(ring.frames_after(1)) == [frame(s, 20) for s in range(2, 5)]


def test_legacy_ack_oldest_steps_through_a_run() -> None:
    ring = ReplayRing()
    ring.append(3, run_of(1, 3))
    assert [ring.ack_oldest() for _ in range(4)] == [1, 2, 3, None]
    assert ring.unacked_bytes == 0 and ring.acked == 3


def test_evicting_a_run_reports_the_gap_up_to_its_last_frame() -> None:
    ring = ReplayRing(capacity=70)
    ring.append(3, run_of(1, 3))
    ring.ack(3)
    ring.append(4, frame(4, 20))
    ring.append(5, frame(5, 20))  # 100 bytes: the scrollback run goes
    assert ring.evicted_upto == 3 and ring.gap(2) and not ring.gap(3)
    assert list(ring.frames_after(0)) == [frame(4, 20), frame(5, 20)]


@given(st.lists(st.tuples(st.integers(1, 4), st.integers(15, 40), st.integers(0, 5)), max_size=40))
def test_runs_replay_exactly_what_is_unacknowledged(ops: list[tuple[int, int, int]]) -> None:
    """Block mode, any mix of runs and acks: replay after the ACKed SEQ is every later frame."""
    ring = ReplayRing(capacity=400)
    frames: dict[int, bytes] = {}
    seq = 0
    for n, size, back in ops:
        first, seq = seq + 1, seq + n
        for s in range(first, seq + 1):
            frames[s] = frame(s, size)
        ring.append(seq, b"".join(frames[s] for s in range(first, seq + 1)))
        if back:
            ring.ack(max(ring.acked, seq - back))
        assert ring.first_unacked in (None, ring.acked + 1)
        assert list(ring.frames_after(ring.acked)) == [
            frames[s] for s in range(ring.acked + 1, seq + 1)
        ]


def test_drop_oldest_keeps_a_run_frame_by_frame() -> None:
    """A run bigger than the ring still loses only its oldest frames."""
    ring = ReplayRing(capacity=60, drop_oldest=True)
    ring.append(5, run_of(1, 5))
    assert len(ring) == 3 and ring.size == 60
    assert list(ring.frames_after(0)) == [frame(s, 20) for s in (3, 4, 5)]
    assert ring.evicted_upto == 2 and ring.gap(0) and not ring.gap(2)


def test_legacy_ack_oldest_after_a_partial_u32_ack_of_a_run() -> None:
    ring = ReplayRing()
    ring.append(4, run_of(1, 4))
    ring.ack(2)
    assert ring.first_unacked == 3
    assert ring.ack_oldest() == 3 and ring.acked == 3
    assert ring.unacked_bytes == 20 and list(ring.frames_after(0)) == [
        frame(s, 20) for s in range(1, 5)
    ]
    assert ring.ack_oldest() == 4 and ring.ack_oldest() is None
