"""``clawterm-agent``: the PTY runner, the demo agent and the echo agent.

::

    clawterm-agent {pty,demo,echo} [--socket-dir D] [--tenant T] [--agent A]
                   [--grace S] [--ring-size N] [--log-level L] [-- CMD ARGS…]

Common options default to ``CLAWTERM_SOCKET_DIR``, ``CLAWTERM_TENANT``,
``CLAWTERM_AGENT``, ``CLAWTERM_GRACE`` (and ``CLAWTERM_RING_SIZE``,
``CLAWTERM_LOG_LEVEL``), then to ``/run/claw/sockets``, 0, 1, 60 s. The
command line wins over the environment. SIGTERM or SIGINT stops the agent
gracefully (every session gets DISCONNECT "agent shutting down", the socket
file is removed) and it exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from ..constants import DEFAULT_AGENT_GRACE, DEFAULT_RING_SIZE, DEFAULT_SOCKET_DIR
from .demo import DEFAULT_RATE, demo_handler
from .echo import echo_handler
from .pty_runner import pty_handler
from .server import AgentSocketError, Handler, run

__all__ = ["build_parser", "main"]


def _env(name: str, default: str) -> str:
    return os.environ.get(f"CLAWTERM_{name}", default)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-s",
        "--socket-dir",
        default=_env("SOCKET_DIR", DEFAULT_SOCKET_DIR),
        help="agent socket directory (env CLAWTERM_SOCKET_DIR; default %(default)s)",
    )
    parser.add_argument(
        "--tenant",
        type=int,
        default=_env("TENANT", "0"),
        help="tenant id (env CLAWTERM_TENANT; default %(default)s)",
    )
    parser.add_argument(
        "--agent",
        type=int,
        default=_env("AGENT", "1"),
        help="agent id (env CLAWTERM_AGENT; default %(default)s)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=_env("GRACE", str(DEFAULT_AGENT_GRACE)),
        help="seconds a session outlives its daemon connection (env CLAWTERM_GRACE; "
        "default %(default)s)",
    )
    parser.add_argument(
        "--ring-size",
        type=int,
        default=_env("RING_SIZE", str(DEFAULT_RING_SIZE)),
        help="unacknowledged bytes per session before output waits (env CLAWTERM_RING_SIZE; "
        "default %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "info"),
        choices=("debug", "info", "warning", "error"),
        help="(env CLAWTERM_LOG_LEVEL; default %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``clawterm-agent``."""
    parser = argparse.ArgumentParser(
        prog="clawterm-agent",
        description="Serve ClawTerm sessions on <socket-dir>/<tenant>/<agent>.sock.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{pty,demo,echo}")
    pty = commands.add_parser("pty", help="run a command in a new PTY per session")
    _common(pty)
    pty.add_argument(
        "--redraw-delay",
        type=float,
        default=0.1,
        help="seconds between the two resizes that nudge a redraw on resume (default 0.1)",
    )
    pty.add_argument(
        "argv",
        nargs=argparse.REMAINDER,
        metavar="-- CMD ARGS",
        help="the command (default: $SHELL, else /bin/sh)",
    )
    demo = commands.add_parser("demo", help="a streaming chat agent stand-in")
    _common(demo)
    demo.add_argument(
        "--rate",
        type=float,
        default=DEFAULT_RATE,
        help="reply tokens per second, 0 for no delay (default %(default)s)",
    )
    echo = commands.add_parser("echo", help="echo every byte back")
    _common(echo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``clawterm-agent``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler: Handler
    if args.command == "pty":
        command = list(args.argv)
        if command and command[0] == "--":
            command = command[1:]
        if not command:
            command = [os.environ.get("SHELL") or "/bin/sh"]
        handler = pty_handler(command, redraw_delay=args.redraw_delay)
    elif args.command == "demo":
        handler = demo_handler(args.rate)
    else:
        handler = echo_handler
    try:
        run(
            handler,
            socket_dir=args.socket_dir,
            tenant_id=args.tenant,
            agent_id=args.agent,
            grace=args.grace,
            ring_size=args.ring_size,
        )
    except AgentSocketError as exc:
        print(f"clawterm-agent: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
