"""Shared test harness: a real ``clawtermd`` process, a wire-level client, an echo agent.

Nothing here mocks the daemon: :class:`DaemonProcess` runs ``python -m
clawterm.daemon`` on loopback with real TLS 1.3, a real socket directory
watched by inotify, and a real state directory, and can kill it for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clawterm.constants import ErrorCode, FrameType
from clawterm.frame import Frame, FrameDecoder, encode_frame
from clawterm.payloads import Accept, Ack, Connect, Error, Resume, Resumed
from clawterm.sequencing import ReceiveState, SendBuffer

ROOT = Path(__file__).resolve().parents[1]


async def until(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> None:
    """Poll ``predicate`` on the event loop until it holds; fail after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


class RecordingTransport:
    """Stands in for a socket under the daemon's leg adapters: keeps every write.

    For tests that drive :mod:`clawterm.daemon.legs` in-process (the only
    fake in the daemon tests: the adapters' own behaviour is the subject).
    """

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else None

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s")


class DaemonProcess:
    """A real ``clawtermd`` on loopback, in its own temporary directories."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.dir = tmp
        self.socket_dir = tmp / "sockets"
        self.state_dir = tmp / "state"
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.quic_port = 0
        self.metrics_port = free_port()
        self.args = list(args)
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = tmp / "clawtermd.log"
        self.starts = 0

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "clawterm.daemon",
            "--host",
            self.host,
            "-p",
            str(self.port),
            "--quic-port",
            str(self.quic_port),
            "-s",
            str(self.socket_dir),
            "--state-dir",
            str(self.state_dir),
            "--metrics",
            f"127.0.0.1:{self.metrics_port}",
            *self.args,
        ]

    def start(self, timeout: float = 15.0) -> DaemonProcess:
        self.starts += 1
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.dir
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"clawtermd exited {self.proc.returncode}:\n{self.log()}")
            if self.ready():
                return self
            time.sleep(0.02)
        raise TimeoutError(f"clawtermd did not become ready:\n{self.log()}")

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=0.5) as s:
                s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return s.recv(64).startswith(b"HTTP/1.1 200") and self._port_open()
        except OSError:
            return False

    def _port_open(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def http(self, path: str) -> tuple[int, bytes]:
        with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=5) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    def metric(self, name: str, **labels: str) -> float:
        _, body = self.http("/metrics")
        want = name + (
            "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
        )
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(want + " ") or (not labels and line.startswith(name + "{")):
                total += float(line.rsplit(" ", 1)[1])
        return total

    @property
    def token(self) -> bytes:
        return bytes.fromhex((self.state_dir / "dev-token").read_text().strip())

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def rss(self) -> int:
        """Resident set size of the daemon process, bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def client_ssl() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["clawterm/1"])
    return ctx


class WireClient:
    """A wire-level test client: frames in, frames out, nothing hidden."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []
        self.session_id = 0
        self.resume_token = b""
        self.tx = SendBuffer(limit=1 << 40)
        self.rx = ReceiveState()

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> WireClient:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=client_ssl(), server_hostname="localhost", limit=1 << 20
        )
        return cls(reader, writer)

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send(
        self, ftype: int, payload: bytes = b"", seq: int = 0, flags: int = 0, sid: int | None = None
    ) -> None:
        self.writer.write(
            encode_frame(ftype, self.session_id if sid is None else sid, seq, payload, flags)
        )

    def send_data(self, payload: bytes) -> None:
        self.writer.write(self.tx.encode_data(self.session_id, payload))

    async def read_frame(self, timeout: float = 5.0) -> Frame:
        while not self.frames:
            data = await asyncio.wait_for(self.reader.read(1 << 20), timeout)
            if not data:
                raise EOFError("connection closed")
            self.frames.extend(f._replace(raw=bytes(f.raw)) for f in self.decoder.feed(data))
        return self.frames.pop(0)

    async def expect(self, ftype: int, timeout: float = 5.0) -> Frame:
        frame = await self.read_frame(timeout)
        while frame.type == FrameType.ACK and ftype != FrameType.ACK:
            # End-to-end ACKs from the agent may arrive at any point (SPEC §4).
            seq = Ack.decode(frame.payload).seq
            if seq is not None:
                self.tx.ack(seq)
            frame = await self.read_frame(timeout)
        if frame.type != ftype:
            detail = ""
            if frame.type == FrameType.ERROR:
                err = Error.decode(frame.payload)
                detail = f" ({ErrorCode(err.code).name}: {err.message})"
            raise AssertionError(f"expected {FrameType(ftype).name}, got {frame!r}{detail}")
        return frame

    async def expect_error(self, code: ErrorCode, timeout: float = 5.0) -> str:
        frame = await self.expect(FrameType.ERROR, timeout)
        err = Error.decode(frame.payload)
        assert err.code == code, (
            f"expected {code.name}, got {ErrorCode(err.code).name}: {err.message}"
        )
        await self.expect_closed(timeout)
        return err.message

    async def expect_closed(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while True:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    return
                frames = list(self.decoder.feed(data))
                assert not frames or all(f.type == FrameType.DATA for f in frames), frames

    async def connect(
        self,
        token: bytes,
        tenant: int = 0,
        agent: int = 1,
        capabilities: int = 7,
        nonce: bytes | None = None,
        size: int = 58,
    ) -> Accept:
        payload = Connect(1, capabilities, tenant, agent, token, nonce or os.urandom(16), size)
        self.send(FrameType.CONNECT, payload.encode(), sid=0)
        frame = await self.expect(FrameType.ACCEPT)
        accept = Accept.decode(frame.payload)
        self.session_id = accept.session_id
        self.resume_token = accept.resume_token or b""
        return accept

    async def resume(self, session_id: int, token: bytes, last_rx: int | None = None) -> Frame:
        self.session_id = session_id
        self.resume_token = token
        last = self.rx.last_rx if last_rx is None else last_rx
        self.send(FrameType.RESUME, Resume(session_id, last, token).encode(), sid=session_id)
        frame = await self.expect(FrameType.RESUMED)
        return frame

    def resend_after_resumed(self, frame: Frame) -> None:
        resumed = Resumed.decode(frame.payload)
        for raw in self.tx.resumed(resumed.last_rx_seq or 0):
            self.writer.write(raw)

    async def data(self, timeout: float = 5.0, ack: bool = True) -> bytes:
        """The next new DATA payload (duplicates dropped, ACKs handled)."""
        while True:
            frame = await self.read_frame(timeout)
            if frame.type == FrameType.ACK:
                seq = Ack.decode(frame.payload).seq
                if seq is not None:
                    self.tx.ack(seq)
                continue
            if frame.type == FrameType.KEEPALIVE:
                continue
            if frame.type != FrameType.DATA:
                raise AssertionError(f"expected DATA, got {frame!r}")
            if self.rx.receive(frame.seq, len(frame.payload), 0.0):
                if ack:
                    self.send(FrameType.ACK, Ack(frame.seq).encode())
                return bytes(frame.payload)

    async def read_exactly(self, n: int, timeout: float = 10.0) -> bytes:
        out = bytearray()
        while len(out) < n:
            out += await self.data(timeout)
        return bytes(out)

    def abort(self) -> None:
        transport = self.writer.transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 2)


class EchoAgent:
    """A minimal agent on a real Unix socket, correct end to end (SPEC §4, §14).

    Echoes every DATA payload back as its own DATA, numbers its frames, keeps
    them until the client ACKs, acknowledges client DATA, and supports
    agent-leg RESUME. Runs on the test's event loop.
    """

    def __init__(
        self,
        socket_dir: Path,
        tenant: int = 0,
        agent: int = 1,
        refuse: bool = False,
        silent: bool = False,
        prompt: bytes = b"",
    ) -> None:
        self.path = socket_dir / str(tenant) / f"{agent}.sock"
        self.refuse = refuse
        self.silent = silent
        self.prompt = prompt
        self.server: asyncio.AbstractServer | None = None
        self.sessions: dict[int, dict[str, Any]] = {}
        self.connections: list[asyncio.StreamWriter] = []
        self.events: list[tuple[int, str]] = []
        self.transform: Any = None
        #: Cleared: the agent stops calling read() (its socket then fills up).
        self.reading = asyncio.Event()
        self.reading.set()

    async def start(self) -> EchoAgent:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        self.server = await asyncio.start_unix_server(self._serve, path=str(tmp))
        os.rename(tmp, self.path)
        return self

    async def stop(self, unlink: bool = True) -> None:
        if self.server is not None:
            self.server.close()
        for w in self.connections:
            w.transport.abort()
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def crash_connections(self) -> None:
        for w in self.connections:
            w.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.append(writer)
        decoder = FrameDecoder()
        state: dict[str, Any] | None = None
        try:
            while (await self.reading.wait()) and (data := await reader.read(1 << 16)):
                for frame in decoder.feed(data):
                    state = self._frame(frame, state, writer)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            # The loop is shutting down with the agent: end quietly.
            return
        finally:
            writer.close()

    def _frame(
        self, frame: Frame, state: dict[str, Any] | None, writer: asyncio.StreamWriter
    ) -> dict[str, Any] | None:
        sid = frame.session_id
        if frame.type == FrameType.CONNECT:
            if self.silent:
                return state
            if self.refuse:
                writer.write(
                    encode_frame(
                        FrameType.ERROR, sid, 0, Error(ErrorCode.AGENT_REFUSED, "no").encode()
                    )
                )
                return state
            state = {
                "tx": SendBuffer(limit=1 << 40),
                "rx": ReceiveState(),
                "writer": writer,
                "winsize": None,
            }
            self.sessions[sid] = state
            writer.write(
                encode_frame(FrameType.ACCEPT, sid, 0, Accept(sid, 1, 7, bytes(16), 0).encode())
            )
            if self.prompt:
                writer.write(state["tx"].encode_data(sid, self.prompt))
            self.events.append((sid, "connect"))
            return state
        if frame.type == FrameType.RESUME:
            state = self.sessions.get(sid)
            if state is None:
                writer.write(
                    encode_frame(
                        FrameType.ERROR, sid, 0, Error(ErrorCode.NO_SUCH_SESSION, "gone").encode()
                    )
                )
                return None
            state["writer"] = writer
            resume = Resume.decode(frame.payload)
            writer.write(
                encode_frame(FrameType.RESUMED, sid, 0, Resumed(sid, state["rx"].last_rx).encode())
            )
            for raw in state["tx"].resend_after(resume.last_rx_seq or 0):
                writer.write(raw)
            self.events.append((sid, "resume"))
            return state
        if state is None:
            return None
        if frame.type == FrameType.DATA:
            if state["rx"].receive(frame.seq, len(frame.payload), 0.0):
                payload = bytes(frame.payload)
                if self.transform is not None:
                    payload = self.transform(payload)
                if payload:
                    writer.write(state["tx"].encode_data(sid, payload))
                writer.write(encode_frame(FrameType.ACK, sid, 0, Ack(frame.seq).encode()))
        elif frame.type == FrameType.ACK:
            seq = Ack.decode(frame.payload).seq
            if seq is not None:
                state["tx"].ack(seq)
        elif frame.type == FrameType.WINSIZE:
            state["winsize"] = bytes(frame.payload)
            self.events.append((sid, "winsize"))
        elif frame.type == FrameType.SUSPEND:
            self.events.append((sid, "suspend"))
        elif frame.type == FrameType.RESUMED:
            self.events.append((sid, "resumed"))
        elif frame.type == FrameType.DISCONNECT:
            self.events.append((sid, "disconnect"))
        return state

    def write(self, sid: int, payload: bytes) -> None:
        """Send agent output to session ``sid`` (as DATA, kept until ACKed)."""
        state = self.sessions[sid]
        for i in range(0, max(len(payload), 1), 60000):
            state["writer"].write(state["tx"].encode_data(sid, payload[i : i + 60000]))

    def disconnect(self, sid: int, code: int = 0, reason: str = "done") -> None:
        from clawterm.payloads import Disconnect

        state = self.sessions[sid]
        state["writer"].write(
            encode_frame(FrameType.DISCONNECT, sid, 0, Disconnect(code, reason).encode())
        )


@contextlib.contextmanager
def daemon(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp, *args, env=env)
    d.start()
    try:
        yield d
    finally:
        d.stop()
