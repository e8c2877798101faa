"""A sans-I/O stand-in for the daemon and its agent, for the client core's tests.

It decodes what the client writes and builds what a daemon would answer,
numbering the agent's DATA with a real SendBuffer, as the far end of the
session does (SPEC §4).
"""

from __future__ import annotations

from clawterm.constants import FrameType, KeepaliveFlag, ResumedFlag
from clawterm.frame import Frame, FrameDecoder, encode_frame
from clawterm.payloads import Accept, Ack, Disconnect, Error, Nack, Resumed
from clawterm.sequencing import ReceiveState, SendBuffer

TOKEN = bytes(range(32))
RESUME_TOKEN = bytes(range(100, 116))
SID = 0x01020304


def frames(data: bytes) -> list[Frame]:
    """Decode whole frames (copied, so they outlive the chunk)."""
    return [
        Frame(f.type, f.flags, f.session_id, f.seq, bytes(f.raw)) for f in FrameDecoder().feed(data)
    ]


class FakeDaemon:
    """Daemon + agent of one session, back to back with a ClientConnection."""

    def __init__(self, sid: int = SID, keepalive: int = 30) -> None:
        self.sid = sid
        self.keepalive = keepalive
        self.agent_tx = SendBuffer()
        self.agent_rx = ReceiveState()
        self.received: list[bytes] = []  # client DATA payloads delivered to the agent, in order
        self.decoder = FrameDecoder()

    def new_transport(self) -> None:
        self.decoder = FrameDecoder()

    def feed(self, data: bytes) -> list[Frame]:
        out = [
            Frame(f.type, f.flags, f.session_id, f.seq, bytes(f.raw))
            for f in self.decoder.feed(data)
        ]
        for f in out:
            if f.type == FrameType.DATA and self.agent_rx.receive(f.seq, len(f.payload), 0.0):
                self.received.append(bytes(f.payload))
            elif f.type == FrameType.ACK:
                seq = Ack.decode(f.payload).seq
                assert seq is not None
                self.agent_tx.ack(seq)
        return out

    def frame(
        self, type: int, payload: bytes = b"", flags: int = 0, sid: int | None = None
    ) -> bytes:
        return encode_frame(
            type, self.sid if sid is None else sid, self.agent_tx.last_seq, payload, flags
        )

    def accept(self, token: bytes | None = RESUME_TOKEN) -> bytes:
        if token is None:
            payload = Accept(self.sid, 1, 7).encode()[:6]
        else:
            payload = Accept(self.sid, 1, 7, token, self.keepalive).encode()
        return self.frame(FrameType.ACCEPT, payload)

    def resumed(self, last_rx: int | None = None, gap: bool = False) -> bytes:
        rx = self.agent_rx.last_rx if last_rx is None else last_rx
        return self.frame(
            FrameType.RESUMED, Resumed(self.sid, rx).encode(), ResumedFlag.GAP if gap else 0
        )

    def data(self, payload: bytes) -> bytes:
        return self.agent_tx.encode_data(self.sid, payload)

    def replay(self, after: int) -> bytes:
        from clawterm.frame import frame_with_flags

        return b"".join(frame_with_flags(r, 0x02) for r in self.agent_tx.resend_after(after))

    def ack(self, seq: int | None = None) -> bytes:
        return self.frame(
            FrameType.ACK, Ack(self.agent_rx.last_rx if seq is None else seq).encode()
        )

    def nack(self, seq: int) -> bytes:
        return self.frame(FrameType.NACK, Nack(seq).encode())

    def error(self, code: int, message: str = "") -> bytes:
        return self.frame(FrameType.ERROR, Error(code, message).encode())

    def ping(self) -> bytes:
        return self.frame(FrameType.KEEPALIVE, b"", KeepaliveFlag.PING)

    def pong(self) -> bytes:
        return self.frame(FrameType.KEEPALIVE, b"", KeepaliveFlag.PONG)

    def disconnect(self, code: int | None = None, reason: str = "") -> bytes:
        return self.frame(FrameType.DISCONNECT, Disconnect(code, reason).encode())
