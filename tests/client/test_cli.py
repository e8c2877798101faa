"""The ``clawterm`` command in a real terminal (tmux), against a real clawtermd and PTY agent.

The tmux tests skip only when tmux is not installed. The pipe tests need no
terminal and always run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import DaemonProcess

TMUX = shutil.which("tmux")
needs_tmux = pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
CLIENT = [sys.executable, "-m", "clawterm.client.cli"]
AGENT = [sys.executable, "-m", "clawterm.agent.cli"]


def wait_until(predicate: object, timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise TimeoutError(f"not met within {timeout}s: {what}")


class Agent:
    """A real ``clawterm-agent`` process, ended by its pid."""

    def __init__(self, socket_dir: Path, agent: int, *args: str) -> None:
        self.sock = socket_dir / "0" / f"{agent}.sock"
        self.log = socket_dir.parent / f"agent-{agent}.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*AGENT, args[0], "-s", str(socket_dir), "--agent", str(agent), *args[1:]],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(self.sock.exists, 10, f"agent socket {self.sock}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Env:
    """A daemon, PTY agents and the environment the client runs with."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.daemon = DaemonProcess(tmp, "--resume-failures", "1000").start()
        self.config = tmp / "config"
        self.env = {
            **os.environ,
            "CLAWTERM_CONFIG_DIR": str(self.config),
            "CLAWTERM_STATE_DIR": str(self.daemon.state_dir),  # the dev token is found there
            "PS1": "$ ",
        }
        for var in ("CLAWTERM_TOKEN", "CLAWTERM_TOKEN_FILE"):
            self.env.pop(var, None)
        self.agents: list[Agent] = []

    def agent(self, number: int, *args: str) -> Agent:
        a = Agent(self.daemon.socket_dir, number, *args)
        self.agents.append(a)
        wait_until(
            lambda: self.daemon.metric("clawterm_agents_registered") >= len(self.agents),
            10,
            "agent registered",
        )
        return a

    def client_cmd(self, *args: str) -> str:
        exports = " ".join(
            f"{k}={shlex.quote(self.env[k])}"
            for k in ("CLAWTERM_CONFIG_DIR", "CLAWTERM_STATE_DIR", "PATH")
        )
        return f"env {exports} {shlex.join([*CLIENT, *args])}"

    def run(
        self, *args: str, stdin: bytes = b"", timeout: float = 20
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*CLIENT, *args],
            check=False,
            input=stdin,
            capture_output=True,
            env=self.env,
            timeout=timeout,
        )

    def stop(self) -> None:
        for a in self.agents:
            a.stop()
        self.daemon.stop()


class Tmux:
    """A private tmux server (its own socket), killed at the end."""

    def __init__(self, tmp: Path) -> None:
        assert TMUX is not None
        self.base = [TMUX, "-S", str(tmp / "tmux.sock"), "-f", "/dev/null"]

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            [*self.base, *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout

    def start(self, name: str, command: str, cols: int = 100, rows: int = 30) -> None:
        shell = f"{command}; echo EXIT=$?; sleep 600"
        self.tmux("new-session", "-d", "-s", name, "-x", str(cols), "-y", str(rows), shell)

    def type(self, name: str, text: str, enter: bool = True) -> None:
        self.tmux("send-keys", "-t", name, "-l", text)
        if enter:
            self.tmux("send-keys", "-t", name, "Enter")

    def screen(self, name: str) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-S", "-500", "-t", name)

    def wait(self, name: str, pattern: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.screen(name)
            if re.search(pattern, text):
                return text
            time.sleep(0.05)
        raise TimeoutError(f"{pattern!r} not on screen {name}:\n{self.screen(name)}")

    def client_pid(self, name: str) -> int:
        pane = int(self.tmux("display", "-p", "-t", name, "#{pane_pid}").strip())
        out = subprocess.run(
            ["ps", "-o", "pid=,args=", "--ppid", str(pane)],
            check=False,
            capture_output=True,
            text=True,
        ).stdout
        for line in out.splitlines():
            pid, args = line.strip().split(None, 1)
            if "clawterm.client.cli" in args:
                return int(pid)
        raise LookupError(out)

    def kill_server(self) -> None:
        subprocess.run([*self.base, "kill-server"], check=False, capture_output=True, timeout=10)


@pytest.fixture
def env(short_tmp: Path) -> Iterator[Env]:
    e = Env(short_tmp)
    try:
        yield e
    finally:
        e.stop()


@pytest.fixture
def tmux(short_tmp: Path) -> Iterator[Tmux]:
    t = Tmux(short_tmp)
    try:
        yield t
    finally:
        t.kill_server()


@needs_tmux
def test_attach_type_resize_notice_detach_resume(env: Env, tmux: Tmux) -> None:
    env.agent(1, "pty", "--", "/bin/sh")
    tmux.start("a", env.client_cmd("attach", "-p", str(env.daemon.port), "--name", "work"))
    tmux.wait("a", r"attached to session work")
    tmux.type("a", "echo out-$((6*7))")
    tmux.wait("a", r"out-42")
    tmux.type("a", "stty size")
    tmux.wait("a", r"\n30 100")
    tmux.tmux("resize-window", "-t", "a", "-x", "120", "-y", "40")
    time.sleep(0.3)
    tmux.type("a", "stty size")
    tmux.wait("a", r"\n40 120")  # SIGWINCH → WINSIZE → the agent's PTY

    # The link drops (daemon SIGKILLed and restarted): one line each way.
    env.daemon.kill()
    tmux.wait("a", r"\[clawterm\] link lost")
    tmux.type("a", "echo typed-$((2*3))-while-down")
    env.daemon.start()
    tmux.wait("a", r"\[clawterm\] link back after", 15)
    tmux.wait("a", r"typed-6-while-down", 10)

    # Output produced while detached is there after resume.
    tmux.type("a", "(sleep 1; echo late-$((5*5)))")
    tmux.type("a", "~.", enter=False)
    screen = tmux.wait("a", r"EXIT=0")
    assert "detached from session work" in screen and "late-25" not in screen
    assert "clawterm resume work" in screen
    tmux.start("b", env.client_cmd("resume", "work"))
    tmux.wait("b", r"resumed session work")
    tmux.wait("b", r"late-25", 10)
    tmux.type("b", "echo again-$((7*8))")
    tmux.wait("b", r"again-56")
    tmux.type("b", "exit 3")
    screen = tmux.wait("b", r"EXIT=3")  # the agent's exit status
    assert "session work ended" in screen


@needs_tmux
def test_sigkill_client_then_resume_from_saved_session(env: Env, tmux: Tmux) -> None:
    env.agent(1, "pty", "--", "/bin/sh")
    tmux.start("a", env.client_cmd("attach", "-p", str(env.daemon.port)))
    tmux.wait("a", r"attached to session")
    tmux.type("a", "for i in 1 2 3 4 5 6; do echo tick-$((i*11)); sleep 0.4; done")
    tmux.wait("a", r"tick-22")
    os.kill(tmux.client_pid("a"), signal.SIGKILL)
    before = tmux.screen("a")
    time.sleep(2.0)  # output goes on while no client is there
    tmux.start("b", env.client_cmd("resume"))
    tmux.wait("b", r"resumed session")
    after = tmux.wait("b", r"tick-66", 10)
    for i in range(1, 7):
        assert f"tick-{i * 11}" in before or f"tick-{i * 11}" in after, (before, after)
    tmux.type("b", "echo alive-$((3*3))")
    tmux.wait("b", r"alive-9")
    listing = env.run("sessions").stdout.decode()
    assert re.search(r"\n[0-9a-f]{8}\s+connected\s+\d+s\s+0/1\s+127\.0\.0\.1:", listing), listing


@needs_tmux
def test_handoff_to_a_second_client_with_full_context(env: Env, tmux: Tmux) -> None:
    env.agent(1, "pty", "--", "/bin/sh")
    tmux.start("a", env.client_cmd("attach", "-p", str(env.daemon.port), "--name", "laptop"))
    tmux.wait("a", r"attached to session laptop")
    tmux.type("a", "echo context-$((4*4))")
    tmux.wait("a", r"context-16")
    res = env.run("handoff", "laptop")
    link = res.stdout.decode().splitlines()[0]
    assert link.startswith(f"clawterm://127.0.0.1:{env.daemon.port}/resume?sid=")
    assert "█" in res.stdout.decode() or "▀" in res.stdout.decode()  # the QR code
    assert "secret" in res.stderr.decode() or "password" in res.stderr.decode()
    tmux.start("phone", env.client_cmd("attach", link))
    tmux.wait("phone", r"took over session")
    tmux.wait("phone", r"context-16")  # the full context, replayed
    screen = tmux.wait("a", r"EXIT=255")
    assert "taken over by another client" in screen
    tmux.type("phone", "echo on-phone-$((8*8))")
    tmux.wait("phone", r"on-phone-64")


def test_pipe_exits_with_the_agents_status(env: Env) -> None:
    env.agent(2, "pty", "--", "/bin/sh", "-c", "read x; echo got-$x; exit 7")
    res = env.run("pipe", "-p", str(env.daemon.port), "--agent", "2", stdin=b"abc\n")
    assert res.returncode == 7, res.stderr
    assert b"got-abc" in res.stdout


def test_pipe_close_on_eof_and_token_errors(env: Env) -> None:
    env.agent(3, "echo")
    data = os.urandom(200_000).hex().encode()
    res = env.run("pipe", "-p", str(env.daemon.port), "--agent", "3", "--close-on-eof", stdin=data)
    assert res.returncode == 0, res.stderr
    assert res.stdout == data
    bad = env.run("pipe", "-p", str(env.daemon.port), "--agent", "3", "--token", "00" * 32)
    assert bad.returncode == 255 and b"AUTH_FAILED" in bad.stderr
    none = env.run("attach", "-p", str(env.daemon.port))
    assert none.returncode == 2 and b"need a terminal" in none.stderr


def test_help_documents_escapes_and_notices() -> None:
    out = subprocess.run(
        [*CLIENT, "attach", "--help"], check=True, capture_output=True, text=True
    ).stdout
    assert "~." in out and "~~" in out and "--notice" in out and "exit status" in out
    out = subprocess.run(
        [*CLIENT, "pipe", "--help"], check=True, capture_output=True, text=True
    ).stdout
    assert "--close-on-eof" in out and "exit status" in out
