"""The PTY runner with real pseudo-terminals and real processes (bash, python3 -i)."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from clawterm.agent.pty_runner import exit_disconnect, pty_handler
from clawterm.constants import FrameType

from .leg import DaemonLeg, disconnect, eventually, first_session, resumed, serving

BASH = ["bash", "--norc", "--noprofile"]
PYTHON = [sys.executable, "-i", "-q"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def test_exit_disconnect() -> None:
    assert exit_disconnect(0) == (0, "exited with status 0")
    assert exit_disconnect(3) == (3, "exited with status 3")
    assert exit_disconnect(-9) == (137, "killed by signal 9")


async def test_bash_output_winsize_and_resize(socket_dir: Path) -> None:
    async with serving(pty_handler(BASH), socket_dir) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(1)
        leg.winsize(33, 101)
        leg.send_data(b"echo hi-$((6*7)) $TERM\r")
        await leg.output_until(b"hi-42 xterm-256color")
        leg.send_data(b"stty size\r")
        await leg.output_until(b"33 101")
        leg.winsize(40, 120)
        leg.send_data(b"stty size; tty\r")
        await leg.output_match(rb"40 120\r\n/dev/pts/\d+")
        leg.send_data(b"exit 3\r")
        frames = await leg.closed()
        d = disconnect(frames[-1])
        assert (d.code, d.reason) == (3, "exited with status 3")


async def test_killed_process_reports_the_signal(socket_dir: Path) -> None:
    async with serving(pty_handler(BASH), socket_dir) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(2)
        leg.send_data(b"echo pid=$$; kill -9 $$\r")
        await leg.output_until(b"pid=")
        frames = await leg.closed()
        d = disconnect(frames[-1])
        assert (d.code, d.reason) == (137, "killed by signal 9")


async def test_python_repl(socket_dir: Path) -> None:
    async with serving(pty_handler(PYTHON), socket_dir) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(3)
        leg.winsize(25, 90)
        await leg.output_until(b">>> ")
        leg.send_data(b"print(6*7)\r")
        await leg.output_until(b"42")
        leg.send_data(b"import os; print(tuple(os.get_terminal_size()))\r")
        await leg.output_until(b"(90, 25)")
        # Typed one byte at a time, as a raw terminal sends it.
        for byte in b"print('a'+'b')\r":
            leg.send_data(bytes([byte]))
        await leg.output_until(b"ab")
        leg.send_data(b"raise SystemExit(5)\r")
        frames = await leg.closed()
        d = disconnect(frames[-1])
        assert (d.code, d.reason) == (5, "exited with status 5")


async def test_process_survives_a_dropped_connection(socket_dir: Path) -> None:
    async with serving(pty_handler(BASH), socket_dir) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(4)
        leg.send_data(b"echo pid=$$\r")
        await leg.output_until(b"pid=")
        leg.send_data(b"sleep 0.3; echo while-away-$((40+2))\r")
        await leg.output_until(b"sleep 0.3")  # the echo of the command line
        leg.abort()
        session = server.sessions[0]
        await eventually(lambda: not session.attached)
        # Output produced while nobody is attached is kept for the replay.
        await eventually(lambda: session.unacked_bytes > 0 and not session.closed)
        await asyncio.sleep(0.5)
        leg2 = await DaemonLeg.open(server.path)
        assert resumed(await leg2.resume(4, max(leg.data))).session_id == 4
        out = await leg2.output_until(b"while-away-42")
        assert out.startswith(b"\r\n") or b"while-away-42" in out
        # Still the same shell.
        leg2.send_data(b"echo again-$((1+1))\r", seq=leg.tx_seq + 1)
        await leg2.output_until(b"again-2")
        leg2.send_data(b"exit\r", seq=leg.tx_seq + 2)
        frames = await leg2.closed()
        assert disconnect(frames[-1]).code == 0


async def test_client_disconnect_hangs_up_the_process(socket_dir: Path) -> None:
    async with serving(pty_handler(BASH), socket_dir) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(5)
        leg.send_data(b"echo pid=$$\r")
        pid = int((await leg.output_match(rb"pid=(\d+)\r\n")).group(1))
        leg.send(FrameType.DISCONNECT, b"\x00\x00bye", seq=leg.tx_seq)
        await eventually(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid))
        await eventually(lambda: not server.sessions)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


_WINCH = """
import os, signal, sys, time
def h(*_):
    s = os.get_terminal_size()
    print(f"winch {s.lines}x{s.columns}", flush=True)
signal.signal(signal.SIGWINCH, h)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


async def test_resumed_notification_nudges_a_redraw(socket_dir: Path) -> None:
    handler = pty_handler([sys.executable, "-c", _WINCH], redraw_delay=0.1)
    async with serving(handler, socket_dir) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(6)
        await leg.output_until(b"ready")
        leg.winsize(30, 90)
        await leg.output_until(b"winch 30x90")
        leg.send(FrameType.SUSPEND)
        await asyncio.sleep(0.05)
        leg.send(FrameType.RESUMED)
        # Two real sizes: one row less, then back.
        out = await leg.output_until(b"winch 30x90")
        assert out.index(b"winch 29x90") < out.index(b"winch 30x90")
        leg.close()


_FLOOD = """
import sys
for i in range(200):
    sys.stdout.write(("%04d" % i) + "x" * 9995 + "\\n")
sys.stdout.flush()
print("DONE", flush=True)
"""


async def test_backpressure_reaches_the_program(socket_dir: Path) -> None:
    handler = pty_handler([sys.executable, "-c", _FLOOD])
    async with serving(handler, socket_dir, ring_size=16384) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(7)
        session = await first_session(server)
        # Nothing acknowledged: the agent stops at the ring size, so the
        # program (2 MB to write) blocks in write() instead of piling up.
        await eventually(lambda: session.unacked_bytes >= 16384)
        await asyncio.sleep(0.4)
        held = session.unacked_bytes
        assert 16384 <= held < 16384 + 65550
        assert not session.closed
        # Reading and acknowledging lets it finish.
        out = await leg.output_until(b"DONE", timeout=15)
        assert out.count(b"x" * 9995) == 200
        frames = await leg.closed()
        assert disconnect(frames[-1]).code == 0


_CTTY = (
    "import os; "
    "print('ctty', os.getsid(0) == os.getpid(), os.tcgetpgrp(0) == os.getpgrp(), "
    "sorted(int(fd) for fd in os.listdir('/proc/self/fd'))[:3], os.environ['TERM'])"
)


async def test_child_is_a_session_leader_on_its_own_terminal(socket_dir: Path) -> None:
    async with serving(pty_handler([sys.executable, "-c", _CTTY]), socket_dir) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(8)
        out = await leg.output_until(b"xterm-256color")
        assert b"ctty True True [0, 1, 2] xterm-256color" in out


async def test_no_descriptor_leaks_into_the_child(socket_dir: Path) -> None:
    async with serving(pty_handler(["ls", "/proc/self/fd"]), socket_dir) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(9)
        frames = await leg.closed()
        assert disconnect(frames[-1]).code == 0
        listing = b"".join(leg.data[s] for s in sorted(leg.data)).split()
        assert listing == [b"0", b"1", b"2", b"3"]  # stdio, and ls's own directory
