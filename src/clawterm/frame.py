"""Frames: encoding and an incremental, copy-avoiding decoder (SPEC §2).

Layout, all integers big-endian::

    0      1      5      9    10     11     13         13+LEN
    +------+------+------+----+------+------+----------+-------+
    | 0x7E | SID  | SEQ  |TYPE|FLAGS | LEN  | PAYLOAD  | CRC16 |
    +------+------+------+----+------+------+----------+-------+

How the decoder works. Transports hand us chunks that hold one whole frame
or several. :meth:`FrameDecoder.feed` walks such a chunk in place and returns
its frames in a list: each has ``payload`` and ``raw`` as :class:`memoryview`
slices of the chunk, so nothing is copied. Only a frame cut by a chunk
boundary is gathered in the decoder's buffer, and only its own bytes: once
that frame is complete it is returned (as ``bytes``) and the rest of the
chunk is again walked in place. The buffer therefore never holds more than
one incomplete frame, i.e. less than ``max_payload + 15`` bytes. Decoding
is eager (a plain loop, no generator): a chunk usually holds a single frame
when traffic is sparse, and then per-call costs are what counts.

Checks happen as early as the bytes allow: the FLAG byte as soon as a frame's
first byte arrives, LEN against ``max_payload`` as soon as its header does,
the CRC when the frame is complete. A failed check raises a
:class:`~clawterm.errors.RemoteProtocolError` carrying the spec's ERROR code
once the good frames before it have been handed out; the caller answers
ERROR and closes (SPEC §2). The decoder never resynchronises.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from .constants import FLAG, HEADER_SIZE, MAX_PAYLOAD, OVERHEAD, FrameType
from .crc import crc16
from .errors import BadCrc, BadFrame, LocalProtocolError, RemoteProtocolError, TooLarge

__all__ = ["Buffer", "Frame", "FrameDecoder", "encode_frame", "frame_with_flags"]

#: Any bytes-like object a frame's fields may be.
Buffer = bytes | bytearray | memoryview

_HEADER = struct.Struct(">BIIBBH")
_unpack_header = _HEADER.unpack_from
_pack_header = _HEADER.pack
_tuple_new = tuple.__new__
# Payload size above which encode_frame joins rather than concatenates.
_JOIN_ABOVE = 2048


class Frame(NamedTuple):
    """One decoded frame.

    ``raw`` (and so ``payload``, a slice of it made on access) may be a
    :class:`memoryview` of the chunk the frame arrived in: call ``bytes()`` on
    it if you keep it past the handling of that chunk and need an independent
    copy. The relay passes ``raw`` on and never needs the payload.
    """

    #: TYPE byte; compare with :class:`~clawterm.constants.FrameType` members.
    type: int
    #: FLAGS byte.
    flags: int
    #: SESSION_ID header field.
    session_id: int
    #: SEQ header field.
    seq: int
    #: The whole encoded frame, CRC included, exactly as received.
    raw: Buffer

    @property
    def payload(self) -> Buffer:
        """The payload: a slice of :attr:`raw` (no copy when raw is a memoryview)."""
        return self.raw[13:-2]

    def __repr__(self) -> str:
        try:
            name = FrameType(self.type).name
        except ValueError:
            name = f"0x{self.type:02x}"
        return (
            f"Frame({name}, sid={self.session_id}, seq={self.seq}, "
            f"flags=0x{self.flags:02x}, len={len(self.payload)})"
        )


def encode_frame(
    type: int, session_id: int, seq: int, payload: Buffer = b"", flags: int = 0
) -> bytes:
    """Encode one frame.

    Raises :class:`~clawterm.errors.LocalProtocolError` if a field is out of
    range or the payload is longer than 65535 bytes.
    """
    n = len(payload)
    try:
        head = _pack_header(FLAG, session_id, seq, type, flags, n)
    except struct.error as exc:
        raise LocalProtocolError(f"frame field out of range: {exc}") from None
    if n < _JOIN_ABOVE:
        # Small frames: two short concatenations beat join() and a second CRC call.
        body = head + payload
        return body + crc16(body).to_bytes(2, "big")
    # Large frames: copy the payload once.
    crc = crc16(payload, crc16(head))
    return b"".join((head, payload, crc.to_bytes(2, "big")))


def frame_with_flags(raw: Buffer, flags: int) -> bytes:
    """Return the encoded frame ``raw`` with its FLAGS byte replaced.

    The CRC is recomputed. The daemon uses this to set REPLAY on frames it
    replays from its ring (SPEC §4, §6).
    """
    out = bytearray(raw)
    out[10] = flags
    out[-2:] = crc16(memoryview(out)[:-2]).to_bytes(2, "big")
    return bytes(out)


class FrameDecoder:
    """Incremental frame decoder.

    Feed it whatever the transport delivered, in pieces of any size::

        for frame in decoder.feed(data):
            handle(frame)

    A malformed frame raises a :class:`~clawterm.errors.RemoteProtocolError`
    subclass from the iteration, after every good frame before it has been
    yielded; from then on the decoder is spent and every later :meth:`feed`
    raises the same error when iterated.
    """

    __slots__ = ("_buf", "_error", "_need", "max_payload")

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        if not 0 <= max_payload <= MAX_PAYLOAD:
            raise LocalProtocolError(f"max_payload must be 0..{MAX_PAYLOAD}")
        #: Largest payload accepted; a longer LEN is TOO_LARGE (SPEC §2).
        self.max_payload = max_payload
        self._buf = bytearray()
        # Bytes the frame in _buf needs before it can be looked at again:
        # the header size until the header is in, then the whole frame size.
        self._need = HEADER_SIZE
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (always < max_payload + 15)."""
        return len(self._buf)

    def feed(self, data: Buffer) -> Iterable[Frame]:
        """Decode the frames that ``data`` completes, in order.

        Returns a list, or, when ``data`` holds a malformed frame (or the
        decoder is spent), an iterator that yields the good frames before it
        and then raises the error. Frames may be :class:`memoryview` slices
        of ``data`` (see :class:`Frame`).
        """
        if self._error is not None:
            return _raise_after([], self._error)
        frames: list[Frame] = []
        try:
            self._decode(data, frames)
        except RemoteProtocolError as exc:
            self._error = exc
            self._buf.clear()
            return _raise_after(frames, exc)
        return frames

    def _check_header(self, flag: int, length: int) -> None:
        if flag != FLAG:
            raise BadFrame(f"bad frame: first byte 0x{flag:02x}, expected 0x7e")
        if length > self.max_payload:
            raise TooLarge(f"payload of {length} bytes exceeds the limit of {self.max_payload}")

    def _decode(self, data: Buffer, frames: list[Frame]) -> None:
        mv = memoryview(data)
        end = len(mv)
        pos = 0
        buf = self._buf
        if buf:
            # Complete the frame cut by the previous chunk, copying only its bytes.
            while True:
                take = self._need - len(buf)
                if take > end - pos:
                    buf += mv[pos:]
                    if len(buf) >= HEADER_SIZE and self._need == HEADER_SIZE:
                        self._learn_length()
                    return
                buf += mv[pos : pos + take]
                pos += take
                if self._need == HEADER_SIZE:
                    self._learn_length()
                    continue
                raw = bytes(buf)
                buf.clear()
                self._need = HEADER_SIZE
                if crc16(raw):
                    raise BadCrc("bad CRC")
                _, sid, seq, typ, flags, _ = _unpack_header(raw)
                frames.append(_tuple_new(Frame, (typ, flags, sid, seq, raw)))
                break

        max_payload = self.max_payload
        if pos == 0 and end >= OVERHEAD:
            # A chunk that is exactly one frame (sparse traffic) needs no slice.
            flag, sid, seq, typ, flags, length = _unpack_header(mv)
            if OVERHEAD + length == end and flag == FLAG and length <= max_payload:
                if crc16(mv):
                    raise BadCrc("bad CRC")
                frames.append(_tuple_new(Frame, (typ, flags, sid, seq, mv)))
                return

        # The loop below runs once per frame: names it uses are local.
        append, unpack, check, new = frames.append, _unpack_header, crc16, _tuple_new
        while end - pos >= OVERHEAD:
            flag, sid, seq, typ, flags, length = unpack(mv, pos)
            if flag != FLAG or length > max_payload:
                self._check_header(flag, length)
            stop = pos + OVERHEAD + length
            if stop > end:
                break
            raw_view = mv[pos:stop]
            if check(raw_view):
                raise BadCrc("bad CRC")
            append(new(Frame, (typ, flags, sid, seq, raw_view)))
            pos = stop

        if pos < end:
            # An incomplete frame: check what can be checked, keep its bytes.
            if mv[pos] != FLAG:
                self._check_header(mv[pos], 0)
            buf += mv[pos:]
            if len(buf) >= HEADER_SIZE:
                self._learn_length()

    def _learn_length(self) -> None:
        flag, _, _, _, _, length = _unpack_header(self._buf)
        self._check_header(flag, length)
        self._need = OVERHEAD + length


def _raise_after(frames: list[Frame], error: RemoteProtocolError) -> Iterator[Frame]:
    """Yield ``frames``, then raise ``error`` (a chunk that ended in a bad frame)."""
    yield from frames
    raise error
