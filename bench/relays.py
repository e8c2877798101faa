"""Peer relays measured beside clawtermd (``python -m bench.relays KIND …``).

All three terminate TLS 1.3 on loopback with clawtermd's own certificate
(P-256) and run on uvloop; each client connection gets its own connection to
the same echo agent's Unix socket (:mod:`bench.agent`), like clawtermd's
agent leg.

* ``passthrough`` — the Python floor: TLS terminate, then bytes are copied
  between the TLS connection and the agent connection with no parsing at all
  (the load generator's ClawTerm frames reach the agent unchanged; its
  CONNECT is the agent-leg form, SPEC §14, since the agent is its peer).
  Flow control: each side pauses reading while the other side's write
  buffer is above its high-water mark.
* ``websockets`` — a ``websockets`` (asyncio implementation) server: each
  binary message becomes one ClawTerm DATA frame to the agent (the relay
  sends CONNECT first and waits for ACCEPT); each DATA frame from the agent
  goes back as one binary message; the agent's ACKs are dropped and the
  relay acknowledges the agent's DATA itself (one ACK per chunk read).
* ``picows`` — the same relay on ``picows`` callbacks.

The WebSocket relays therefore do the framing work clawtermd does on its
agent leg (header parse, encode with CRC) but none of its session logic
(no replay ring, no SEQ checks, no ACK pass-through, no resume).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import server_ssl
from clawterm.constants import FrameType
from clawterm.crc import crc16
from clawterm.payloads import Connect

_HEAD = struct.Struct(">BIIBBH")
_pack = _HEAD.pack
_unpack = _HEAD.unpack_from
HIGH_WATER = 1 << 20


class Pipe(asyncio.Protocol):
    """One side of the pass-through relay."""

    def __init__(self, peer: Pipe | None = None) -> None:
        self.transport: Any = None
        self.peer = peer
        self.pending: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
            return
        peer.transport.write(data)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        self.transport = None
        if peer is not None and peer.transport is not None:
            peer.transport.close()


class PassThroughClient(Pipe):
    def __init__(self, agent_sock: str) -> None:
        super().__init__()
        self.agent_sock = agent_sock
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.task = asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, agent = await loop.create_unix_connection(lambda: Pipe(self), self.agent_sock)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        self.peer = agent
        if self.transport is None:
            agent.transport.close()
            return
        if self.pending:
            agent.transport.write(b"".join(self.pending))
            self.pending.clear()


_next_sid = 0


def new_sid() -> int:
    global _next_sid
    _next_sid += 1
    return (os.getpid() << 20 | _next_sid) & 0xFFFFFFFF or 1


def frame(ftype: int, sid: int, seq: int, payload: bytes | memoryview = b"") -> bytes:
    body = _pack(0x7E, sid, seq, ftype, 0, len(payload)) + payload
    return body + crc16(body).to_bytes(2, "big")


class AgentLeg(asyncio.Protocol):
    """A ClawTerm agent connection for a WebSocket relay: DATA payloads out."""

    def __init__(self, sid: int, on_payloads: Callable[[list[bytes]], None]) -> None:
        self.sid = sid
        self.seq = 0
        self.transport: Any = None
        self.buf = b""
        self.on_payloads = on_payloads
        self.accepted = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        connect = Connect(1, 7, 0, 1, bytes(32), os.urandom(16), 58).encode()
        transport.write(frame(FrameType.CONNECT, self.sid, 0, connect))

    def send(self, payloads: list[bytes]) -> None:
        out = []
        for p in payloads:
            self.seq += 1
            out.append(frame(FrameType.DATA, self.sid, self.seq, p))
        self.transport.write(b"".join(out) if len(out) > 1 else out[0])

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        end = len(buf)
        pos = 0
        last = 0
        got: list[bytes] = []
        while end - pos >= 15:
            length = _unpack(buf, pos)[5]
            stop = pos + 15 + length
            if stop > end:
                break
            ftype = buf[pos + 9]
            if ftype == FrameType.DATA:
                got.append(buf[pos + 13 : stop - 2])
                last = _unpack(buf, pos)[2]
            elif ftype == FrameType.ACCEPT and not self.accepted.done():
                self.accepted.set_result(True)
            pos = stop
        self.buf = buf[pos:] if pos < end else b""
        if got:
            # The WebSocket client has no ACKs: acknowledge on delivery, as
            # clawtermd does for clients without the ACK capability (SPEC §4),
            # so an agent that keeps unacknowledged output never stalls.
            self.transport.write(frame(FrameType.ACK, self.sid, self.seq, last.to_bytes(4, "big")))
            self.on_payloads(got)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.accepted.done():
            self.accepted.set_exception(ConnectionError("agent closed"))


async def run_passthrough(port: int, ctx: Any, agent_sock: str) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: PassThroughClient(agent_sock), "127.0.0.1", port, ssl=ctx, backlog=4096
    )


async def run_websockets(port: int, ctx: Any, agent_sock: str) -> Any:
    from websockets.asyncio.server import ServerConnection, serve

    loop = asyncio.get_running_loop()

    async def handler(ws: ServerConnection) -> None:
        queue: asyncio.Queue[list[bytes] | None] = asyncio.Queue()
        _, leg = await loop.create_unix_connection(
            lambda: AgentLeg(new_sid(), queue.put_nowait), agent_sock
        )
        await leg.accepted

        async def downstream() -> None:
            while (batch := await queue.get()) is not None:
                for payload in batch:
                    await ws.send(payload)

        task = loop.create_task(downstream())
        try:
            async for msg in ws:
                leg.send([msg if isinstance(msg, bytes) else msg.encode()])
        finally:
            task.cancel()
            if leg.transport is not None:
                leg.transport.close()

    return await serve(
        handler,
        "127.0.0.1",
        port,
        ssl=ctx,
        compression=None,
        max_size=1 << 20,
        ping_interval=None,
        backlog=4096,
    )


async def run_picows(port: int, ctx: Any, agent_sock: str) -> Any:
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

    loop = asyncio.get_running_loop()

    class Relay(WSListener):  # type: ignore[misc]
        def __init__(self) -> None:
            self.leg: AgentLeg | None = None
            self.pending: list[bytes] = []
            self.ws: Any = None
            self.task: asyncio.Task[None] | None = None

        def on_ws_connected(self, transport: WSTransport) -> None:
            self.ws = transport
            self.task = loop.create_task(self._open())

        async def _open(self) -> None:
            send = self.ws.send
            binary = WSMsgType.BINARY

            def out(payloads: list[bytes]) -> None:
                for p in payloads:
                    send(binary, p)

            _, leg = await loop.create_unix_connection(lambda: AgentLeg(new_sid(), out), agent_sock)
            await leg.accepted
            self.leg = leg
            if self.pending:
                leg.send(self.pending)
                self.pending = []

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.BINARY:
                payload = frame.get_payload_as_bytes()
                if self.leg is None:
                    self.pending.append(payload)
                else:
                    self.leg.send([payload])
            elif frame.msg_type == WSMsgType.CLOSE:
                transport.disconnect()

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            if self.leg is not None and self.leg.transport is not None:
                self.leg.transport.close()

    return await ws_create_server(lambda _req: Relay(), "127.0.0.1", port, ssl=ctx, backlog=4096)


async def amain(kind: str, port: int, cert: Path, key: Path, agent_sock: str) -> None:
    alpn = ["clawterm/1"] if kind == "passthrough" else None
    ctx = server_ssl(cert, key, alpn)
    runner = {"passthrough": run_passthrough, "websockets": run_websockets, "picows": run_picows}
    server = await runner[kind](port, ctx, agent_sock)
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    await stopped.wait()
    server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="peer relays for the benchmarks")
    parser.add_argument("kind", choices=["passthrough", "websockets", "picows"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--agent-sock", required=True)
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run(amain(args.kind, args.port, args.cert, args.key, args.agent_sock))


if __name__ == "__main__":
    main()
