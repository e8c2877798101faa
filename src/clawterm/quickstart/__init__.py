"""The quick start: a local ``clawtermd`` with embedded defaults, the demo agent, and a terminal.

``./dev quickstart`` (or ``python -m clawterm.quickstart``) needs no root, no
certificate and no configuration:

* the daemon runs with its default state directory (self-signed certificate,
  development token) and the socket directory ``<state-dir>/sockets``, so no
  root is needed for ``/run/claw/sockets``;
* the demo agent serves tenant 0, agent 1 there;
* both run in the background and outlive the terminal, so a detached session
  can be resumed (``clawterm resume``); ``python -m clawterm.quickstart stop``
  stops them.

Processes already running from an earlier quick start are reused.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..constants import DEFAULT_PORT
from ..daemon.statedir import default_state_dir

__all__ = ["main"]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def _alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _spawn(name: str, argv: list[str], state: Path) -> int:
    log = open(state / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    log.close()
    (state / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def _wait(check: object, what: str, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise SystemExit(f"quickstart: {what} did not come up; see {log}\n{tail}")


def start(state: Path, port: int, metrics: str) -> Path:
    """Start (or reuse) the daemon and the demo agent; return the socket dir."""
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    sockets = state / "sockets"
    sockets.mkdir(exist_ok=True)
    py = sys.executable
    if _alive(state / "clawtermd.pid") is None or not _listening(port):
        _spawn(
            "clawtermd",
            [
                py,
                "-m",
                "clawterm.daemon",
                "-p",
                str(port),
                "-s",
                str(sockets),
                "--state-dir",
                str(state),
                "--metrics",
                metrics,
            ],
            state,
        )
        _wait(
            lambda: _listening(port) and (state / "dev-token").exists(),
            "clawtermd",
            state / "clawtermd.log",
        )
    agent_sock = sockets / "0" / "1.sock"
    if _alive(state / "demo-agent.pid") is None or not agent_sock.exists():
        _spawn(
            "demo-agent",
            [
                py,
                "-m",
                "clawterm.agent.cli",
                "demo",
                "--socket-dir",
                str(sockets),
                "--tenant",
                "0",
                "--agent",
                "1",
            ],
            state,
        )
        _wait(agent_sock.exists, "the demo agent", state / "demo-agent.log")
    return sockets


def stop(state: Path) -> None:
    """Stop what :func:`start` started (SIGTERM, as an operator would)."""
    for name in ("demo-agent", "clawtermd"):
        pid = _alive(state / f"{name}.pid")
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            print(f"stopped {name} (pid {pid})")
        (state / f"{name}.pid").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clawterm.quickstart",
        description="Start clawtermd and the demo agent locally, then attach a terminal.",
    )
    parser.add_argument("command", nargs="?", default="attach", choices=["attach", "start", "stop"])
    parser.add_argument(
        "--state-dir", type=Path, default=None, help="default: the daemon's default"
    )
    parser.add_argument("-p", "--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--metrics", default="127.0.0.1:9720")
    args = parser.parse_args(argv)
    state = args.state_dir or Path(os.environ.get("CLAWTERM_STATE_DIR") or default_state_dir())
    if args.command == "stop":
        stop(state)
        return 0
    start(state, args.port, args.metrics)
    print(
        f"clawtermd on 127.0.0.1:{args.port} and the demo agent are running "
        f"(logs in {state}); stop them with: python -m clawterm.quickstart stop",
        file=sys.stderr,
    )
    if args.command == "start":
        return 0
    env = {**os.environ, "CLAWTERM_STATE_DIR": str(state)}
    cmd = [
        sys.executable,
        "-m",
        "clawterm.client.cli",
        "attach",
        "127.0.0.1",
        "--port",
        str(args.port),
    ]
    os.execve(sys.executable, cmd, env)
    return 0  # pragma: no cover
