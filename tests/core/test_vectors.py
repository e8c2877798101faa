"""Every reference vector of ../shared/vectors/frames.json."""

from __future__ import annotations

import random
from typing import Any

import pytest

from clawterm import payloads
from clawterm.constants import DataFlag, ErrorCode, FrameType, KeepaliveFlag
from clawterm.crc import crc16
from clawterm.errors import RemoteProtocolError
from clawterm.frame import Frame, FrameDecoder, encode_frame
from clawterm.serial import is_newer

from .conftest import load_vectors

V = load_vectors()


def decode_all(data: bytes, max_payload: int = 65535) -> list[Frame]:
    decoder = FrameDecoder(max_payload)
    return [f._replace(raw=bytes(f.raw)) for f in decoder.feed(data)]


def test_crc_checks() -> None:
    for check in V["crc"]["checks"]:
        data = check["ascii"].encode() if "ascii" in check else bytes.fromhex(check["hex"])
        assert crc16(data) == int(check["crc16"], 16)
    not_this = V["crc"]["not_this"]
    assert crc16(not_this["ascii"].encode()) != int(not_this["crc16"], 16)


def test_type_and_error_code_tables() -> None:
    assert {t.name: t.value for t in FrameType} == V["types"]
    assert {c.name: c.value for c in ErrorCode} == V["error_codes"]


@pytest.mark.parametrize("vec", V["valid"], ids=lambda v: v["name"])
def test_valid_frame_decodes_and_reencodes(vec: dict[str, Any]) -> None:
    raw = bytes.fromhex(vec["frame_hex"])
    (frame,) = decode_all(raw)
    assert frame.type == vec["type"]
    assert frame.session_id == vec["session_id"]
    assert frame.seq == vec["seq"]
    assert frame.flags == vec["flags"]
    assert frame.payload == bytes.fromhex(vec["payload_hex"])
    assert frame.raw == raw
    assert encode_frame(frame.type, frame.session_id, frame.seq, frame.payload, frame.flags) == raw


def _fields(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.__dataclass_fields__}


@pytest.mark.parametrize(
    "vec", [v for v in V["valid"] if "payload_fields" in v], ids=lambda v: v["name"]
)
def test_valid_payload_fields(vec: dict[str, Any]) -> None:
    payload = bytes.fromhex(vec["payload_hex"])
    want = vec["payload_fields"]
    cls = payloads.PAYLOAD_TYPES[vec["type"]]
    obj = cls.decode(payload)
    got = _fields(obj)
    renames = {
        "token_hex": "token",
        "nonce_hex": "nonce",
        "resume_token_hex": "resume_token",
        "keepalive_s": "keepalive",
        "acked_seq": "seq",
        "resend_after_seq": "seq",
    }
    for key, value in want.items():
        if key == "name":  # the ERROR code's name
            assert ErrorCode(got["code"]).name == value
            continue
        field = renames.get(key, key)
        expected = bytes.fromhex(value) if key.endswith("_hex") else value
        assert got[field] == expected, key
    # And back to the same bytes.
    assert obj.encode() == payload


def test_flag_names_match_vectors() -> None:
    by_name = {v["name"]: v for v in V["valid"]}
    assert by_name["data-replay"]["flags"] == DataFlag.REPLAY
    assert by_name["keepalive-ping"]["flags"] == KeepaliveFlag.PING
    assert by_name["keepalive-pong"]["flags"] == KeepaliveFlag.PONG


@pytest.mark.parametrize("vec", V["invalid_frames"], ids=lambda v: v["name"])
def test_invalid_frames(vec: dict[str, Any]) -> None:
    raw = bytes.fromhex(vec["frame_hex"])
    decoder = FrameDecoder(vec.get("max_payload", 65535))
    with pytest.raises(RemoteProtocolError) as info:
        list(decoder.feed(raw))
    assert info.value.code == ErrorCode[vec["error"]]
    # One byte at a time gives the same error.
    decoder = FrameDecoder(vec.get("max_payload", 65535))
    with pytest.raises(RemoteProtocolError) as info:
        for i in range(len(raw)):
            list(decoder.feed(raw[i : i + 1]))
    assert info.value.code == ErrorCode[vec["error"]]


@pytest.mark.parametrize("vec", V["invalid_payloads"], ids=lambda v: v["name"])
def test_invalid_payloads(vec: dict[str, Any]) -> None:
    cls = payloads.PAYLOAD_TYPES[FrameType[vec["type_name"]]]
    with pytest.raises(RemoteProtocolError) as info:
        cls.decode(bytes.fromhex(vec["payload_hex"]))
    assert info.value.code == ErrorCode[vec["error"]]


def _stream_frames() -> list[Frame]:
    return [
        decode_all(bytes.fromhex(v["frame_hex"]))[0] for v in V["valid"][: V["stream"]["count"]]
    ]


def test_stream_whole() -> None:
    data = bytes.fromhex(V["stream"]["hex"])
    assert decode_all(data) == _stream_frames()


def test_stream_one_byte_at_a_time() -> None:
    data = bytes.fromhex(V["stream"]["hex"])
    decoder = FrameDecoder()
    frames = []
    for i in range(len(data)):
        frames.extend(bytes(f.raw) for f in decoder.feed(data[i : i + 1]))
    assert frames == [f.raw for f in _stream_frames()]
    assert decoder.buffered == 0


@pytest.mark.parametrize("seed", range(20))
def test_stream_random_chunks(seed: int) -> None:
    data = bytes.fromhex(V["stream"]["hex"])
    rng = random.Random(seed)
    decoder = FrameDecoder()
    frames = []
    pos = 0
    while pos < len(data):
        n = rng.randint(1, 200)
        frames.extend(bytes(f.raw) for f in decoder.feed(data[pos : pos + n]))
        pos += n
    assert frames == [f.raw for f in _stream_frames()]


@pytest.mark.parametrize("vec", V["serial_arithmetic"], ids=str)
def test_serial_arithmetic(vec: dict[str, Any]) -> None:
    assert is_newer(vec["a"], vec["b"]) is vec["a_newer_than_b"]
