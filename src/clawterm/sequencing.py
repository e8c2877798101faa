"""End-to-end sequencing: what a sender keeps, what a receiver accepts (SPEC §4).

Each direction of a session is one sequence space from client to agent. The
*sender* at one end numbers its DATA frames and keeps every frame until the
peer at the *far* end acknowledges it — not the daemon in between, whose
replay ring is only a cache. That is what makes "nothing lost in either
direction" hold through transport drops and daemon restarts.

* :class:`SendBuffer` — the sender's side: numbering, the unacknowledged
  frames, what to resend after RESUMED or NACK, and when to stop writing.
* :class:`ReceiveState` — the receiver's side: drop duplicates (SEQ not newer
  than the last delivered) and pace ACKs (within 100 ms, at least every 32
  frames or 32 KiB).

The client library and the agent SDK both use them; the daemon does not (it
passes DATA and ACK through, SPEC §4).
"""

from __future__ import annotations

from collections import deque

from .constants import (
    ACK_EVERY_BYTES,
    ACK_EVERY_FRAMES,
    ACK_MAX_DELAY,
    DEFAULT_RING_SIZE,
    FrameType,
)
from .frame import Buffer, encode_frame
from .serial import is_newer, next_seq, seq_max

__all__ = ["ReceiveState", "SendBuffer"]


class SendBuffer:
    """Unacknowledged DATA frames of one sender (SPEC §4, §6, §14).

    ``limit`` is the most bytes of unacknowledged frames the sender should
    hold; callers stop producing while :attr:`full` (backpressure reaches the
    writer, nothing is dropped). The buffer itself never refuses a frame.
    """

    __slots__ = ("_bytes", "_frames", "acked", "last_seq", "limit")

    def __init__(self, limit: int = DEFAULT_RING_SIZE) -> None:
        #: Bytes of unacknowledged frames at which :attr:`full` becomes true.
        self.limit = limit
        #: SEQ of the last DATA frame numbered (0: none yet).
        self.last_seq = 0
        #: Highest SEQ the far peer acknowledged (0: none yet).
        self.acked = 0
        self._frames: deque[tuple[int, bytes]] = deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def unacked_bytes(self) -> int:
        """Encoded bytes of the frames held."""
        return self._bytes

    @property
    def full(self) -> bool:
        """True while the sender should not produce more DATA."""
        return self._bytes >= self.limit

    def encode_data(self, session_id: int, payload: Buffer, flags: int = 0) -> bytes:
        """Number a DATA frame, keep it, and return its bytes to write."""
        seq = next_seq(self.last_seq)
        raw = encode_frame(FrameType.DATA, session_id, seq, payload, flags)
        self.last_seq = seq
        self._frames.append((seq, raw))
        self._bytes += len(raw)
        return raw

    @property
    def first_seq(self) -> int | None:
        """SEQ of the oldest frame held (what a legacy empty ACK acknowledges)."""
        return self._frames[0][0] if self._frames else None

    def ack(self, seq: int) -> int:
        """The far peer has every frame up to ``seq``; release them.

        An ACK beyond the last SEQ numbered is taken as acknowledging
        everything sent, never more. Returns the number of bytes released.
        """
        if is_newer(seq, self.last_seq):
            seq = self.last_seq
        frames = self._frames
        freed = 0
        while frames and not is_newer(frames[0][0], seq):
            freed += len(frames.popleft()[1])
        self._bytes -= freed
        self.acked = seq_max(seq, self.acked)
        return freed

    def resend_after(self, seq: int) -> list[bytes]:
        """The held frames newer than ``seq``, oldest first, to write again."""
        return [raw for s, raw in self._frames if is_newer(s, seq)]

    def resumed(self, peer_last_rx: int) -> list[bytes]:
        """Apply a RESUMED's last_rx_seq: returns the frames to resend.

        Nothing is released — the daemon's last_rx_seq is not the far peer's
        acknowledgement — and numbering continues above the larger of our own
        last SEQ and ``peer_last_rx`` (SPEC §6: a new device continues from the
        daemon's count). This is the *client's* rule; an agent answering an
        agent-leg RESUME only resends (:meth:`resend_after`), since it alone
        numbers its direction.
        """
        self.last_seq = seq_max(self.last_seq, peer_last_rx)
        return self.resend_after(peer_last_rx)


class ReceiveState:
    """Duplicate suppression and ACK pacing for one receiving direction."""

    __slots__ = (
        "_deadline",
        "_pending_bytes",
        "_pending_frames",
        "ack_bytes",
        "ack_delay",
        "ack_frames",
        "last_rx",
    )

    def __init__(
        self,
        last_rx: int = 0,
        *,
        ack_delay: float = ACK_MAX_DELAY,
        ack_frames: int = ACK_EVERY_FRAMES,
        ack_bytes: int = ACK_EVERY_BYTES,
    ) -> None:
        #: Highest DATA SEQ delivered (0: none yet).
        self.last_rx = last_rx
        #: Longest an ACK may wait after DATA arrives, seconds.
        self.ack_delay = ack_delay
        #: Acknowledge at least every this many frames...
        self.ack_frames = ack_frames
        #: ...or this many payload bytes.
        self.ack_bytes = ack_bytes
        self._pending_frames = 0
        self._pending_bytes = 0
        self._deadline: float | None = None

    def receive(self, seq: int, size: int, now: float) -> bool:
        """Account for a DATA frame; False means it is a duplicate to drop."""
        if not is_newer(seq, self.last_rx):
            return False
        self.last_rx = seq
        self._pending_frames += 1
        self._pending_bytes += size
        if self._deadline is None:
            self._deadline = now + self.ack_delay
        return True

    def ack_due(self, now: float) -> bool:
        """True when an ACK should be sent now."""
        if not self._pending_frames:
            return False
        return (
            self._pending_frames >= self.ack_frames
            or self._pending_bytes >= self.ack_bytes
            or now >= self._deadline  # type: ignore[operator]
        )

    def take_ack(self) -> int:
        """Reset the pacing counters and return the SEQ to acknowledge."""
        self._pending_frames = 0
        self._pending_bytes = 0
        self._deadline = None
        return self.last_rx

    def get_timer(self) -> float | None:
        """When :meth:`ack_due` will become true by time alone, if ever."""
        return self._deadline
