"""Frame codec: properties (hypothesis) and edge cases."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clawterm.constants import OVERHEAD, ErrorCode, FrameType
from clawterm.errors import BadCrc, BadFrame, LocalProtocolError, RemoteProtocolError, TooLarge
from clawterm.frame import Frame, FrameDecoder, encode_frame, frame_with_flags

u32 = st.integers(0, 0xFFFFFFFF)
u8 = st.integers(0, 0xFF)
frames_st = st.tuples(u8, u32, u32, u8, st.binary(max_size=300))


def collect(decoder: FrameDecoder, chunks: list[bytes]) -> list[tuple[int, int, int, int, bytes]]:
    out = []
    for chunk in chunks:
        for f in decoder.feed(chunk):
            out.append((f.type, f.session_id, f.seq, f.flags, bytes(f.payload)))
    return out


@given(frames_st)
def test_round_trip(fields: tuple[int, int, int, int, bytes]) -> None:
    typ, sid, seq, flags, payload = fields
    raw = encode_frame(typ, sid, seq, payload, flags)
    assert len(raw) == OVERHEAD + len(payload)
    assert collect(FrameDecoder(), [raw]) == [(typ, sid, seq, flags, payload)]


@given(st.lists(frames_st, max_size=12), st.data())
def test_any_chunking_decodes_identically(
    frames: list[tuple[int, int, int, int, bytes]], data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(t, s, q, p, f) for t, s, q, f, p in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    decoder = FrameDecoder()
    assert collect(decoder, chunks) == [(t, s, q, f, p) for t, s, q, f, p in frames]
    assert decoder.buffered == 0


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=80), max_size=10), st.integers(0, 100))
def test_garbage_only_raises_protocol_errors_and_stays_bounded(
    chunks: list[bytes], max_payload: int
) -> None:
    decoder = FrameDecoder(max_payload)
    try:
        for chunk in chunks:
            for _ in decoder.feed(chunk):
                pass
            assert decoder.buffered < max_payload + OVERHEAD
    except RemoteProtocolError as exc:
        assert exc.code in (ErrorCode.BAD_FRAME, ErrorCode.BAD_CRC, ErrorCode.TOO_LARGE)


@settings(max_examples=200)
@given(st.binary(min_size=1, max_size=40), st.integers(0, 39), st.integers(1, 255))
def test_any_corruption_is_detected(payload: bytes, where: int, xor: int) -> None:
    raw = bytearray(encode_frame(FrameType.DATA, 7, 9, payload))
    raw[where % len(raw)] ^= xor
    decoder = FrameDecoder()
    # A change in LEN may make the frame incomplete rather than wrong.
    try:
        got = list(decoder.feed(bytes(raw)))
    except (BadCrc, BadFrame, TooLarge):
        return
    assert got == [] and decoder.buffered == len(raw)


def test_payload_is_not_copied_in_fast_path() -> None:
    raw = encode_frame(FrameType.DATA, 1, 1, b"x" * 1000)
    (frame,) = FrameDecoder().feed(raw)
    assert isinstance(frame.payload, memoryview)
    assert frame.payload.obj is raw


def test_bad_flag_reported_on_first_byte() -> None:
    decoder = FrameDecoder()
    with pytest.raises(BadFrame):
        list(decoder.feed(b"\x00"))


def test_too_large_reported_on_header_alone() -> None:
    decoder = FrameDecoder(max_payload=10)
    head = encode_frame(FrameType.DATA, 1, 1, b"x" * 11)[:13]
    with pytest.raises(TooLarge) as info:
        list(decoder.feed(head))
    assert "11 bytes" in info.value.message


def test_split_header_too_large() -> None:
    decoder = FrameDecoder(max_payload=10)
    head = encode_frame(FrameType.DATA, 1, 1, b"x" * 11)[:13]
    list(decoder.feed(head[:5]))
    with pytest.raises(TooLarge):
        list(decoder.feed(head[5:]))


def test_frames_before_error_are_yielded_and_decoder_is_spent() -> None:
    good = encode_frame(FrameType.DATA, 1, 1, b"ok")
    decoder = FrameDecoder()
    seen: list[Frame] = []
    with pytest.raises(BadFrame):
        for f in decoder.feed(good + b"\x00" * 20):
            seen.append(f)
    assert len(seen) == 1
    with pytest.raises(BadFrame):
        list(decoder.feed(good))


def test_bad_crc_in_slow_path() -> None:
    raw = bytearray(encode_frame(FrameType.DATA, 1, 1, b"hello"))
    raw[-1] ^= 1
    decoder = FrameDecoder()
    list(decoder.feed(bytes(raw[:7])))
    with pytest.raises(BadCrc):
        list(decoder.feed(bytes(raw[7:])))


def test_large_frame_in_small_pieces_copies_linearly() -> None:
    raw = encode_frame(FrameType.DATA, 1, 1, b"z" * 65535)
    decoder = FrameDecoder()
    got = []
    for i in range(0, len(raw), 1000):
        got.extend(decoder.feed(raw[i : i + 1000]))
        assert decoder.buffered < 65535 + OVERHEAD
    assert len(got) == 1 and got[0].payload == b"z" * 65535


def test_encode_rejects_out_of_range() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(FrameType.DATA, 1 << 32, 1)
    with pytest.raises(LocalProtocolError):
        encode_frame(FrameType.DATA, 1, 1, b"x" * 65536)
    with pytest.raises(LocalProtocolError):
        FrameDecoder(max_payload=70000)


def test_frame_with_flags_recomputes_crc() -> None:
    raw = encode_frame(FrameType.DATA, 5, 6, b"abc")
    replay = frame_with_flags(raw, 0x02)
    (frame,) = FrameDecoder().feed(replay)
    assert frame.flags == 0x02 and frame.payload == b"abc" and frame.seq == 6


def test_repr_names_type() -> None:
    (frame,) = FrameDecoder().feed(encode_frame(FrameType.ACK, 1, 0, b"\0\0\0\1"))
    assert "ACK" in repr(frame)
    (frame,) = FrameDecoder().feed(encode_frame(0x99, 1, 0))
    assert "0x99" in repr(frame)


def test_error_classes_carry_codes() -> None:
    from clawterm import errors

    assert errors.BadPayload("x").code == ErrorCode.BAD_PAYLOAD
    assert errors.UnsupportedVersion("x").code == ErrorCode.UNSUPPORTED_VERSION
    assert errors.ProtocolViolation("x").code == ErrorCode.PROTOCOL
    e = errors.PeerError(ErrorCode.TAKEN_OVER, "moved")
    assert e.code == 11 and "TAKEN_OVER" in str(e)
    assert "code 999" in str(errors.PeerError(999, ""))


def test_single_frame_chunk_is_the_chunk_itself() -> None:
    # Sparse traffic: one whole frame per read; raw views the chunk, unsliced.
    raw = encode_frame(FrameType.ACK, 3, 0, (9).to_bytes(4, "big"))
    frames = list(FrameDecoder().feed(raw))
    assert len(frames) == 1
    frame = frames[0]
    assert isinstance(frame.raw, memoryview) and frame.raw.obj is raw
    assert bytes(frame.raw) == raw and frame.payload == (9).to_bytes(4, "big")


@pytest.mark.parametrize("cut", range(1, OVERHEAD + 4))
def test_one_frame_split_across_two_reads(cut: int) -> None:
    raw = encode_frame(FrameType.ACK, 3, 0, (9).to_bytes(4, "big"))
    decoder = FrameDecoder()
    assert list(decoder.feed(raw[:cut])) == []
    (frame,) = decoder.feed(raw[cut:])
    assert bytes(frame.raw) == raw and decoder.buffered == 0
    (again,) = decoder.feed(raw)  # the next read: one whole frame again
    assert bytes(again.raw) == raw


def test_bad_crc_in_single_frame_chunk_raises_on_iteration() -> None:
    raw = bytearray(encode_frame(FrameType.DATA, 1, 1, b"x" * 40))
    raw[-1] ^= 1
    decoder = FrameDecoder()
    frames = decoder.feed(bytes(raw))  # the call itself does not raise
    with pytest.raises(BadCrc):
        list(frames)
    good = encode_frame(FrameType.DATA, 1, 2, b"ok")
    spent = decoder.feed(good)
    with pytest.raises(BadCrc):
        list(spent)


def test_bad_crc_after_good_frames_in_one_chunk() -> None:
    good = encode_frame(FrameType.DATA, 1, 1, b"ok")
    bad = bytearray(encode_frame(FrameType.DATA, 1, 2, b"no"))
    bad[-2] ^= 0x40
    seen: list[Frame] = []
    with pytest.raises(BadCrc):
        for f in FrameDecoder().feed(good + good + bytes(bad) + good):
            seen.append(f)
    assert [bytes(f.raw) for f in seen] == [good, good]
