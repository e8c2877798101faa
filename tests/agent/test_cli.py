"""``clawterm-agent`` as a real process: echo, demo, pty, environment, SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clawterm.constants import ErrorCode, FrameType
from clawterm.frame import Frame

from .leg import DaemonLeg, disconnect, eventually

_SCRIPT = Path(sys.executable).with_name("clawterm-agent")
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "clawterm.agent.cli"]


class AgentProcess:
    """A real ``clawterm-agent`` process; ready once its socket file exists."""

    def __init__(
        self,
        socket_dir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        tenant: int = 0,
        agent: int = 1,
        log: Path | None = None,
    ) -> None:
        self.path = socket_dir / str(tenant) / f"{agent}.sock"
        self.log = log or socket_dir / "agent.log"
        environ = {**os.environ, **(env or {})}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*COMMAND, *args], stdout=out, stderr=subprocess.STDOUT, env=environ
            )

    async def ready(self, timeout: float = 10.0) -> AgentProcess:
        deadline = time.monotonic() + timeout
        while not self.path.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode}: {self.output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no socket: {self.output()}")
            await asyncio.sleep(0.01)
        return self

    async def wait(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(self.output())
            await asyncio.sleep(0.01)
        return code

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def processes() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for p in started:
        p.kill()


def common(socket_dir: Path) -> list[str]:
    return ["--socket-dir", str(socket_dir), "--tenant", "0", "--agent", "1"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_disconnects_every_session_and_removes_the_socket(
    socket_dir: Path, processes: list[AgentProcess], signum: int
) -> None:
    # Options from the environment (and defaults for the rest).
    env = {
        "CLAWTERM_SOCKET_DIR": str(socket_dir),
        "CLAWTERM_TENANT": "4",
        "CLAWTERM_AGENT": "9",
        "CLAWTERM_GRACE": "30",
    }
    agent = AgentProcess(socket_dir, "echo", env=env, tenant=4, agent=9)
    processes.append(agent)
    await agent.ready()
    legs = []
    for sid in (1, 2):
        leg = await DaemonLeg.open(agent.path)
        await leg.connect(sid, tenant=4, agent=9)
        leg.send_data(b"ping %d" % sid)
        assert bytes((await leg.next_data()).payload) == b"ping %d" % sid
        legs.append(leg)
    agent.proc.send_signal(signum)
    for leg in legs:
        frames = await leg.closed()
        d = disconnect(frames[-1])
        assert (d.code, d.reason) == (ErrorCode.SHUTTING_DOWN, "agent shutting down")
    assert await agent.wait() == 0
    assert not agent.path.exists()
    assert "Traceback" not in agent.output()


async def test_echo_returns_every_chunk_as_one_frame(
    socket_dir: Path, processes: list[AgentProcess]
) -> None:
    agent = AgentProcess(socket_dir, "echo", *common(socket_dir))
    processes.append(agent)
    await agent.ready()
    leg = await DaemonLeg.open(agent.path)
    await leg.connect(77)
    rng = __import__("random").Random(7)
    chunks = [rng.randbytes(rng.choice([0, 1, 17, 1000, 4096, 65535])) for _ in range(300)]
    # A client keeps a window of frames in flight (SPEC §4).
    echoed: list[Frame] = []
    sent = 0
    while len(echoed) < len(chunks):
        while sent < len(chunks) and sent - len(echoed) < 16:
            leg.send_data(chunks[sent])
            sent += 1
        frame = await leg.next_data()
        echoed.append(frame)
        leg.ack(frame.seq)
    assert [f.seq for f in echoed] == list(range(1, 301))
    assert [bytes(f.payload) for f in echoed] == chunks
    leg.close()


async def test_demo_conversation(socket_dir: Path, processes: list[AgentProcess]) -> None:
    agent = AgentProcess(socket_dir, "demo", "--rate", "200", *common(socket_dir))
    processes.append(agent)
    await agent.ready()
    leg = await DaemonLeg.open(agent.path)
    await leg.connect(88)
    banner = await leg.output_until(b"you> ")
    assert b"demo agent" in banner
    # Typed one byte at a time, with a typo fixed by backspace, ended by CR.
    for byte in b"hellp\x7fo there":
        leg.send_data(bytes([byte]))
    echo = await leg.output_until(b"o there")
    assert echo == b"hellp\b \bo there"
    t0 = time.monotonic()
    frames_before = len(leg.data)
    leg.send_data(b"\r")
    reply = await leg.output_until(b"you> ")
    elapsed = time.monotonic() - t0
    text = reply.decode()
    assert "agent> " in text and "“hello”" in text and "first thing" in text
    # Streamed token by token at about 200 tokens/s.
    tokens = len(re.findall(r"\S+", text.split("agent> ")[1]))
    assert len(leg.data) - frames_before >= tokens
    assert elapsed >= tokens / 200 * 0.5
    # It remembers the first message.
    leg.send_data(b"tell me more about hello\n")
    text = (await leg.output_until(b"you> ")).decode()
    assert "message 1: “hello there”" in text
    assert "(That was message 2.)" in text
    leg.send_data(b"/history\r")
    text = (await leg.output_until(b"you> ")).decode()
    assert "1. hello there" in text and "2. tell me more about hello" in text
    # Ctrl-D on an empty line ends the session.
    leg.send_data(b"\x04")
    frames = await leg.closed()
    assert disconnect(frames[-1]).reason == "bye"


async def test_pty_via_cli_and_sigterm_hangs_up_the_program(
    socket_dir: Path, processes: list[AgentProcess]
) -> None:
    agent = AgentProcess(
        socket_dir, "pty", *common(socket_dir), "--", "bash", "--norc", "--noprofile"
    )
    processes.append(agent)
    await agent.ready()
    leg = await DaemonLeg.open(agent.path)
    await leg.connect(99)
    leg.winsize(20, 70)
    leg.send_data(b"echo pid=$$; stty size\r")
    match = await leg.output_match(rb"pid=(\d+)\r\n20 70")
    pid = int(match.group(1))
    agent.proc.send_signal(signal.SIGTERM)
    frames = await leg.closed()
    assert disconnect(frames[-1]).reason == "agent shutting down"
    assert await agent.wait() == 0
    await eventually(lambda: not Path(f"/proc/{pid}").exists())
    assert not agent.path.exists()


async def test_second_agent_on_the_same_path_is_refused(
    socket_dir: Path, processes: list[AgentProcess]
) -> None:
    first = AgentProcess(socket_dir, "echo", *common(socket_dir))
    processes.append(first)
    await first.ready()
    second = AgentProcess(socket_dir, "echo", *common(socket_dir))
    processes.append(second)
    assert await second.wait() == 1
    assert "another agent is listening" in second.output()
    # The first is untouched.
    leg = await DaemonLeg.open(first.path)
    await leg.connect(5)
    leg.send(FrameType.KEEPALIVE, flags=1)
    assert (await leg.expect(FrameType.KEEPALIVE)).flags == 2
    leg.close()
