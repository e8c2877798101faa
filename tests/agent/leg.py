"""A minimal daemon side of the agent leg, over a real Unix socket, for tests.

It speaks frames with the core codec only (encode_frame, FrameDecoder,
payloads), so what it checks is the wire, not the SDK's own view of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from clawterm.agent import AgentServer, Handler, Session
from clawterm.constants import DataFlag, FrameType
from clawterm.frame import Frame, FrameDecoder, encode_frame
from clawterm.payloads import Accept, Ack, Connect, Disconnect, Error, Resume, Resumed, WinSize

T = TypeVar("T")

TIMEOUT = 5.0


class LegClosed(Exception):
    """The agent closed the connection."""


class _Pipe(asyncio.Protocol):
    """Bytes in a buffer; unlike a StreamReader, bytes that arrived before a
    write error (EPIPE after the agent closed) are still readable."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> bytes:
        while not self.buffer and not self.eof:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


class DaemonLeg:
    """The daemon's end of one agent-leg connection."""

    def __init__(self, pipe: _Pipe) -> None:
        assert pipe.transport is not None
        self.pipe = pipe
        self.transport = pipe.transport
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []
        self.session_id = 0
        #: SEQ of the last client DATA frame sent.
        self.tx_seq = 0
        #: Every agent DATA frame received, by SEQ (duplicates overwrite).
        self.data: dict[int, bytes] = {}
        #: Non-DATA frames :meth:`output_until` and :meth:`next_data` read past.
        self.other: list[Frame] = []

    @classmethod
    async def open(cls, path: Path) -> DaemonLeg:
        loop = asyncio.get_running_loop()
        _, pipe = await loop.create_unix_connection(_Pipe, str(path))
        return cls(pipe)

    # -- sending -------------------------------------------------------------

    def send(
        self,
        type: int,
        payload: bytes = b"",
        *,
        seq: int = 0,
        flags: int = 0,
        sid: int | None = None,
    ) -> None:
        sid = self.session_id if sid is None else sid
        self.transport.write(encode_frame(type, sid, seq, payload, flags))

    def send_raw(self, data: bytes) -> None:
        self.transport.write(data)

    def send_data(self, payload: bytes, *, seq: int | None = None, flags: int = 0) -> int:
        """Send client DATA numbered after the last (or with ``seq``); returns its SEQ."""
        if seq is None:
            self.tx_seq += 1
            seq = self.tx_seq
        self.send(FrameType.DATA, payload, seq=seq, flags=flags)
        return seq

    def ack(self, seq: int) -> None:
        self.send(FrameType.ACK, Ack(seq).encode(), seq=self.tx_seq)

    def winsize(self, rows: int, cols: int, xpixel: int | None = None) -> None:
        ws = WinSize(rows, cols, xpixel, 0 if xpixel is not None else None)
        self.send(FrameType.WINSIZE, ws.encode(), seq=self.tx_seq)

    # -- receiving -----------------------------------------------------------

    async def recv(self, timeout: float = TIMEOUT) -> Frame:
        """The next frame from the agent (payload copied); LegClosed at EOF."""
        deadline = time.monotonic() + timeout
        while not self.frames:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame from the agent")
            chunk = await asyncio.wait_for(self.pipe.read(), remaining)
            if not chunk:
                raise LegClosed()
            for view in self.decoder.feed(chunk):
                frame = view._replace(raw=bytes(view.raw))
                if frame.type == FrameType.DATA:
                    self.data[frame.seq] = bytes(frame.payload)
                self.frames.append(frame)
        return self.frames.pop(0)

    async def expect(self, type: int, timeout: float = TIMEOUT) -> Frame:
        """The next frame, which must be of ``type``."""
        frame = await self.recv(timeout)
        assert frame.type == type, f"expected {FrameType(type).name}, got {frame!r}"
        return frame

    async def next_data(self, timeout: float = TIMEOUT) -> Frame:
        """The next DATA frame; other frames go to :attr:`other`."""
        while True:
            frame = await self.recv(timeout)
            if frame.type == FrameType.DATA:
                return frame
            self.other.append(frame)

    async def recv_until(
        self, predicate: Callable[[Frame], bool], timeout: float = TIMEOUT
    ) -> list[Frame]:
        """Frames up to and including the first one ``predicate`` accepts."""
        deadline = time.monotonic() + timeout
        out: list[Frame] = []
        while True:
            frame = await self.recv(max(0.0, deadline - time.monotonic()))
            out.append(frame)
            if predicate(frame):
                return out

    async def output_until(
        self, needle: bytes, timeout: float = TIMEOUT, *, min_bytes: int = 0
    ) -> bytes:
        """Agent DATA payloads concatenated until they contain ``needle``.

        Acknowledges what it reads, as a client would. Other frames are kept
        in :attr:`other`.
        """
        deadline = time.monotonic() + timeout
        out = bytearray()
        while needle not in out or len(out) < min_bytes:
            try:
                frame = await self.recv(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise TimeoutError(f"{needle!r} not in {bytes(out[-400:])!r}") from None
            if frame.type == FrameType.DATA:
                out += frame.payload
                self.ack(frame.seq)
            else:
                self.other.append(frame)
        return bytes(out)

    async def output_match(self, pattern: bytes, timeout: float = TIMEOUT) -> re.Match[bytes]:
        """Like :meth:`output_until`, until the output matches the regex ``pattern``."""
        deadline = time.monotonic() + timeout
        out = b""
        while (match := re.search(pattern, out)) is None:
            out += await self.output_until(b"", max(0.0, deadline - time.monotonic()), min_bytes=1)
        return match

    async def closed(self, timeout: float = TIMEOUT) -> list[Frame]:
        """Every frame until the agent closes the connection."""
        out: list[Frame] = []
        with contextlib.suppress(LegClosed):
            while True:
                out.append(await self.recv(timeout))
        return out

    # -- handshakes ----------------------------------------------------------

    async def connect(self, sid: int, tenant: int = 0, agent: int = 1) -> Accept:
        """CONNECT as the daemon does (SPEC §14); returns the decoded ACCEPT."""
        self.session_id = sid
        payload = Connect(1, 0x07, tenant, agent, bytes(32), os.urandom(16)).encode()
        self.send(FrameType.CONNECT, payload)
        frame = await self.recv()
        assert frame.type == FrameType.ACCEPT, frame
        assert frame.session_id == sid
        assert len(frame.payload) == 24
        return Accept.decode(frame.payload)

    async def resume(self, sid: int, last_rx_seq: int) -> Frame:
        """RESUME (SPEC §14); returns the answer (RESUMED or ERROR), undecoded."""
        self.session_id = sid
        self.send(FrameType.RESUME, Resume(sid, last_rx_seq, bytes(16)).encode())
        return await self.recv()

    def pause_reading(self) -> None:
        """Stop reading the socket, like a daemon whose client is not reading."""
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def close(self) -> None:
        self.transport.close()

    def abort(self) -> None:
        self.transport.abort()


def resumed(frame: Frame) -> Resumed:
    assert frame.type == FrameType.RESUMED, frame
    return Resumed.decode(frame.payload)


def error(frame: Frame) -> Error:
    assert frame.type == FrameType.ERROR, frame
    return Error.decode(frame.payload)


def disconnect(frame: Frame) -> Disconnect:
    assert frame.type == FrameType.DISCONNECT, frame
    return Disconnect.decode(frame.payload)


def is_more(frame: Frame) -> bool:
    return bool(frame.flags & DataFlag.MORE)


@contextlib.asynccontextmanager
async def serving(
    handler: Handler, socket_dir: Path, **kwargs: object
) -> AsyncIterator[AgentServer]:
    """An :class:`AgentServer` on ``socket_dir`` for the duration of the block."""
    server = AgentServer(handler, socket_dir=socket_dir, **kwargs)  # type: ignore[arg-type]
    await server.start()
    try:
        yield server
    finally:
        await server.stop(drain=2.0)


async def eventually(check: Callable[[], T], timeout: float = TIMEOUT, every: float = 0.01) -> T:
    """Poll ``check`` until it returns something truthy; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met: {check}")
        await asyncio.sleep(every)


async def first_session(server: AgentServer) -> Session:
    """The server's first session, once it has one."""
    await eventually(lambda: server.sessions)
    return server.sessions[0]


async def wait_for(aw: Awaitable[T], timeout: float = TIMEOUT) -> T:
    return await asyncio.wait_for(aw, timeout)
