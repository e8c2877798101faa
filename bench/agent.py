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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import struct
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


def encode(ftype: int, sid: int, seq: int, payload: bytes | memoryview = b"") -> bytes:
    body = _pack(0x7E, sid, seq, ftype, 0, len(payload)) + payload
    return body + crc16(body).to_bytes(2, "big")


class EchoProtocol(asyncio.Protocol):
    __slots__ = ("buf", "rx", "sid", "transport", "tx")

    def __init__(self) -> None:
        self.transport: Any = None
        self.buf = b""
        self.sid = 0
        self.tx = 0
        self.rx = 0

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
    await stopped.wait()
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
