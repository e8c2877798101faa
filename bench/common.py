"""Shared pieces of the benchmark suite: processes, pinning, /proc readings, TLS.

Everything runs on loopback. Systems under test (clawtermd and the peer
relays) are pinned to core 0; the load generator and the echo agent to core 1
(on a one-core machine everything shares core 0).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# The CPUs this process may use when first imported, before the orchestrator
# pins itself to the load generator's core.
_CPUS = sorted(os.sched_getaffinity(0))


def cores() -> tuple[set[int], set[int]]:
    """(server cores, load-generator cores)."""
    avail = _CPUS
    if len(avail) >= 2:
        return {avail[0]}, {avail[1]}
    return {avail[0]}, {avail[0]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (and nothing else), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def spawn(
    argv: Sequence[str],
    cpus: set[int],
    log: Path,
    cwd: Path | None = None,
    stdout_pipe: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` pinned to ``cpus``; stderr (and stdout unless piped) to ``log``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    with open(log, "ab") as out:
        return subprocess.Popen(
            ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv],
            stdout=subprocess.PIPE if stdout_pipe else out,
            stderr=out,
            env=env,
            cwd=cwd or ROOT,
        )


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} not open")


def http_get(port: int, path: str) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def metric(port: int, name: str) -> float:
    """Sum of every sample of metric ``name`` (all labels)."""
    _, body = http_get(port, "/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith((name + " ", name + "{")):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Daemon:
    """A real ``clawtermd`` on loopback in ``tmp``, pinned to ``cpus``."""

    def __init__(self, tmp: Path, cpus: set[int], *args: str) -> None:
        self.dir = tmp
        self.socket_dir = tmp / "sockets"
        self.state_dir = tmp / "state"
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.metrics_port = free_port()
        self.cpus = cpus
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        argv = [
            sys.executable,
            "-m",
            "clawterm.daemon",
            "--host",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--quic-port",
            "0",
            "-s",
            str(self.socket_dir),
            "--state-dir",
            str(self.state_dir),
            "--metrics",
            f"127.0.0.1:{self.metrics_port}",
            "--log-level",
            "warning",
            *self.args,
        ]
        self.proc = spawn(argv, self.cpus, self.dir / "clawtermd.log", cwd=self.dir)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"clawtermd exited:\n{self.log()}")
            with contextlib.suppress(OSError, ValueError, IndexError):
                if http_get(self.metrics_port, "/readyz")[0] == 200:
                    wait_port(self.port, self.proc)
                    return self
            time.sleep(0.05)
        raise TimeoutError(f"clawtermd not ready:\n{self.log()}")

    def wait_agent(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if metric(self.metrics_port, "clawterm_agents_registered") >= 1:
                return
            time.sleep(0.05)
        raise TimeoutError("agent never registered")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def token(self) -> str:
        return (self.state_dir / "dev-token").read_text().strip()

    @property
    def cert(self) -> Path:
        return self.state_dir / "cert.pem"

    @property
    def key(self) -> Path:
        return self.state_dir / "key.pem"

    def log(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return (self.dir / "clawtermd.log").read_text(errors="replace")[-4000:]
        return ""

    def stop(self) -> None:
        stop(self.proc)


def server_ssl(cert: Path, key: Path, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(cert), str(key))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def client_ssl(alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx
