"""The load generator (``python -m bench.loadgen JSON``): one uvloop process.

Every system is driven by this same program. Sessions are
``asyncio.Protocol`` objects over TLS 1.3; ``proto`` picks the wire format:

* ``ct`` — ClawTerm frames (SPEC §2): CONNECT (58-byte payload, capability
  ACK|RESUME2|WINSIZE; with ``agent_leg``, as the daemon's agent leg sends it:
  a session id in the header and a zero token), wait for ACCEPT, then DATA frames numbered 1, 2, …;
  echoes are parsed with one ``struct`` call per frame (CRC checked only
  with ``verify``); one ACK (u32, highest echo SEQ) goes out with the next
  write after each chunk that held DATA (SPEC §4 allows ACK pacing).
  PINGs are answered.
* ``ws`` — WebSocket (RFC 6455): HTTP/1.1 upgrade, then one masked binary
  message per payload (mask key 0, so the client does no XOR work; the
  server still unmasks), echoes parsed from unmasked server frames.

Three ways to load: ``window`` (closed loop: each session keeps ``window``
frames in flight and sends one new frame per echo), ``rate`` (open loop:
``rate`` frames/s in total, spread round-robin across sessions by a 2 ms
ticker; every frame's send time is kept so each echo gives a round-trip
time) and ``tokens`` (the AI-agent load: each session asks the agent for a
stream of ``size``-byte DATA frames at ``rate_per_session``, see
:mod:`bench.agent`; delivery latency is the agent's write to our read,
ACKs are paced as SPEC §4 asks of a client: within 100 ms of a DATA frame,
at least every 32 frames). Progress is printed as JSON lines: ``start``/``stop`` around the
measurement window (the orchestrator reads the server's CPU time there),
``ramped`` after all sessions are connected, then ``result``.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import os
import resource
import ssl
import struct
import sys
import time
from collections import deque
from typing import Any

from bench.agent import STREAM, STREAM_ARGS, TOKEN
from bench.common import client_ssl
from clawterm.constants import ACK_EVERY_FRAMES, ACK_MAX_DELAY, FrameType
from clawterm.crc import crc16
from clawterm.payloads import Connect, Resume

_HEAD = struct.Struct(">BIIBBH")
_pack = _HEAD.pack
_unpack = _HEAD.unpack_from
_DATA = FrameType.DATA
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def ct_frame(ftype: int, sid: int, seq: int, payload: bytes = b"", flags: int = 0) -> bytes:
    body = _pack(0x7E, sid, seq, ftype, flags, len(payload)) + payload
    return body + crc16(body).to_bytes(2, "big")


def ws_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + _U16.pack(n)
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + _U64.pack(n)
    return head + b"\0\0\0\0" + payload


class Stats:
    def __init__(self) -> None:
        self.rx_frames = 0
        self.rx_bytes = 0
        self.tx_frames = 0
        self.rtts: list[float] = []
        self.timing = False
        self.running = True
        self.errors: list[str] = []
        self.bad = 0
        # Token streams: delivery latency and agent lateness (ns), paced ACKs.
        self.lat: list[int] = []
        self.lag: list[int] = []
        self.ack_queue: deque[tuple[float, CtSession]] = deque()


class Base(asyncio.Protocol):
    """What both wire formats share: window/rate sending and RTT bookkeeping."""

    def __init__(self, st: Stats, payload: bytes, window: int, verify: bool) -> None:
        self.st = st
        self.payload = payload
        self.window = window
        self.verify = verify
        self.transport: Any = None
        self.buf = b""
        self.sent_at: deque[float] = deque()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.loop = asyncio.get_running_loop()
        self.tokens = False
        self.next_token = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def token_in(self, buf: bytes, offset: int, now_ns: int) -> None:
        """One token of a stream: record its latency and check its number."""
        sent, due, number = TOKEN.unpack_from(buf, offset)
        st = self.st
        st.lat.append(now_ns - sent)
        st.lag.append(sent - due)
        if number != self.next_token:
            st.bad += 1
        self.next_token = number + 1

    def request_stream(self, rate: float, count: int, size: int) -> None:
        """Ask the agent for ``count`` tokens of ``size`` bytes at ``rate`` per second."""
        raise NotImplementedError

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed: {exc}"))
        elif self.st.running:
            self.st.errors.append(f"connection lost: {exc}")

    def fail(self, why: str) -> None:
        self.st.errors.append(why)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))

    def make(self, n: int) -> bytes:
        raise NotImplementedError

    def start_window(self) -> None:
        now = time.perf_counter()
        self.sent_at.extend([now] * self.window)
        self.st.tx_frames += self.window
        self.transport.write(self.make(self.window))

    def send_now(self, n: int, now: float) -> None:
        if self.closed:
            return
        self.sent_at.extend([now] * n)
        self.st.tx_frames += n
        self.transport.write(self.make(n))

    def echoed(self, n: int, nbytes: int, extra: bytes) -> None:
        st = self.st
        st.rx_frames += n
        st.rx_bytes += nbytes
        now = time.perf_counter()
        sent_at = self.sent_at
        if st.timing:
            rtts = st.rtts
            for _ in range(n):
                rtts.append(now - sent_at.popleft())
        else:
            for _ in range(n):
                sent_at.popleft()
        if self.window and st.running:
            sent_at.extend([now] * n)
            st.tx_frames += n
            self.transport.write(self.make(n) + extra)
        elif extra:
            self.transport.write(extra)


class CtSession(Base):
    def __init__(
        self, st: Stats, payload: bytes, window: int, verify: bool, token: bytes, agent_leg: bool
    ) -> None:
        super().__init__(st, payload, window, verify)
        self.token = token
        self.agent_leg = agent_leg
        self.sid = 0
        self.seq = 0
        self.rx_seq = 0
        self.resume_token = b""
        self.ack_due = b""
        self.echo_count = 0
        self.unacked = 0
        self.ack_since = 0.0

    def request_stream(self, rate: float, count: int, size: int) -> None:
        self.seq += 1
        body = STREAM + STREAM_ARGS.pack(rate, count, size)
        self.transport.write(ct_frame(_DATA, self.sid, self.seq, body))

    def send_ack(self) -> None:
        self.unacked = 0
        self.ack_since = 0.0
        if not self.closed:
            self.transport.write(
                ct_frame(FrameType.ACK, self.sid, self.seq, self.rx_seq.to_bytes(4, "big"))
            )

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if self.agent_leg:
            # Through the pass-through relay the agent itself is the peer: the
            # agent-leg CONNECT carries a session id and a zero token (SPEC §14).
            sid = int.from_bytes(os.urandom(4), "big") | 1
            connect = Connect(1, 7, 0, 1, bytes(32), os.urandom(16), 58).encode()
            transport.write(ct_frame(FrameType.CONNECT, sid, 0, connect))
            return
        connect = Connect(1, 7, 0, 1, self.token, os.urandom(16), 58).encode()
        transport.write(ct_frame(FrameType.CONNECT, 0, 0, connect))

    def make(self, n: int) -> bytes:
        sid, seq, payload = self.sid, self.seq, self.payload
        size = len(payload)
        out = []
        if self.ack_due:
            out.append(self.ack_due)
            self.ack_due = b""
        for _ in range(n):
            seq += 1
            if self.verify:
                payload = seq.to_bytes(4, "big") + self.payload[4:]
            body = _pack(0x7E, sid, seq, _DATA, 0, size) + payload
            out.append(body + crc16(body).to_bytes(2, "big"))
        self.seq = seq
        return b"".join(out)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        end = len(buf)
        pos = 0
        n = 0
        nbytes = 0
        last = 0
        tokens = self.tokens
        now_ns = time.monotonic_ns() if tokens else 0
        while end - pos >= 15:
            _, sid, seq, ftype, flags, length = _unpack(buf, pos)
            stop = pos + 15 + length
            if stop > end:
                break
            if ftype == _DATA:
                n += 1
                nbytes += length
                last = seq
                if tokens:
                    self.token_in(buf, pos + 13, now_ns)
                    if self.verify and crc16(buf[pos:stop]):
                        self.st.bad += 1
                elif self.verify:
                    self.check(buf[pos:stop], length)
            elif ftype == FrameType.ACCEPT:
                self.sid = sid
                self.resume_token = bytes(buf[pos + 19 : pos + 35])
                if not self.ready.done():
                    self.ready.set_result(None)
            elif ftype == FrameType.KEEPALIVE and flags & 1:
                self.transport.write(ct_frame(FrameType.KEEPALIVE, self.sid, self.seq, b"", 2))
            elif ftype in (FrameType.ERROR, FrameType.DISCONNECT):
                self.fail(f"{FrameType(ftype).name} {bytes(buf[pos + 13 : stop - 2])!r}")
            pos = stop
        self.buf = buf[pos:] if pos < end else b""
        if n and tokens:
            self.rx_seq = last
            self.st.rx_frames += n
            self.st.rx_bytes += nbytes
            self.unacked += n
            if self.unacked >= ACK_EVERY_FRAMES:
                self.send_ack()
            elif not self.ack_since:
                self.ack_since = self.loop.time()
                self.st.ack_queue.append((self.ack_since, self))
        elif n:
            self.rx_seq = last
            ack = ct_frame(FrameType.ACK, self.sid, self.seq, last.to_bytes(4, "big"))
            if self.window:
                self.echoed(n, nbytes, ack)
            else:
                self.ack_due = ack
                self.echoed(n, nbytes, b"")

    def check(self, raw: bytes, length: int) -> None:
        """CRC, length and content of an echo; its payload carries our SEQ (in order)."""
        self.echo_count += 1
        if (
            crc16(raw)
            or length != len(self.payload)
            or int.from_bytes(raw[13:17], "big") != self.echo_count
            or raw[17 : 13 + length] != self.payload[4:]
        ):
            self.st.bad += 1


class WsSession(Base):
    def __init__(self, st: Stats, payload: bytes, window: int, verify: bool, host: str) -> None:
        super().__init__(st, payload, window, verify)
        self.host = host
        self.upgraded = False
        self.msg = ws_frame(payload)

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET / HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def make(self, n: int) -> bytes:
        return self.msg * n

    def request_stream(self, rate: float, count: int, size: int) -> None:
        self.transport.write(ws_frame(STREAM + STREAM_ARGS.pack(rate, count, size)))

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        tokens = self.tokens
        now_ns = time.monotonic_ns() if tokens else 0
        pos = 0
        if not self.upgraded:
            head = buf.find(b"\r\n\r\n")
            if head < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.fail(buf[:80].decode(errors="replace"))
                return
            self.upgraded = True
            pos = head + 4
            if not self.ready.done():
                self.ready.set_result(None)
        end = len(buf)
        n = 0
        nbytes = 0
        while end - pos >= 2:
            b0 = buf[pos]
            ln = buf[pos + 1] & 0x7F
            hl = 2
            if ln == 126:
                if end - pos < 4:
                    break
                ln = _U16.unpack_from(buf, pos + 2)[0]
                hl = 4
            elif ln == 127:
                if end - pos < 10:
                    break
                ln = _U64.unpack_from(buf, pos + 2)[0]
                hl = 10
            stop = pos + hl + ln
            if stop > end:
                break
            op = b0 & 0x0F
            if op == 0x2:
                n += 1
                nbytes += ln
                if tokens:
                    self.token_in(buf, pos + hl, now_ns)
                elif self.verify and buf[pos + hl : stop] != self.payload:
                    self.st.bad += 1
            elif op == 0x9:
                self.transport.write(ws_frame(bytes(buf[pos + hl : stop]), 0xA))
            elif op == 0x8:
                self.fail("websocket close")
            pos = stop
        self.buf = buf[pos:] if pos < end else b""
        if n and tokens:
            self.st.rx_frames += n
            self.st.rx_bytes += nbytes
        elif n:
            self.echoed(n, nbytes, b"")


async def open_sessions(
    spec: dict[str, Any], st: Stats, count: int, payload: bytes
) -> tuple[list[Base], float, int]:
    """Connect ``count`` sessions, ``concurrency`` at a time; (sessions, seconds, failures)."""
    loop = asyncio.get_running_loop()
    ctx = client_ssl(["clawterm/1"] if spec["proto"] == "ct" else None)
    token = bytes.fromhex(spec.get("token", "00" * 32))
    host, port = spec["host"], spec["port"]
    sessions: list[Base] = []
    failures = 0
    sem = asyncio.Semaphore(spec.get("concurrency", 32))

    def factory() -> Base:
        session: Base
        if spec["proto"] == "ct":
            session = CtSession(
                st,
                payload,
                spec.get("window", 0),
                spec.get("verify", False),
                token,
                spec.get("agent_leg", False),
            )
        else:
            session = WsSession(st, payload, spec.get("window", 0), spec.get("verify", False), host)
        session.tokens = bool(spec.get("tokens"))
        return session

    async def one() -> None:
        nonlocal failures
        async with sem:
            for _attempt in range(3):
                try:
                    _, proto = await loop.create_connection(
                        factory, host, port, ssl=ctx, server_hostname="localhost"
                    )
                    await asyncio.wait_for(proto.ready, 15)
                    sessions.append(proto)
                    return
                except (OSError, ConnectionError, TimeoutError, ssl.SSLError) as exc:
                    st.errors.clear()
                    last = exc
                    await asyncio.sleep(0.05)
            failures += 1
            if failures <= 3:
                sys.stderr.write(f"connect failed: {last!r}\n")

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return sessions, time.perf_counter() - t0, failures


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Window:
    """A measurement window: ``start`` now, ``stop`` and the rates at :meth:`close`.

    The orchestrator reads the server's CPU time when it sees ``start`` and
    ``stop``; the rates here are what this process counted in between.
    """

    def __init__(self, st: Stats) -> None:
        self.st = st
        self.frames0, self.bytes0 = st.rx_frames, st.rx_bytes
        self.cpu0, self.t0 = cpu_self(), time.perf_counter()
        emit("start")

    def close(self) -> dict[str, float]:
        st = self.st
        frames, nbytes = st.rx_frames - self.frames0, st.rx_bytes - self.bytes0
        cpu, elapsed = cpu_self() - self.cpu0, time.perf_counter() - self.t0
        emit("stop")
        return {
            "frames": frames,
            "bytes": nbytes,
            "seconds": elapsed,
            "fps": frames / elapsed,
            "mbps": nbytes / elapsed / 1e6,
            "loadgen_cpu": cpu / elapsed,
        }


def percentiles(values: list[float] | list[int], unit: float = 1e3) -> dict[str, float]:
    """p50, p99, p99.9 and max of ``values`` × ``unit`` (default: seconds → ms)."""
    if not values:
        return {}
    values.sort()
    n = len(values)

    def p(q: float) -> float:
        return values[min(n - 1, int(q * n))] * unit

    return {"p50": p(0.5), "p99": p(0.99), "p999": p(0.999), "max": values[-1] * unit}


async def drive_rate(sessions: list[Base], rate: float, seconds: float) -> None:
    """Open loop: ``rate`` frames/s in total, round-robin, for ``seconds``."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    sent = 0
    i = 0
    n = len(sessions)
    while (now := loop.time()) - t0 < seconds:
        due = int(rate * (now - t0)) - sent
        if due > 0:
            per: dict[int, int] = {}
            for _ in range(due):
                per[i] = per.get(i, 0) + 1
                i = (i + 1) % n
            stamp = time.perf_counter()
            for k, c in per.items():
                sessions[k].send_now(c, stamp)
            sent += due
        await asyncio.sleep(0.002)


async def drain(st: Stats, timeout: float) -> None:
    for _ in range(int(timeout / 0.01)):
        if st.rx_frames >= st.tx_frames:
            return
        await asyncio.sleep(0.01)


async def run(spec: dict[str, Any]) -> None:
    st = Stats()
    size = spec.get("size", 64)
    payload = (bytes(range(256)) * (size // 256 + 1))[:size]
    count = spec["sessions"]
    emit("ramping")
    c0 = cpu_self()
    sessions, ramp, failures = await open_sessions(spec, st, count, payload)
    emit(
        "ramped",
        loadgen_cpu=(cpu_self() - c0) / ramp if ramp else 0.0,
        sessions=len(sessions),
        seconds=ramp,
        failures=failures,
        per_second=len(sessions) / ramp if ramp else 0.0,
    )
    if spec.get("hold", 0):
        await asyncio.sleep(spec["hold"])
        emit("held")
    if not sessions or not spec.get("duration"):
        for s in sessions:
            s.transport.close()
        emit("result", sessions=len(sessions), failures=failures, errors=st.errors[:5])
        return
    warmup, duration = spec.get("warmup", 1.0), spec["duration"]
    if spec.get("tokens"):
        await token_steps(spec, st, sessions, failures)
        return
    if spec.get("window"):
        for s in sessions:
            s.start_window()
        await asyncio.sleep(warmup)
        st.timing = spec.get("timing", True)
        window = Window(st)
        await asyncio.sleep(duration)
        rates = window.close()
        st.timing = False
        st.running = False
        await drain(st, 3.0)
    else:
        await rate_steps(spec, st, sessions, failures)
        return
    result = {
        "sessions": len(sessions),
        "failures": failures,
        **rates,
        "lost": max(0, st.tx_frames - st.rx_frames),
        "bad": st.bad,
        "errors": st.errors[:5],
        "rtt_ms": percentiles(st.rtts),
    }
    if spec.get("hold_after"):
        # Sessions stay open (and idle) a while after their traffic: the
        # orchestrator reads the server's RSS on "held_after".
        await asyncio.sleep(spec["hold_after"])
        emit("held_after")
    for s in sessions:
        s.transport.close()
    await asyncio.sleep(0.1)
    emit("result", **result)


async def rate_steps(spec: dict[str, Any], st: Stats, sessions: list[Base], failures: int) -> None:
    """Open-loop load on the first n sessions for each n of ``steps`` (ascending).

    The offered rate is ``rate`` in total, or ``rate_per_session`` × n. After
    each step the echoes still in flight get 5 s to arrive; those that do not
    are reported as ``late`` (lost or late). After the last step, 10 s more,
    then ``lost`` is what never came back at all.
    """
    steps = [n for n in spec.get("steps", []) if n <= len(sessions)] or [len(sessions)]
    per_session = spec.get("rate_per_session", 0.0)

    def offered(n: int) -> float:
        return per_session * n if per_session else float(spec["rate"])

    await drive_rate(sessions[: steps[0]], offered(steps[0]), min(spec.get("warmup", 1.0), 1.0))
    await drain(st, 2.0)
    for n in steps:
        rate = offered(n)
        st.rtts = []
        st.timing = True
        tx0 = st.tx_frames
        window = Window(st)
        await drive_rate(sessions[:n], rate, spec["duration"])
        rates = window.close()
        await drain(st, 5.0)
        st.timing = False
        emit(
            "result",
            sessions=n,
            offered=rate,
            failures=failures,
            **rates,
            sent=st.tx_frames - tx0,
            late=max(0, (st.tx_frames - tx0) - (st.rx_frames - window.frames0)),
            bad=st.bad,
            errors=st.errors[:5],
            rtt_ms=percentiles(st.rtts),
        )
    st.running = False
    await drain(st, 10.0)
    emit("final", lost=max(0, st.tx_frames - st.rx_frames), bad=st.bad, errors=st.errors[:5])
    for s in sessions:
        s.transport.close()
    await asyncio.sleep(0.1)


async def pace_acks(st: Stats) -> None:
    """Send each session's ACK at the latest 100 ms after its first unacknowledged DATA."""
    loop = asyncio.get_running_loop()
    tick = 0.005
    queue = st.ack_queue
    while True:
        await asyncio.sleep(tick)
        # Due a tick early, so the ACK leaves within ACK_MAX_DELAY.
        limit = loop.time() - ACK_MAX_DELAY + tick
        while queue and queue[0][0] <= limit:
            since, session = queue.popleft()
            if session.ack_since == since:
                session.send_ack()


async def token_steps(spec: dict[str, Any], st: Stats, sessions: list[Base], failures: int) -> None:
    """The AI-agent load: token streams on the first n sessions, for each n of ``steps``.

    Each step asks every one of its n sessions for ``rate_per_session`` ×
    ``duration`` tokens of ``size`` bytes; the requests are spread over one
    period so the streams' phases are spread evenly. The measurement window
    (``start``/``stop``) opens after the last request and lasts ``duration``
    (every token of the step is written inside it); then the tokens still on
    their way get 5 s (``late`` counts those that did not arrive by then).
    After the last step, 10 s more for ``lost``: tokens that never arrived.
    """
    loop = asyncio.get_running_loop()
    steps = [n for n in spec.get("steps", []) if n <= len(sessions)] or [len(sessions)]
    rate = float(spec["rate_per_session"])
    size = int(spec.get("size", 40))
    period = 1.0 / rate
    duration = float(spec["duration"])
    count = max(1, round(rate * duration))
    pacer = loop.create_task(pace_acks(st)) if spec["proto"] == "ct" else None
    expected = 0

    async def stream(n: int, count: int) -> None:
        batches = 50
        for b in range(batches):
            for s in sessions[b * n // batches : (b + 1) * n // batches]:
                if not s.closed:
                    s.request_stream(rate, count, size)
            await asyncio.sleep(period / batches)

    async def arrived(target: int, timeout: float) -> None:
        for _ in range(int(timeout / 0.01)):
            if st.rx_frames >= target:
                return
            await asyncio.sleep(0.01)

    warm = max(1, round(rate * min(spec.get("warmup", 1.0), 1.0)))
    await stream(steps[0], warm)
    await asyncio.sleep(warm * period)
    expected += steps[0] * warm
    await arrived(expected, 5.0)
    for n in steps:
        st.lat = []
        st.lag = []
        # The window opens once every stream has been asked for (one period)
        # and lasts as long as a stream: every token of the step is written
        # inside it, at the full rate from start to end.
        await stream(n, count)
        window = Window(st)
        await asyncio.sleep(duration)
        rates = window.close()
        expected += n * count
        await arrived(expected, 5.0)
        emit(
            "result",
            sessions=n,
            offered=rate * n,
            failures=failures,
            sent=n * count,
            **rates,
            relayed=rates["frames"],
            late=max(0, expected - st.rx_frames),
            bad=st.bad,
            errors=st.errors[:5],
            latency_ms=percentiles(st.lat, 1e-6),
            agent_lag_ms=percentiles(st.lag, 1e-6),
        )
    await arrived(expected, 10.0)
    st.running = False
    if pacer is not None:
        pacer.cancel()
    emit("final", lost=max(0, expected - st.rx_frames), bad=st.bad, errors=st.errors[:5])
    for s in sessions:
        s.transport.close()
    await asyncio.sleep(0.1)


async def resume(spec: dict[str, Any]) -> None:
    """Fill a session's replay ring while suspended, then time RESUME to the last byte.

    Per repetition: CONNECT; send ``frames`` DATA frames of ``size`` bytes and
    SUSPEND in one write, never reading the echoes; wait until the daemon's
    ``clawterm_frames{direction="agent_to_client"}`` counter shows every echo
    in the ring; then open a new TLS connection, send RESUME with
    last_rx_seq 0 and time until the last replayed DATA byte arrives.
    """
    from bench.common import metric

    ctx = client_ssl(["clawterm/1"])
    token = bytes.fromhex(spec["token"])
    host, port, mport = spec["host"], spec["port"], spec["metrics_port"]
    size, nframes = spec["size"], spec["frames"]
    payload = (bytes(range(256)) * (size // 256 + 1))[:size]
    totals: list[float] = []
    handshakes: list[float] = []
    replay_bytes = 0
    for _rep in range(spec["reps"]):
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ctx, server_hostname="localhost", limit=1 << 22
        )
        connect = Connect(1, 7, 0, 1, token, os.urandom(16), 58).encode()
        writer.write(ct_frame(FrameType.CONNECT, 0, 0, connect))
        head = await reader.readexactly(15 + 24)
        sid = int.from_bytes(head[1:5], "big")
        rtoken = head[19:35]
        before = metric(mport, "clawterm_frames_total")
        writer.write(
            b"".join(ct_frame(_DATA, sid, i + 1, payload) for i in range(nframes))
            + ct_frame(FrameType.SUSPEND, sid, nframes)
        )
        await writer.drain()
        deadline = time.monotonic() + 10
        while metric(mport, "clawterm_frames_total") < before + 2 * nframes:
            if time.monotonic() > deadline:
                raise TimeoutError("the ring never filled")
            await asyncio.sleep(0.005)
        writer.close()
        await asyncio.sleep(0.02)
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ctx, server_hostname="localhost", limit=1 << 22
        )
        t1 = time.perf_counter()
        writer.write(ct_frame(FrameType.RESUME, sid, 0, Resume(sid, 0, rtoken).encode()))
        got = 0
        data_bytes = 0
        buf = b""
        while got < nframes:
            chunk = await reader.read(1 << 20)
            if not chunk:
                raise EOFError("closed during replay")
            buf += chunk
            pos = 0
            while len(buf) - pos >= 15:
                length = _unpack(buf, pos)[5]
                stop = pos + 15 + length
                if stop > len(buf):
                    break
                if buf[pos + 9] == _DATA:
                    if crc16(buf[pos:stop]) or buf[pos + 13 : stop - 2] != payload:
                        raise ValueError("replayed frame damaged")
                    got += 1
                    data_bytes += stop - pos
                pos = stop
            buf = buf[pos:]
        t2 = time.perf_counter()
        totals.append(t2 - t0)
        handshakes.append(t1 - t0)
        replay_bytes = data_bytes
        writer.write(ct_frame(FrameType.DISCONNECT, sid, nframes))
        await writer.drain()
        writer.close()
    emit(
        "result",
        total_ms=percentiles(list(totals)),
        handshake_ms=percentiles(list(handshakes)),
        replay_ms=percentiles([a - b for a, b in zip(totals, handshakes, strict=True)]),
        ring_bytes=replay_bytes,
        frames=nframes,
        reps=len(totals),
    )


def main() -> None:
    spec = json.loads(sys.argv[1])
    import uvloop

    # The load generator is the measuring instrument: a collector pause here
    # (100 ms and more with thousands of sessions) would show up as the
    # latency of the system under test. One run is short-lived: no collector.
    gc.disable()

    uvloop.run(resume(spec) if spec.get("kind") == "resume" else run(spec))


if __name__ == "__main__":
    main()
