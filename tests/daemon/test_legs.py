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

from clawterm.constants import Capability, DataFlag, ErrorCode, FrameType
from clawterm.daemon.legs import AgentProtocol, ClientProtocol
from clawterm.daemon.metrics import Counters
from clawterm.daemon.relay import Session
from clawterm.frame import FrameDecoder, encode_frame
from clawterm.payloads import Disconnect, Error
from clawterm.session import SessionInput, SessionState
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


# -- reads of many frames: the relay's run path (relay "Runs") -----------------


def test_agent_run_with_acks_one_write_and_a_ring_entry_per_stretch() -> None:
    def check(p: Pair) -> None:
        read = data(1) + data(2) + data(3) + ack(9) + data(4)
        p.agent.data_received(read)
        assert p.to_client.writes == [read]
        ring = p.session.ring
        assert len(ring) == 2 and ring.last_seq == 4  # DATA 1-3, then DATA 4
        assert list(ring.frames_after(0)) == [data(s) for s in range(1, 5)]
        assert p.session.agent_acked == 9 and p.session.a2c_last == 4
        assert p.session.counters.frames_a2c == 4
        assert p.session.counters.bytes_a2c == 4 * 40
        # The client acknowledges part of the first stretch, then all.
        p.client.data_received(ack(2) + data(1, b"in") + data(2, b"in"))
        assert p.to_agent.writes == [ack(2) + data(1, b"in") + data(2, b"in")]
        assert ring.acked == 2 and ring.unacked_bytes == 4 * 55
        p.client.data_received(ack(4))
        assert ring.unacked_bytes == 0 and p.session.c2a_last == 2
        assert p.errors == []

    run(check)


def test_runs_stop_at_a_duplicate_which_is_dropped() -> None:
    def check(p: Pair) -> None:
        p.agent.data_received(data(1) + data(2) + data(2) + data(3))
        assert p.to_client.writes == [data(1) + data(2) + data(3)]
        p.client.data_received(data(1, b"a") + data(1, b"a") + data(2, b"b"))
        assert p.to_agent.writes == [data(1, b"a") + data(2, b"b")]
        assert p.session.counters.frames_dropped_duplicate == 2
        assert list(p.session.ring.frames_after(0)) == [data(s) for s in range(1, 4)]

    run(check)


def test_client_run_then_a_frame_for_another_session_forwards_the_run_first() -> None:
    def check(p: Pair) -> None:
        other = encode_frame(FrameType.DATA, SID + 1, 3, b"x")
        p.client.data_received(data(1, b"a") + data(2, b"b") + other)
        # The run reaches the agent, then the client is detached (SUSPEND).
        assert b"".join(p.to_agent.writes) == (
            data(1, b"a") + data(2, b"b") + encode_frame(FrameType.SUSPEND, SID, 0)
        )
        assert error_of(p.to_client).code == ErrorCode.PROTOCOL
        assert p.session.c2a_last == 2

    run(check)


def test_run_cut_by_the_read_continues_in_the_next() -> None:
    def check(p: Pair) -> None:
        stream = b"".join(data(s) for s in range(1, 7)) + ack(5)
        # Three reads, the first two ending mid-frame.
        p.agent.data_received(stream[:130])
        p.agent.data_received(stream[130:200])
        p.agent.data_received(stream[200:])
        assert b"".join(p.to_client.writes) == stream
        assert list(p.session.ring.frames_after(0)) == [data(s) for s in range(1, 7)]
        assert p.session.a2c_last == 6 and p.session.agent_acked == 5

    run(check)


def test_client_without_ack_capability_gets_runs_acknowledged_on_write() -> None:
    def check(p: Pair) -> None:
        p.agent.data_received(data(1) + data(2) + data(3))
        # The daemon acknowledges what it wrote, for the ring and to the agent.
        assert p.session.ring.acked == 3 and p.session.ring.unacked_bytes == 0
        assert p.to_agent.writes[-1] == ack(3)

    run(check, capabilities=0)


def test_resume_in_the_middle_of_a_run_replays_the_rest_frame_by_frame() -> None:
    def check(p: Pair) -> None:
        p.agent.data_received(data(1) + data(2) + data(3))
        p.session.detach(SessionInput.TRANSPORT_LOST, "gone")
        back = RecordingTransport()
        client2 = ClientProtocol(p.client.daemon)
        client2.connection_made(back)  # type: ignore[arg-type]
        client2.handshaking = False
        client2.session = p.session
        p.session.attach(client2, 1, Capability.ACK)
        p.session.flush()
        frames = list(FrameDecoder().feed(b"".join(back.writes)))
        assert frames[0].type == FrameType.RESUMED
        replayed = [f for f in frames if f.type == FrameType.DATA]
        assert [f.seq for f in replayed] == [2, 3]
        assert all(f.flags & DataFlag.REPLAY for f in replayed)
        assert [bytes(f.payload) for f in replayed] == [b"t" * 40] * 2

    run(check)
