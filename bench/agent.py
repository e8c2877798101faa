"""A lean uvloop echo agent for the benchmarks (``python -m bench.agent``).

Serves ``<socket-dir>/<tenant>/<agent>.sock`` (created under a temporary
name and renamed into place, as the pod registry expects, SPEC §15). Per
connection it answers CONNECT with a 24-byte ACCEPT, echoes every DATA
payload back as one DATA frame of its own numbering (SEQ 1, 2, …), sends
one ACK (u32, highest client SEQ) per chunk read that held DATA, and
answers RESUME with RESUMED. It parses headers with one ``struct`` call per
frame and does not check CRCs (the daemon already did); it keeps no resend
buffer, which only matters across a daemon restart, never measured here.
Every system under test — clawtermd and each peer relay — talks to this
same agent.

Token streams (the AI-agent load): a DATA payload that starts with
:data:`STREAM` is a request, not echoed: ``STREAM`` + ``>dIH`` (rate in
frames/s, count, payload size). The agent then sends that session ``count``
DATA frames at ``rate``, the first one period after the request arrived, as
a model streaming tokens would. Every token payload starts with
``>QQI``: the ``time.monotonic_ns()`` at which it was written, the time it
was due, and the session's token number (0, 1, 2, … over the connection's
life), padded to the requested size; the load generator derives delivery
latency and agent lateness from them (one clock: both run on this host).
Scheduling is one timer wheel of 1 ms slots driven by a 1 ms ticker, so the
agent's cost per token is a ``struct`` pack, a CRC and a ``write``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import struct
import time
from pathlib import Path
from typing import Any

from clawterm.constants import FrameType
from clawterm.crc import crc16
from clawterm.payloads import Accept, Resumed

_HEAD = struct.Struct(">BIIBBH")
_unpack = _HEAD.unpack_from
_pack = _HEAD.pack
_DATA = FrameType.DATA
_ACK = FrameType.ACK

#: A DATA payload starting with this asks for a token stream (module docstring).
STREAM = b"\xffSTREAM!"
STREAM_ARGS = struct.Struct(">dIH")
#: The head of every token payload: sent at (ns), due at (ns), token number.
TOKEN = struct.Struct(">QQI")
#: Slots of the timer wheel, 1 ms each: periods up to this many ms.
WHEEL = 1024


def encode(ftype: int, sid: int, seq: int, payload: bytes | memoryview = b"") -> bytes:
    body = _pack(0x7E, sid, seq, ftype, 0, len(payload)) + payload
    return body + crc16(body).to_bytes(2, "big")


class Streamer:
    """Token streams of every session, on one timer wheel of 1 ms slots."""

    def __init__(self) -> None:
        # Each entry: [protocol, due_ms, period_ms, remaining, pad].
        self.slots: list[list[list[Any]]] = [[] for _ in range(WHEEL)]
        self.last_ms = time.monotonic_ns() // 1_000_000
        self.active = 0
        self.task: asyncio.Task[None] | None = None

    def add(self, proto: EchoProtocol, rate: float, count: int, size: int) -> None:
        if count <= 0 or rate <= 0:
            return
        period = max(1, min(WHEEL - 1, round(1000 / rate)))
        due = time.monotonic_ns() // 1_000_000 + period
        pad = bytes(max(0, size - TOKEN.size))
        self.slots[due % WHEEL].append([proto, due, period, count, pad])
        self.active += 1
        if self.task is None:
            self.last_ms = time.monotonic_ns() // 1_000_000
            self.task = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        slots = self.slots
        while self.active:
            await asyncio.sleep(0.001)
            now_ms = time.monotonic_ns() // 1_000_000
            for ms in range(self.last_ms + 1, now_ms + 1):
                slot = slots[ms % WHEEL]
                if not slot:
                    continue
                slots[ms % WHEEL] = []
                for entry in slot:
                    proto, due, period, remaining, pad = entry
                    if due != ms:  # a later lap of the wheel
                        slots[ms % WHEEL].append(entry)
                        continue
                    if proto.transport is None:
                        self.active -= 1
                        continue
                    proto.token(due * 1_000_000, pad)
                    if remaining > 1:
                        entry[1] = due + period
                        entry[3] = remaining - 1
                        slots[(due + period) % WHEEL].append(entry)
                    else:
                        self.active -= 1
            self.last_ms = now_ms
        self.task = None


STREAMER: list[Streamer] = []


class EchoProtocol(asyncio.Protocol):
    __slots__ = ("buf", "rx", "sid", "tokens", "transport", "tx")

    def __init__(self) -> None:
        self.transport: Any = None
        self.buf = b""
        self.sid = 0
        self.tx = 0
        self.rx = 0
        self.tokens = 0

    def token(self, due_ns: int, pad: bytes) -> None:
        """Write the next token of this session's stream."""
        payload = TOKEN.pack(time.monotonic_ns(), due_ns, self.tokens) + pad
        self.tokens += 1
        self.tx += 1
        body = _pack(0x7E, self.sid, self.tx, _DATA, 0, len(payload)) + payload
        self.transport.write(body + crc16(body).to_bytes(2, "big"))

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        end = len(buf)
        pos = 0
        out: list[bytes] = []
        rx = self.rx
        tx = self.tx
        sid = self.sid
        got_data = False
        mv = memoryview(buf)
        while end - pos >= 15:
            _, fsid, seq, ftype, _, length = _unpack(buf, pos)
            stop = pos + 15 + length
            if stop > end:
                break
            if ftype == _DATA:
                got_data = True
                rx = seq
                if buf[pos + 13 : pos + 13 + len(STREAM)] == STREAM:
                    rate, count, size = STREAM_ARGS.unpack_from(buf, pos + 13 + len(STREAM))
                    if not STREAMER:
                        STREAMER.append(Streamer())
                    STREAMER[0].add(self, rate, count, size)
                    pos = stop
                    continue
                tx += 1
                body = _pack(0x7E, sid, tx, _DATA, 0, length) + mv[pos + 13 : stop - 2]
                out.append(body + crc16(body).to_bytes(2, "big"))
            elif ftype == FrameType.CONNECT:
                sid = fsid
                out.append(
                    encode(FrameType.ACCEPT, sid, 0, Accept(sid, 1, 7, bytes(16), 0).encode())
                )
            elif ftype == FrameType.RESUME:
                sid = fsid
                out.append(encode(FrameType.RESUMED, sid, 0, Resumed(sid, rx).encode()))
            pos = stop
        if got_data:
            out.append(encode(_ACK, sid, 0, rx.to_bytes(4, "big")))
        self.rx, self.tx, self.sid = rx, tx, sid
        self.buf = bytes(mv[pos:]) if pos < end else b""
        if out:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(socket_dir: Path, tenant: int, agent: int) -> None:
    loop = asyncio.get_running_loop()
    path = socket_dir / str(tenant) / f"{agent}.sock"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    server = await loop.create_unix_server(EchoProtocol, path=str(tmp), backlog=4096)
    os.rename(tmp, path)
    stopped = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    print(f"ready {path}", flush=True)
    # Long collector pauses here would be charged to the system under test:
    # what survives is frozen once a second, so collections stay short (the
    # daemon does the same, clawterm/daemon/gcpolicy.py).
    while not stopped.is_set():
        gc.freeze()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), 1.0)
    server.close()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="lean echo agent for the benchmarks")
    parser.add_argument("--socket-dir", type=Path, required=True)
    parser.add_argument("--tenant", type=int, default=0)
    parser.add_argument("--agent", type=int, default=1)
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run(serve(args.socket_dir, args.tenant, args.agent))


if __name__ == "__main__":
    main()
