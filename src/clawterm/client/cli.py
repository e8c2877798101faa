"""``clawterm``: attach to agents, resume, hand sessions off, pipe (see docs/client.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..constants import DEFAULT_PORT
from .aio import (
    TRANSPORTS,
    Session,
    SessionContext,
    StateInfo,
    TransportMode,
    connect,
    parse_token,
    resume,
)
from .errors import ClientError, SessionEnded
from .escape import ESCAPE_HELP, EscapeAction, EscapeParser
from .events import ClientState, CloseReason
from .link import HandoffLink, is_link
from .paths import DEV_TOKEN_NAME, daemon_state_dir
from .saved import SessionStore
from .terminal import NoticeMode, Notifier, RawTerminal, terminal_size, write_all
from .trust import format_fingerprint

__all__ = ["main"]

#: Exit status when the client itself fails (as ssh).
EXIT_ERROR = 255
#: Exit status for bad arguments or files.
EXIT_USAGE = 2

_DESCRIPTION = "ClawTerm client: terminals to AI agents that survive any network drop."

_ATTACH_EPILOG = """\
escape sequences (after Enter, like ssh):
  ~.   detach: SUSPEND the session (it stays warm on the daemon) and exit;
       resume it with `clawterm resume`
  ~~   send a literal ~
  ~?   list the escapes
  Change the escape character with -e CHAR, or disable it with -e none.

link notices: when the link drops and when it is back, one line
(--notice line: written to stderr after CR-LF, never over the agent's
output), or the terminal title (--notice title), or nothing (--notice none).
What you type while the link is down is kept and sent on resume.

exit status: the agent's exit status when the session ends (the DISCONNECT
code), 0 after a detach, 255 on errors (taken over, refused, untrusted).
"""

_PIPE_EPILOG = """\
stdin goes to the agent, the agent's output to stdout. At end of stdin the
client keeps reading output until the agent ends the session, then exits
with the agent's exit status (the DISCONNECT code); with --close-on-eof it
instead ends the session itself (DISCONNECT) once the agent has acknowledged
all input, and exits 0. Errors exit 255. Pipe sessions are not saved.
"""

_SAVED_NOTE = """\
A client keeps the data it sent but the agent has not yet acknowledged in
memory only: after the client process dies, `clawterm resume` cannot resend
it (the agent's output is never lost: the agent keeps it until acknowledged).
"""

log = logging.getLogger("clawterm.client.cli")


# --------------------------------------------------------------------------- arguments


def _add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "target",
        nargs="?",
        default="127.0.0.1",
        metavar="HOST|LINK",
        help="daemon host (default 127.0.0.1) or a clawterm:// handoff link",
    )
    p.add_argument("-p", "--port", type=int, default=DEFAULT_PORT, help="TLS port (7220)")
    p.add_argument("--tenant", type=int, default=0, help="tenant id (0)")
    p.add_argument("--agent", type=int, default=1, help="agent id (1)")
    p.add_argument(
        "--token",
        help="token, 64 hex characters (env CLAWTERM_TOKEN; default: the local daemon's dev token)",
    )
    p.add_argument(
        "--token-file", type=Path, help="file holding the token (env CLAWTERM_TOKEN_FILE)"
    )
    _add_trust_args(p)
    _add_transport_args(p)


def _add_transport_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--transport",
        choices=TRANSPORTS,
        help="quic, tcp (TLS) or auto: QUIC first, TLS/TCP if QUIC is not up within "
        "0.25 s (env CLAWTERM_TRANSPORT; default: the saved session's or link's, else auto)",
    )
    p.add_argument(
        "--quic-port",
        type=int,
        help="daemon QUIC (UDP) port (env CLAWTERM_QUIC_PORT; default: the saved "
        "session's or link's, else 7221)",
    )


def _add_trust_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ca", type=Path, help="verify the daemon against this CA bundle (no pinning)")
    p.add_argument("--fingerprint", help="require this certificate SHA-256 (hex, colons allowed)")
    p.add_argument(
        "--no-tofu",
        action="store_true",
        help="refuse a daemon whose certificate is not pinned yet (no trust on first use)",
    )


def _add_terminal_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--notice",
        choices=["line", "title", "none"],
        default="line",
        help="how to show that the link dropped / is back (line)",
    )
    p.add_argument(
        "-e",
        "--escape",
        default="~",
        metavar="CHAR",
        help="escape character (~), or 'none'",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clawterm", description=_DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    attach = sub.add_parser(
        "attach",
        help="open a session with an agent (or take one over with a link)",
        description="Open a new session with an agent in this terminal, like ssh; "
        "with a LINK, take that session over with all its retained output.",
        epilog=_ATTACH_EPILOG,
        formatter_class=fmt,
    )
    _add_connection_args(attach)
    _add_terminal_args(attach)
    attach.add_argument("--name", help="name of the saved session (default: its id in hex)")

    res = sub.add_parser(
        "resume",
        help="resume a saved session",
        description="Resume a saved session (default: the most recently seen one) "
        "from where this machine left it, even after a reboot.",
        epilog=_ATTACH_EPILOG + "\n" + _SAVED_NOTE,
        formatter_class=fmt,
    )
    res.add_argument("name", nargs="?", metavar="NAME", help="saved session (prefix allowed)")
    _add_terminal_args(res)
    _add_transport_args(res)

    sessions = sub.add_parser(
        "sessions",
        help="list saved sessions",
        description="List saved sessions: name, state, time since last seen, agent, daemon.",
        epilog=_SAVED_NOTE,
        formatter_class=fmt,
    )
    sessions.add_argument("--prune", action="store_true", help="forget ended sessions")
    sessions.add_argument("--forget", metavar="NAME", help="forget one saved session")

    handoff = sub.add_parser(
        "handoff",
        help="print a link (and QR code) to take a session over on another device",
        description="Print a resume link and its QR code. On the other device, "
        "`clawterm attach LINK` takes the session over with its full retained "
        "output; this device gets TAKEN_OVER. The link contains the resume "
        "token: it is a secret.",
    )
    handoff.add_argument("name", nargs="?", metavar="NAME", help="saved session (prefix allowed)")
    handoff.add_argument("--no-qr", action="store_true", help="print the link only")

    pipe = sub.add_parser(
        "pipe",
        help="non-interactive: stdin to the agent, its output to stdout",
        description="Non-interactive session for scripts.",
        epilog=_PIPE_EPILOG,
        formatter_class=fmt,
    )
    _add_connection_args(pipe)
    pipe.add_argument(
        "--close-on-eof",
        action="store_true",
        help="end the session (DISCONNECT) at end of stdin instead of waiting for the agent",
    )
    return parser


def _token(args: argparse.Namespace) -> bytes:
    """--token, --token-file, $CLAWTERM_TOKEN, $CLAWTERM_TOKEN_FILE, then the dev token."""
    if args.token:
        return parse_token(args.token)
    path: Path | None = args.token_file
    if path is None and os.environ.get("CLAWTERM_TOKEN"):
        return parse_token(os.environ["CLAWTERM_TOKEN"])
    if path is None and os.environ.get("CLAWTERM_TOKEN_FILE"):
        path = Path(os.environ["CLAWTERM_TOKEN_FILE"])
    if path is None:
        dev = daemon_state_dir() / DEV_TOKEN_NAME
        if not dev.exists():
            raise ClientError(
                "no token: pass --token or --token-file, or set CLAWTERM_TOKEN; "
                f"the local daemon's development token {dev} does not exist"
            )
        path = dev
    try:
        text = path.read_text()
    except OSError as exc:
        raise ClientError(f"cannot read token file {path}: {exc.strerror or exc}") from None
    try:
        return parse_token(text)
    except ValueError:
        raise ClientError(f"{path} does not hold a token (64 hex characters)") from None


def _transport(args: argparse.Namespace, recorded: str | None = None) -> TransportMode:
    """--transport, $CLAWTERM_TRANSPORT, the record's or link's, then auto."""
    text = args.transport or os.environ.get("CLAWTERM_TRANSPORT") or recorded or "auto"
    for mode in TRANSPORTS:
        if text.strip().lower() == mode:
            return mode
    raise ClientError(f"unknown transport {text!r}: use quic, tcp or auto")


def _quic_port(args: argparse.Namespace, recorded: int | None = None) -> int | None:
    """--quic-port, $CLAWTERM_QUIC_PORT, the record's or link's (None: 7221)."""
    if args.quic_port is not None:
        port: int = args.quic_port
    elif os.environ.get("CLAWTERM_QUIC_PORT"):
        try:
            port = int(os.environ["CLAWTERM_QUIC_PORT"])
        except ValueError:
            raise ClientError("CLAWTERM_QUIC_PORT must be a port number") from None
    else:
        return recorded
    if not 0 < port < 65536:
        raise ClientError(f"QUIC port {port} is out of range")
    return port


def _escape_byte(text: str) -> int | None:
    if text == "none":
        return None
    data = text.encode()
    if len(data) != 1:
        raise ClientError("the escape character must be one ASCII character or 'none'")
    return data[0]


def _say(text: str) -> None:
    sys.stderr.write(f"clawterm: {text}\n")
    sys.stderr.flush()


def _on_pin(key: str, fp: str, path: Path) -> None:
    _say(
        f"pinned the certificate of {key} (SHA-256 {format_fingerprint(fp)}) in {path}; "
        "compare it with the fingerprint clawtermd printed at start"
    )


def _exit_status(code: int | None) -> int:
    if code is None:
        return 0
    return code if 0 <= code <= 255 else 1


# --------------------------------------------------------------------------- interactive


class _Interactive:
    """The attach/resume terminal loop."""

    def __init__(self, notice: NoticeMode, escape: int | None) -> None:
        self.notifier = Notifier(notice)
        self.parser = EscapeParser(escape)
        self.raw = False
        self.down_since: float | None = None
        self.last_byte = b"\n"
        self.escape = escape

    def on_state(self, info: StateInfo) -> None:
        if info.state is ClientState.RECONNECTING and self.down_since is None:
            self.down_since = time.monotonic()
            if self.raw:
                self.notifier.down(
                    f"link lost ({info.message}); reconnecting - what you type is kept"
                )
            else:
                _say(f"cannot reach the daemon ({info.message}); retrying - Ctrl-C gives up")
        elif info.state is ClientState.CONNECTED and self.down_since is not None:
            took = time.monotonic() - self.down_since
            self.down_since = None
            text = f"link back after {took:.1f} s over {info.transport or '?'}"
            if info.gap:
                text += "; some output was lost (the daemon no longer had it)"
            if self.raw:
                self.notifier.up(text)
            else:
                _say(text)
        elif info.state is ClientState.CONNECTED and info.gap:
            text = "earlier output is no longer retained by the daemon"
            if self.raw:
                self.notifier.info(text)
            else:
                _say(text)

    async def run(self, ctx: SessionContext, what: str) -> int:
        loop = asyncio.get_running_loop()
        async with ctx as session:
            name = session.name or f"{session.session_id:08x}"
            esc = chr(self.escape) if self.escape is not None else None
            hint = f"; {esc}. detaches" if esc else ""
            where = f"agent {session.agent} on {session.host}:{_port_of(session)}"
            _say(f"{what} session {name} ({where}){hint}")
            stop: asyncio.Future[int] = loop.create_future()
            out_task = in_task = None
            with RawTerminal(0):
                self.raw = True
                self.notifier.start()
                try:
                    self._resize(session)
                    loop.add_signal_handler(signal.SIGWINCH, self._resize, session)
                    for sig in (signal.SIGTERM, signal.SIGHUP):
                        loop.add_signal_handler(sig, _set_once, stop, int(sig))
                    out_task = asyncio.create_task(self._output(session))
                    in_task = asyncio.create_task(self._input(session))
                    waitables: set[asyncio.Future[object]] = {out_task, in_task, stop}  # type: ignore[arg-type]
                    await asyncio.wait(waitables, return_when=asyncio.FIRST_COMPLETED)
                    if in_task.done() and not in_task.cancelled() and in_task.exception() is None:
                        # ~. or a hung-up terminal: leave the session warm.
                        await session.suspend()
                    elif stop.done():
                        await session.suspend()
                    elif in_task.done():
                        await asyncio.wait({out_task}, timeout=5)
                finally:
                    for sig in (signal.SIGWINCH, signal.SIGTERM, signal.SIGHUP):
                        loop.remove_signal_handler(sig)
                    for task in (out_task, in_task):
                        if task is not None:
                            task.cancel()
                            if task.done() and not task.cancelled():
                                task.exception()  # retrieved: the session reports it
                    self.notifier.stop()
                    self.raw = False
            if self.last_byte not in (b"\n", b"\r"):
                sys.stderr.write("\r\n")
            info = session.info
            if stop.done():
                _say(
                    f"signal {stop.result()}: detached from session {name} (clawterm resume {name})"
                )
                return 128 + stop.result()
            if info.reason is CloseReason.SUSPENDED:
                _say(
                    f"detached from session {name}; it stays on the daemon: clawterm resume {name}"
                )
                if session.unsent_bytes:
                    _say(
                        f"{session.unsent_bytes} bytes typed while the link was down were not sent"
                    )
                return 0
            error = session.exception()
            if error is not None:
                raise error
            if info.reason is CloseReason.DISCONNECTED:
                detail = f": {info.message}" if info.message else ""
                code = session.disconnect_code
                _say(f"session {name} ended (code {code}){detail}")
                return _exit_status(code)
            return 0

    def _resize(self, session: Session) -> None:
        with contextlib.suppress(OSError):
            rows, cols, xpix, ypix = terminal_size(1 if os.isatty(1) else 0)
            session.resize(rows, cols, xpix or None, ypix or None)

    async def _output(self, session: Session) -> None:
        while data := await session.receive():
            write_all(1, data)
            self.last_byte = data[-1:]

    async def _input(self, session: Session) -> None:
        loop = asyncio.get_running_loop()
        while True:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(0, _set_once, ready, None)
            try:
                await ready
            finally:
                loop.remove_reader(0)
            try:
                data = os.read(0, 65536)
            except BlockingIOError:
                continue
            except OSError:
                return  # the terminal went away (EIO): detach
            if not data:
                return
            for item in self.parser.feed(data):
                if isinstance(item, bytes):
                    await session.send(item)
                elif item is EscapeAction.DETACH:
                    return
                else:
                    esc = chr(self.escape) if self.escape is not None else "~"
                    write_all(2, ESCAPE_HELP.format(e=esc).replace("\n", "\r\n").encode())


def _port_of(session: Session) -> str:
    """Where the session is connected: ``7220 over tcp``, ``7221/udp over quic``."""
    if session.transport == "quic":
        return f"{session.quic_port}/udp over quic"
    return f"{session.port} over {session.transport or 'tcp'}"


def _set_once(fut: asyncio.Future[int] | asyncio.Future[None], value: object) -> None:
    if not fut.done():
        fut.set_result(value)  # type: ignore[arg-type]


def _need_tty() -> None:
    if not os.isatty(0):
        raise ClientError(
            "attach and resume need a terminal on stdin; use `clawterm pipe` in scripts"
        )


def _open(
    args: argparse.Namespace,
    *,
    store: SessionStore | None = None,
    name: str | None = None,
    on_state: Callable[[StateInfo], None] | None = None,
) -> SessionContext:
    """connect() for a host, resume() for a handoff link (full context)."""
    if is_link(args.target):
        link = HandoffLink.parse(args.target)
        _say(f"taking over session {link.session_id:08x} on {link.host}:{link.port}")
        return resume(
            link,
            ca=args.ca,
            tofu=not args.no_tofu,
            on_pin=_on_pin,
            store=store,
            name=name,
            on_state=on_state,
            transport=_transport(args, link.transport),
            quic_port=_quic_port(args, link.quic_port),
        )
    return connect(
        args.target,
        args.port,
        token=_token(args),
        tenant=args.tenant,
        agent=args.agent,
        ca=args.ca,
        fingerprint=args.fingerprint,
        tofu=not args.no_tofu,
        on_pin=_on_pin,
        store=store,
        name=name,
        on_state=on_state,
        transport=_transport(args),
        quic_port=_quic_port(args),
    )


async def _attach(args: argparse.Namespace) -> int:
    _need_tty()
    ui = _Interactive(args.notice, _escape_byte(args.escape))
    ctx = _open(args, store=SessionStore(), name=args.name, on_state=ui.on_state)
    return await ui.run(ctx, "took over" if is_link(args.target) else "attached to")


async def _resume(args: argparse.Namespace) -> int:
    _need_tty()
    ui = _Interactive(args.notice, _escape_byte(args.escape))
    store = SessionStore()
    record = store.get(args.name)
    _say(f"resuming session {record.name} on {record.host}:{record.port}")
    ctx = resume(
        record,
        store=store,
        on_pin=_on_pin,
        on_state=ui.on_state,
        transport=_transport(args, record.transport),
        quic_port=_quic_port(args, record.quic_port),
    )
    return await ui.run(ctx, "resumed")


# --------------------------------------------------------------------------- pipe


def _stdin_reader(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes]) -> None:
    """Thread: read stdin (any kind of file) into ``queue``, one chunk in flight."""
    while True:
        try:
            data = os.read(0, 65536)
        except OSError:
            data = b""
        try:
            asyncio.run_coroutine_threadsafe(queue.put(data), loop).result()
        except (RuntimeError, asyncio.CancelledError):
            return  # the loop is gone
        if not data:
            return


async def _pipe(args: argparse.Namespace) -> int:
    ctx = _open(args)
    loop = asyncio.get_running_loop()
    async with ctx as session:
        log.info("connected to %s:%s", session.host, _port_of(session))
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=2)
        threading.Thread(target=_stdin_reader, args=(loop, queue), daemon=True).start()

        async def feed() -> None:
            while data := await queue.get():
                await session.send(data)
            if args.close_on_eof:
                await session.close()

        feeder = asyncio.create_task(feed())
        try:
            while data := await session.receive():
                write_all(1, data)
        finally:
            feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError, SessionEnded):
            await feeder
        if session.info.reason is CloseReason.CLOSED:
            return 0
        if session.info.reason is CloseReason.DISCONNECTED:
            return _exit_status(session.disconnect_code)
        return 0


# --------------------------------------------------------------------------- saved sessions


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def _sessions(args: argparse.Namespace) -> int:
    store = SessionStore()
    if args.forget:
        record = store.get(args.forget)
        store.remove(record.name)
        _say(f"forgot session {record.name}")
        return 0
    if args.prune:
        for name in store.prune():
            _say(f"forgot ended session {name}")
    rows = store.entries()
    if not rows:
        _say(f"no saved sessions ({store.path})")
        return 0
    now = time.time()
    table = [("NAME", "STATE", "AGE", "AGENT", "DAEMON")]
    for s in rows:
        state = s.state if not s.reason or s.state == s.reason else f"{s.state} ({s.reason})"
        table.append(
            (s.name, state, _age(now - s.last_seen), f"{s.tenant}/{s.agent}", f"{s.host}:{s.port}")
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _handoff(args: argparse.Namespace) -> int:
    record = SessionStore().get(args.name)
    url = record.link().to_url()
    _say(
        "this link holds the session's resume token: whoever has it can take the session "
        "over until it ends. Treat it like a password; use it only on your own devices."
    )
    print(url)
    if not args.no_qr:
        import segno

        segno.make(url, error="m").terminal(out=sys.stdout, compact=True)
    sys.stdout.flush()
    _say(
        f"on the other device: clawterm attach '<link>' - it takes session {record.name} over "
        "with all the output the daemon retains; this device is then disconnected (TAKEN_OVER)"
    )
    return 0


# --------------------------------------------------------------------------- main

_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "sessions": _sessions,
    "handoff": _handoff,
}
_ASYNC_COMMANDS = {"attach": _attach, "resume": _resume, "pipe": _pipe}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``clawterm``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="clawterm: %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command in _COMMANDS:
            return _COMMANDS[args.command](args)
        return asyncio.run(_ASYNC_COMMANDS[args.command](args))
    except SessionEnded as exc:
        _say(str(exc))
        return EXIT_ERROR
    except (ClientError, ValueError) as exc:
        _say(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
