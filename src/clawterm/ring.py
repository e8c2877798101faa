"""The daemon's replay ring (SPEC §7).

Per session the daemon keeps the most recent daemon → client DATA frames,
encoded exactly as the agent sent them, so that a client that comes back can
be given what it missed at once. The ring is a *cache*: every frame in it also
lives with the agent until the client acknowledges it (SPEC §4), which is what
lets a restarted daemon refill it (SPEC §17).

Two queues, oldest first:

* ``_acked`` — frames the client acknowledged: scrollback, kept until space
  is needed, so a new device resuming from 0 gets the full context.
* ``_unacked`` — frames the client has not acknowledged yet.

An ACK moves frames from the front of ``_unacked`` to the back of ``_acked``.
When the ring is over capacity, scrollback goes first. Unacknowledged frames
are never evicted in the default ``block`` mode: the ring instead reports
:attr:`ReplayRing.full` and the daemon stops reading the agent's socket
(backpressure) until ACKs or a RESUME free space. In ``drop-oldest`` mode
they are evicted too, and :meth:`ReplayRing.gap` then tells a resuming
client that frames after its last_rx_seq are gone.

An entry is the bytes of one frame or of a *run*: consecutive DATA frames
that arrived in one read and are kept as the one bytes object they came in
(the relay's fast path, :meth:`clawterm.daemon.relay.Session.agent_run`).
An entry is filed under the SEQ of its last frame: it moves to scrollback
once that frame is acknowledged, and it is split into its frames only to
replay them, for a legacy empty ACK, and in drop-oldest mode (where runs are
kept frame by frame). A run acknowledged part way counts as unacknowledged
until its last frame is.

Memory is taken as frames arrive, never up front.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from .constants import DEFAULT_RING_SIZE, OVERHEAD
from .serial import is_newer, seq_max

__all__ = ["ReplayRing"]


class ReplayRing:
    """Encoded daemon → client DATA frames of one session."""

    __slots__ = (
        "_acked",
        "_acked_bytes",
        "_unacked",
        "_unacked_bytes",
        "acked",
        "capacity",
        "drop_oldest",
        "evicted_upto",
        "last_seq",
    )

    def __init__(self, capacity: int = DEFAULT_RING_SIZE, *, drop_oldest: bool = False) -> None:
        #: Bytes of encoded frames the ring holds before it evicts or blocks.
        self.capacity = capacity
        #: Evict unacknowledged frames too (``--overflow drop-oldest``).
        self.drop_oldest = drop_oldest
        #: Highest SEQ the client acknowledged (0: none).
        self.acked = 0
        #: SEQ of the newest frame appended (0: none).
        self.last_seq = 0
        #: SEQ of the newest frame evicted (0: none); see :meth:`gap`.
        self.evicted_upto = 0
        self._acked: deque[tuple[int, bytes]] = deque()
        self._unacked: deque[tuple[int, bytes]] = deque()
        self._acked_bytes = 0
        self._unacked_bytes = 0

    def __len__(self) -> int:
        return len(self._acked) + len(self._unacked)

    @property
    def size(self) -> int:
        """Bytes held, scrollback included."""
        return self._acked_bytes + self._unacked_bytes

    @property
    def unacked_bytes(self) -> int:
        """Bytes of frames the client has not acknowledged."""
        return self._unacked_bytes

    @property
    def full(self) -> bool:
        """True while the daemon must not read more from the agent (block mode)."""
        return not self.drop_oldest and self._unacked_bytes >= self.capacity

    @property
    def first_unacked(self) -> int | None:
        """SEQ of the oldest unacknowledged frame held, if any."""
        if not self._unacked:
            return None
        for seq, _, _ in _frames(self._unacked[0][1]):
            if is_newer(seq, self.acked):
                return seq
        return self._unacked[0][0]  # pragma: no cover - an entry moves once acked

    def append(self, seq: int, raw: bytes) -> None:
        """Keep encoded DATA the agent sent: one frame, or a run ending at ``seq``.

        ``raw`` must be owned bytes of whole frames in SEQ order, the last
        numbered ``seq``. In drop-oldest mode a run is kept frame by frame,
        so that eviction can take its oldest frames and keep the rest.
        """
        if self.drop_oldest and len(raw) != OVERHEAD + int.from_bytes(raw[11:13], "big"):
            for s, start, stop in _frames(raw):
                self.append(s, raw[start:stop])
            return
        self._unacked.append((seq, raw))
        self._unacked_bytes += len(raw)
        self.last_seq = seq
        if self._acked_bytes + self._unacked_bytes > self.capacity:
            self._evict()

    def _evict(self) -> None:
        acked, unacked = self._acked, self._unacked
        while self._acked_bytes + self._unacked_bytes > self.capacity:
            if acked:
                seq, raw = acked.popleft()
                self._acked_bytes -= len(raw)
            elif self.drop_oldest and len(unacked) > 1:
                # Keep the newest frame even in drop-oldest mode: it was just
                # appended and a ring smaller than one frame must still relay.
                seq, raw = unacked.popleft()
                self._unacked_bytes -= len(raw)
            else:
                return
            self.evicted_upto = seq_max(seq, self.evicted_upto)

    def ack(self, seq: int) -> int:
        """The client has every frame up to ``seq``; returns bytes acknowledged."""
        unacked = self._unacked
        moved = 0
        while unacked and not is_newer(unacked[0][0], seq):
            item = unacked.popleft()
            self._acked.append(item)
            moved += len(item[1])
        self._unacked_bytes -= moved
        self._acked_bytes += moved
        self.acked = seq_max(seq, self.acked)
        if moved and self._acked_bytes + self._unacked_bytes > self.capacity:
            self._evict()
        return moved

    def ack_oldest(self) -> int | None:
        """A legacy empty ACK: acknowledge the oldest unacknowledged frame.

        Returns its SEQ (the explicit value to pass on), or None if none.
        """
        if not self._unacked:
            return None
        self._split_head()
        seq = self._unacked[0][0]
        self.ack(seq)
        return seq

    def _split_head(self) -> None:
        """Make the oldest unacknowledged entry, if a run, one entry per frame.

        Frames of it already acknowledged move to scrollback. Legacy empty
        ACKs take one frame each: split once, each is then O(1).
        """
        raw = self._unacked[0][1]
        if len(raw) == OVERHEAD + int.from_bytes(raw[11:13], "big"):
            return
        self._unacked.popleft()
        self._unacked.extendleft([(s, raw[start:stop]) for s, start, stop in _frames(raw)][::-1])
        self.ack(self.acked)

    def frames_after(self, seq: int) -> Iterator[bytes]:
        """Retained frames newer than ``seq``, oldest first, one by one (for replay)."""
        for queue in (self._acked, self._unacked):
            for last, raw in queue:
                if not is_newer(last, seq):
                    continue
                if len(raw) == OVERHEAD + int.from_bytes(raw[11:13], "big"):
                    yield raw
                    continue
                for s, start, stop in _frames(raw):
                    if is_newer(s, seq):
                        yield raw[start:stop]

    def gap(self, last_rx_seq: int) -> bool:
        """True if a frame newer than ``last_rx_seq`` was evicted (RESUMED GAP)."""
        return is_newer(self.evicted_upto, last_rx_seq)

    def clear(self) -> None:
        """Drop everything (the session ended)."""
        self._acked.clear()
        self._unacked.clear()
        self._acked_bytes = self._unacked_bytes = 0


def _frames(raw: bytes) -> Iterator[tuple[int, int, int]]:
    """(SEQ, start, stop) of each frame in an entry of whole encoded frames."""
    pos, end = 0, len(raw)
    while pos < end:
        stop = pos + OVERHEAD + int.from_bytes(raw[pos + 11 : pos + 13], "big")
        yield int.from_bytes(raw[pos + 5 : pos + 9], "big"), pos, stop
        pos = stop
