"""Receive-side flow control that follows the application, not the network.

aioquic hands every received byte to the application at once and doubles its
receive windows as soon as the peer has used half of them, so a peer that
sends faster than the application consumes grows the receiver's memory
without bound. :class:`BoundedQuicConnection` replaces that rule: the stream
and connection windows end ``window`` bytes past what the application has
*consumed* (``consumed``), and are raised only as it consumes. A paused
reader therefore stops the peer after at most ``window`` held bytes.

Only the two window-writing methods are overridden; everything else,
including path validation and connection migration, is aioquic's own.
"""

from __future__ import annotations

from typing import Any

from aioquic.quic.connection import (
    CONNECTION_LIMIT_FRAME_CAPACITY,
    MAX_STREAM_DATA_FRAME_CAPACITY,
    QuicConnection,
)
from aioquic.quic.packet import QuicFrameType

__all__ = ["BoundedQuicConnection", "bound_connection", "stream_unacked"]


class BoundedQuicConnection(QuicConnection):
    """A :class:`QuicConnection` whose receive windows open only as data is consumed."""

    ct_window: int = 1 << 20
    ct_consumed: int = 0

    def consumed(self, n: int) -> bool:
        """Record ``n`` bytes handed to the application; True if a window update is due."""
        self.ct_consumed += n
        return self.ct_consumed + self.ct_window - self._local_max_data.value >= self.ct_window // 2

    def _target(self, current: int) -> int:
        target = self.ct_consumed + self.ct_window
        if target - current >= self.ct_window // 2:
            return target
        return current

    def _write_connection_limits(self, builder: Any, space: Any) -> None:
        max_data = self._local_max_data
        max_data.value = self._target(max_data.value)
        for limit in (
            self._local_max_data,
            self._local_max_streams_bidi,
            self._local_max_streams_uni,
        ):
            if limit is not max_data and (limit.sent - limit.used >= limit.value - limit.sent):
                continue
            if limit.value != limit.sent:
                buf = builder.start_frame(
                    limit.frame_type,
                    capacity=CONNECTION_LIMIT_FRAME_CAPACITY,
                    handler=self._on_connection_limit_delivery,
                    handler_args=(limit,),
                )
                buf.push_uint_var(limit.value)
                limit.sent = limit.value

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        # Zero only for locally created unidirectional streams: nothing to grant.
        if not stream.max_stream_data_local:
            return
        stream.max_stream_data_local = self._target(stream.max_stream_data_local)
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream.stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local


def bound_connection(quic: QuicConnection, window: int) -> BoundedQuicConnection:
    """Turn a connection aioquic created into a :class:`BoundedQuicConnection`.

    ``window`` should equal the configuration's ``max_data`` and
    ``max_stream_data`` (the initial windows advertised in the handshake).
    """
    quic.__class__ = BoundedQuicConnection
    assert isinstance(quic, BoundedQuicConnection)
    quic.ct_window = window
    quic.ct_consumed = 0
    return quic


def stream_unacked(quic: QuicConnection, stream_id: int) -> int:
    """Bytes written to ``stream_id`` and not yet acknowledged by the peer."""
    stream: Any = quic._streams.get(stream_id)
    if stream is None:
        return 0
    return len(stream.sender._buffer)


def stream_fin_acked(quic: QuicConnection, stream_id: int) -> bool:
    """True once our FIN on ``stream_id`` and all data before it were acknowledged."""
    stream: Any = quic._streams.get(stream_id)
    return stream is None or bool(stream.sender.is_finished)
