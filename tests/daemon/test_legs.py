"""The relay adapters on single-frame reads (the AI-agent load's shape).

Drives the real ClientProtocol and AgentProtocol around a real relay
Session, with in-memory transports: each frame arrives in a read of its own
(or cut across reads), passes through byte for byte, and goes out in one
write; a bad frame still answers the spec's ERROR (SPEC §2, §12).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from clawterm.constants import Capability, ErrorCode, FrameType
from clawterm.daemon.legs import AgentProtocol, ClientProtocol
from clawterm.daemon.metrics import Counters
from clawterm.daemon.relay import Session
from clawterm.frame import FrameDecoder, encode_frame
from clawterm.payloads import Disconnect, Error
from clawterm.session import SessionState
from tests.helpers import RecordingTransport

SID = 77


@dataclass
class Pair:
    session: Session
    client: ClientProtocol
    agent: AgentProtocol
    to_client: RecordingTransport
    to_agent: RecordingTransport
    errors: list[ErrorCode]


def run(test: Callable[[Pair], None], capabilities: int = Capability.ACK) -> None:
    async def main() -> None:
        errors: list[ErrorCode] = []

        def after_burst(session: Session) -> None:
            session.flush()

        daemon: Any = SimpleNamespace(
            config=SimpleNamespace(max_payload=65535, max_buffer=1 << 20),
            loop=asyncio.get_running_loop(),
            client_connected=lambda proto: None,
            count_error=errors.append,
            log_event=lambda *a, **k: None,
            after_burst=after_burst,
        )
        session = Session(SID, 0, 1, bytes(32), counters=Counters(), ring_size=1 << 16)
        client, agent = ClientProtocol(daemon), AgentProtocol(daemon, session)
        to_client, to_agent = RecordingTransport(), RecordingTransport()
        client.connection_made(to_client)  # type: ignore[arg-type]
        agent.connection_made(to_agent)  # type: ignore[arg-type]
        agent.ready = True
        session.agent_attached(agent)
        client.handshaking = False
        client.session = session
        session.attach(client, 0, capabilities)
        test(Pair(session, client, agent, to_client, to_agent, errors))

    asyncio.run(main())


def data(seq: int, payload: bytes = b"t" * 40) -> bytes:
    return encode_frame(FrameType.DATA, SID, seq, payload)


def ack(seq: int) -> bytes:
    return encode_frame(FrameType.ACK, SID, 0, seq.to_bytes(4, "big"))


def test_single_frame_reads_pass_through_unchanged_one_write_each() -> None:
    def check(p: Pair) -> None:
        for seq in range(1, 6):
            p.agent.data_received(data(seq))
            p.client.data_received(ack(seq))
            p.client.data_received(data(seq, b"in"))
            p.agent.data_received(ack(seq))
        assert p.to_client.writes == [f for s in range(1, 6) for f in (data(s), ack(s))]
        assert p.to_agent.writes == [f for s in range(1, 6) for f in (ack(s), data(s, b"in"))]
        assert p.session.ring.acked == 5 and p.session.ring.unacked_bytes == 0
        assert p.session.c2a_last == 5 and p.session.agent_acked == 5
        assert p.errors == []

    run(check)


def test_two_frames_in_one_read_go_out_in_one_write() -> None:
    def check(p: Pair) -> None:
        p.agent.data_received(data(1) + data(2))
        p.client.data_received(ack(2) + data(1, b"in"))
        assert p.to_client.writes == [data(1) + data(2)]
        assert p.to_agent.writes == [ack(2) + data(1, b"in")]

    run(check)


@pytest.mark.parametrize("cut", [1, 12, 13, 14, 20, 54])
def test_frame_split_across_reads(cut: int) -> None:
    def check(p: Pair) -> None:
        frame = data(1)
        p.agent.data_received(frame[:cut])
        assert p.to_client.writes == []
        p.agent.data_received(frame[cut:])
        p.client.data_received(ack(1)[: cut % 19 or 1])
        p.client.data_received(ack(1)[cut % 19 or 1 :])
        assert p.to_client.writes == [frame]
        assert p.to_agent.writes == [ack(1)]
        assert p.session.ring.acked == 1

    run(check)


def test_legacy_empty_ack_is_passed_on_as_u32() -> None:
    def check(p: Pair) -> None:
        p.agent.data_received(data(1))
        p.client.data_received(encode_frame(FrameType.ACK, SID, 0))
        assert p.to_agent.writes == [ack(1)]
        assert p.session.ring.acked == 1

    run(check)


def error_of(transport: RecordingTransport) -> Error:
    frames = list(FrameDecoder().feed(b"".join(transport.writes)))
    assert frames[-1].type == FrameType.ERROR and frames[-1].session_id == SID
    assert transport.closed
    return Error.decode(frames[-1].payload)


def test_bad_crc_on_single_frame_read_answers_error_and_suspends() -> None:
    def check(p: Pair) -> None:
        bad = bytearray(ack(1))
        bad[-1] ^= 1
        p.client.data_received(bytes(bad))
        assert error_of(p.to_client).code == ErrorCode.BAD_CRC
        assert p.errors == [ErrorCode.BAD_CRC]
        assert p.session.state is SessionState.SUSPENDED and p.session.client is None
        assert p.to_agent.writes == [encode_frame(FrameType.SUSPEND, SID, 0)]

    run(check)


def test_bad_ack_length_answers_bad_payload() -> None:
    def check(p: Pair) -> None:
        p.client.data_received(encode_frame(FrameType.ACK, SID, 0, b"\0\1"))
        assert error_of(p.to_client).code == ErrorCode.BAD_PAYLOAD

    run(check)


def test_bad_crc_from_agent_after_good_frame_relays_the_good_one_first() -> None:
    def check(p: Pair) -> None:
        bad = bytearray(data(2))
        bad[20] ^= 0xFF
        p.agent.data_received(data(1) + bytes(bad))
        assert error_of(p.to_agent).code == ErrorCode.BAD_CRC
        # The client gets the good frame, then AGENT_GONE (SPEC §14).
        first, gone = FrameDecoder().feed(b"".join(p.to_client.writes))
        assert bytes(first.raw) == data(1)
        assert gone.type == FrameType.DISCONNECT
        assert Disconnect.decode(gone.payload).code == ErrorCode.AGENT_GONE
        assert p.session.closed

    run(check)
