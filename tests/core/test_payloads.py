"""Payload encode/decode for every type, and the length rules."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clawterm import payloads as p
from clawterm.constants import FrameType
from clawterm.errors import BadPayload, LocalProtocolError, UnsupportedVersion

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)

PAYLOADS: list[st.SearchStrategy[Any]] = [
    st.builds(
        p.Connect,
        st.just(1),
        st.integers(0, 255),
        u32,
        u32,
        st.binary(min_size=32, max_size=32),
        st.binary(min_size=16, max_size=16),
        st.sampled_from([58, 59, 61]),
    ),
    st.builds(
        p.Accept, u32, st.just(1), st.integers(0, 255), st.binary(min_size=16, max_size=16), u16
    ),
    st.builds(p.Resume, u32, u32, st.binary(min_size=16, max_size=16)),
    st.builds(p.Resume, u32),
    st.builds(p.Resumed, u32, u32),
    st.just(p.Resumed()),
    st.builds(p.Ack, u32),
    st.just(p.Ack()),
    st.builds(p.Nack, u32),
    st.just(p.Disconnect()),
    st.builds(p.Disconnect, u16, st.text(max_size=50)),
    st.builds(p.WinSize, u16, u16),
    st.builds(p.WinSize, u16, u16, u16, u16),
    st.builds(p.Error, u16, st.text(max_size=100)),
    st.just(p.Keepalive()),
    st.just(p.Suspend()),
]


@given(st.one_of(*PAYLOADS))
def test_round_trip_every_type(obj: Any) -> None:
    encoded = obj.encode()
    assert type(obj).decode(encoded) == obj
    assert p.PAYLOAD_TYPES[obj.type] is type(obj)


def test_connect_layouts_and_order_of_checks() -> None:
    c = p.Connect(1, 7, 1, 42, bytes(32), bytes(16))
    for size in (58, 59, 61):
        enc = p.Connect(1, 7, 1, 42, bytes(32), bytes(16), size).encode()
        assert len(enc) == size
        assert p.Connect.decode(enc).capabilities == 7
    with pytest.raises(UnsupportedVersion):
        p.Connect.decode(b"\x02" + bytes(3))  # wrong version wins over wrong length
    with pytest.raises(UnsupportedVersion):
        p.Connect.decode(b"")
    with pytest.raises(BadPayload):
        p.Connect.decode(c.encode() + b"\0\0")  # 60 bytes
    with pytest.raises(LocalProtocolError):
        p.Connect(1, 7, 1, 42, bytes(31), bytes(16)).encode()
    with pytest.raises(LocalProtocolError):
        p.Connect(1, 7, 1, 42, bytes(32), bytes(16), 60).encode()
    with pytest.raises(LocalProtocolError):
        p.Connect(1, 300, 1, 42, bytes(32), bytes(16)).encode()


def test_accept_short_prefix_and_version() -> None:
    full = p.Accept(9, 1, 7, bytes(range(16)), 30).encode()
    short = p.Accept.decode(full[:6])
    assert (short.session_id, short.capabilities, short.resume_token) == (9, 7, None)
    with pytest.raises(BadPayload):
        p.Accept.decode(full[:10])
    with pytest.raises(UnsupportedVersion):
        p.Accept.decode(p.Accept(9, 2, 7).encode())
    assert len(p.Accept(9, 1, 7).encode()) == 24
    with pytest.raises(LocalProtocolError):
        p.Accept(9, 1, 7, b"short").encode()


def test_resume_forms() -> None:
    assert p.Resume.decode(p.Resume(5).encode()).legacy
    assert not p.Resume(5, 1, bytes(16)).legacy
    with pytest.raises(LocalProtocolError):
        p.Resume(5, 1, bytes(3)).encode()
    with pytest.raises(LocalProtocolError):
        p.Resume(1 << 33).encode()


def test_resumed_notification() -> None:
    assert p.Resumed().encode() == b""
    assert p.Resumed.decode(b"").notification
    with pytest.raises(BadPayload):
        p.Resumed.decode(b"\0" * 4)


@pytest.mark.parametrize(
    ("cls", "bad"),
    [
        (p.Ack, b"\0"),
        (p.Nack, b""),
        (p.Disconnect, b"\0"),
        (p.WinSize, b"\0" * 5),
        (p.Error, b"\0"),
        (p.Error, b"\0\0" + b"x" * 1025),
        (p.Keepalive, b"\0"),
        (p.Suspend, b"\0"),
        (p.Resume, b"\0" * 10),
    ],
)
def test_wrong_lengths_are_bad_payload(cls: Any, bad: bytes) -> None:
    with pytest.raises(BadPayload):
        cls.decode(bad)


def test_text_must_be_utf8() -> None:
    with pytest.raises(BadPayload):
        p.Disconnect.decode(b"\0\1\xff\xfe")
    with pytest.raises(BadPayload):
        p.Error.decode(b"\0\1\xff")


def test_error_message_cut_on_character_boundary() -> None:
    enc = p.Error(5, "é" * 600).encode()
    assert len(enc) <= 2 + 1024
    assert p.Error.decode(enc).message == "é" * 512


def test_encode_range_errors() -> None:
    for bad in (
        p.Ack(-1),
        p.Nack(1 << 32),
        p.Disconnect(70000, "x"),
        p.WinSize(70000, 1),
        p.Resumed(1 << 32, 0),
        p.Accept(1 << 32, 1, 0),
        p.Error(-1),
    ):
        with pytest.raises(LocalProtocolError):
            bad.encode()
    with pytest.raises(LocalProtocolError):
        p.Disconnect(None, "reason without code").encode()
    with pytest.raises(LocalProtocolError):
        p.Disconnect(1, "x" * 70000).encode()


def test_payload_type_table() -> None:
    assert FrameType.DATA not in p.PAYLOAD_TYPES
    assert set(p.PAYLOAD_TYPES) == set(FrameType) - {FrameType.DATA}
