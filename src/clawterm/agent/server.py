"""The agent socket: asyncio adapter of the agent-leg core (SPEC §14, §15).

:class:`AgentServer` listens on ``<socket_dir>/<tenant>/<agent>.sock`` and
runs one handler per session. Each daemon connection gets a
:class:`_LegProtocol` (an :class:`asyncio.Protocol`, no streams) whose loop
is the house one: bytes in → feed :class:`~clawterm.agent.protocol.AgentConnection`
→ act on its events → write ``data_to_send()`` in one write → re-arm its
timer. Writes from the handler are batched: :meth:`Session.send` queues a
frame and schedules one flush per loop iteration.

The socket file appears only once it is listening: it is bound and put in
listening state under a temporary name in the same directory, then renamed
into place, which the daemon's inotify registry sees as IN_MOVED_TO (SPEC
§15). A daemon can therefore never find the file and be refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

from ..constants import (
    DEFAULT_AGENT_GRACE,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_RING_SIZE,
    DEFAULT_SOCKET_DIR,
    MAX_PAYLOAD,
    ErrorCode,
)
from ..errors import ClawTermError
from .events import (
    ClientResumed,
    ClientSuspended,
    ConnectionFailed,
    DataAcknowledged,
    DataReceived,
    ErrorReceived,
    SessionDetached,
    SessionEnded,
    SessionOpened,
    SessionReattached,
    WindowChanged,
)
from .protocol import AgentConnection, AgentSession, AgentSessions
from .session import Session

__all__ = [
    "SHUTDOWN_REASON",
    "AgentServer",
    "AgentSocketError",
    "Handler",
    "agent_socket_path",
    "bind_agent_socket",
    "run",
]

log = logging.getLogger("clawterm.agent")

#: What a handler is: called once per session, the session ends when it returns.
Handler = Callable[[Session], Awaitable[None]]

#: DISCONNECT reason sent to every session when the agent stops.
SHUTDOWN_REASON = "agent shutting down"
#: Mode of a socket directory the agent creates.
SOCKET_DIR_MODE = 0o755
#: Mode of the socket file: the daemon connects as the owner or the group.
SOCKET_MODE = 0o660
#: Bytes queued by a session's writes after which they are written at once
#: rather than at the end of the loop iteration.
FLUSH_AT = 64 * 1024
#: Seconds the daemon has to close a connection the agent half-closed.
CLOSE_TIMEOUT = 5.0


class AgentSocketError(ClawTermError):
    """The agent socket cannot be created; the message names the path and why."""


def agent_socket_path(socket_dir: str | os.PathLike[str], tenant_id: int, agent_id: int) -> Path:
    """``<socket_dir>/<tenant_id>/<agent_id>.sock``, ids in decimal (SPEC §1)."""
    return Path(socket_dir) / str(tenant_id) / f"{agent_id}.sock"


def bind_agent_socket(path: Path) -> socket.socket:
    """Create the listening Unix socket ``path``, appearing atomically.

    Makes the directory if needed (mode 0755). Binds and listens under a
    temporary name in the same directory, then renames into place (SPEC
    §15). A stale socket file (nobody listening) is replaced; a live one is
    an error: two agents never share a path. The caller owns the returned
    non-blocking socket and must unlink ``path`` when done.
    """
    directory = path.parent
    try:
        _make_dirs(directory)
        _check_not_live(path)
        tmp = directory / f".{path.name}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as exc:
        raise AgentSocketError(f"cannot create {path}: {exc.strerror or exc}") from None
    try:
        sock.bind(str(tmp))
        os.chmod(tmp, SOCKET_MODE)
        sock.listen(socket.SOMAXCONN)
        os.rename(tmp, path)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise AgentSocketError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def _make_dirs(directory: Path) -> None:
    missing: list[Path] = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=SOCKET_DIR_MODE)
            os.chmod(d, SOCKET_DIR_MODE)  # mkdir's mode is masked by the umask


def _check_not_live(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AgentSocketError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return  # stale: replaced by the rename
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return
        raise
    finally:
        probe.close()
    raise AgentSocketError(f"another agent is listening on {path}")


class _LegProtocol(asyncio.Protocol):
    """One daemon connection: drives an :class:`AgentConnection`."""

    def __init__(self, server: AgentServer) -> None:
        self._server = server
        self._loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.core: AgentConnection = server.table.connection(self._loop.time())
        self.session: Session | None = None
        self.writing_paused = False
        self.reading_paused = False
        self._flush_handle: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closed = False
        self._unflushed = 0
        self._shutdown: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but are ones.
        self.transport = cast(asyncio.Transport, transport)
        self._server._legs.add(self)
        self._arm()

    def data_received(self, data: bytes) -> None:
        self.core.receive_data(data, self._loop.time())
        self._process()

    def eof_received(self) -> bool:
        return False  # connection_lost follows and detaches the session

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server._legs.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._shutdown is not None:
            self._shutdown.cancel()
        self.core.connection_lost(self._loop.time())
        self._dispatch()
        self._server._closed_legs.set()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.session is not None:
            self.session._wake_sender()

    # -- reading flow control (only a client ignoring its window, see session.py) --

    def pause_reading(self) -> None:
        self.reading_paused = True
        if self.transport is not None and not self._closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.reading_paused = False
        if self.transport is not None and not self._closed:
            self.transport.resume_reading()

    # -- the loop ------------------------------------------------------------

    def _process(self) -> None:
        self._dispatch()
        self._flush()
        self._arm()

    def core_changed(self) -> None:
        """The session wrote through the core: flush soon and re-arm the timer."""
        self.schedule_flush()
        self._arm()

    def queued(self, size: int) -> None:
        """The session queued a DATA payload of ``size`` bytes: flush soon, or now if much."""
        self._unflushed += size
        if self._unflushed >= FLUSH_AT:
            # Write now so that pause_writing() can stop a writer that never yields.
            self._flush()
        else:
            self.schedule_flush()

    def schedule_flush(self) -> None:
        if self._flush_handle is None and not self._closed:
            self._flush_handle = self._loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_handle = None
        self._flush()
        self._arm()

    def _flush(self) -> None:
        transport = self.transport
        if transport is None or self._closed:
            return
        self._unflushed = 0
        data = self.core.data_to_send()
        if data:
            transport.write(data)
        if self.core.should_close:
            self._shut_down()

    def _shut_down(self) -> None:
        # Half-close, then let the daemon close: closing outright while its
        # ACKs are in flight would make its next write fail (EPIPE) and its
        # transport drop our DISCONNECT or ERROR unread.
        transport = self.transport
        if transport is None or self._closed or self._shutdown is not None:
            return
        if transport.can_write_eof():
            transport.write_eof()  # after the buffered bytes are written
            self._shutdown = self._loop.call_later(CLOSE_TIMEOUT, transport.abort)
        else:
            transport.close()

    def _arm(self) -> None:
        at = self.core.get_timer()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None and not self._closed:
            self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.core.handle_timer(self._loop.time())
        self._process()

    def _dispatch(self) -> None:
        server = self._server
        for event in self.core.events_received():
            session = self.session
            if type(event) is DataReceived:
                if session is not None:
                    session._deliver(event.seq, event.data)
            elif type(event) is DataAcknowledged:
                if session is not None:
                    session._wake_sender()
            elif isinstance(event, SessionOpened):
                self.session = server._open(event.session, self)
            elif isinstance(event, SessionReattached):
                self.session = server._reattach(event, self)
            elif isinstance(event, WindowChanged):
                if session is not None:
                    session._winsize(event.winsize)
            elif isinstance(event, ClientSuspended | ClientResumed):
                if session is not None:
                    session._presence(isinstance(event, ClientResumed))
            elif isinstance(event, SessionDetached):
                if session is not None:
                    server._detached(session, self)
            elif isinstance(event, SessionEnded):
                if session is not None:
                    log.info(
                        "session %d ended by the daemon: %s %s",
                        session.id,
                        event.code,
                        event.reason,
                    )
                    session._ended()
            elif isinstance(event, ErrorReceived):
                log.warning("daemon sent ERROR %s: %s", _code_name(event.code), event.message)
            elif isinstance(event, ConnectionFailed):
                log.info("answered ERROR %s: %s", _code_name(event.code), event.message)

    def flush_and_close(self) -> None:
        """Write what the core has and close (used for a taken-over connection)."""
        self._dispatch()
        self._flush()
        self._shut_down()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)


class AgentServer:
    """Serve ``handler`` on the agent socket ``<socket_dir>/<tenant_id>/<agent_id>.sock``.

    Use as ``async with AgentServer(handler, ...) as server:`` (or call
    :meth:`start` and :meth:`stop`); :func:`run` does that with signal
    handling. ``handler(session)`` runs once per session as its own task; when
    it returns the session ends with DISCONNECT code 0, when it raises with
    INTERNAL (the exception is logged, never sent). ``grace`` is how long a
    session outlives its daemon connection waiting for a RESUME (SPEC §14);
    ``ring_size`` how many unacknowledged bytes a session may hold before
    :meth:`Session.send` waits.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        socket_dir: str | os.PathLike[str] = DEFAULT_SOCKET_DIR,
        tenant_id: int = 0,
        agent_id: int = 1,
        grace: float = DEFAULT_AGENT_GRACE,
        ring_size: int = DEFAULT_RING_SIZE,
        max_payload: int = MAX_PAYLOAD,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        self.handler = handler
        #: The socket file.
        self.path = agent_socket_path(socket_dir, tenant_id, agent_id)
        self.tenant_id = tenant_id
        self.agent_id = agent_id
        #: The sessions' core table.
        self.table = AgentSessions(
            grace=grace,
            ring_size=ring_size,
            max_payload=max_payload,
            handshake_timeout=handshake_timeout,
        )
        #: Input bytes queued for a handler above which its connection is not read.
        self.inbox_limit = 4 * max(ring_size, MAX_PAYLOAD)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._sock_id: tuple[int, int] | None = None
        self._sessions: dict[int, Session] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._legs: set[_LegProtocol] = set()
        self._closed_legs = asyncio.Event()
        self._grace_timer: asyncio.TimerHandle | None = None
        self._grace_at: float | None = None
        self._stopping = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the server runs on (set by :meth:`start`)."""
        assert self._loop is not None, "AgentServer.start() not called"
        return self._loop

    @property
    def sessions(self) -> list[Session]:
        """The sessions alive now (attached or within their grace)."""
        return list(self._sessions.values())

    async def __aenter__(self) -> AgentServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Create the socket and start accepting the daemon's connections.

        Raises :class:`AgentSocketError` if the socket cannot be created.
        """
        self._loop = asyncio.get_running_loop()
        self._closed_legs = asyncio.Event()
        sock = bind_agent_socket(self.path)
        st = os.stat(self.path)
        self._sock_id = (st.st_dev, st.st_ino)
        try:
            self._server = await self._loop.create_unix_server(
                lambda: _LegProtocol(self), sock=sock
            )
        except BaseException:
            sock.close()
            self._unlink()
            raise
        log.info("agent listening on %s", self.path)

    async def serve_forever(self) -> None:
        """Wait until :meth:`stop` is called (or the task is cancelled)."""
        assert self._server is not None, "AgentServer.start() not called"
        with contextlib.suppress(asyncio.CancelledError):
            await self._server.serve_forever()

    async def stop(
        self,
        reason: str = SHUTDOWN_REASON,
        code: int = ErrorCode.SHUTTING_DOWN,
        drain: float = 5.0,
    ) -> None:
        """Stop: remove the socket, DISCONNECT every session, wait for handlers.

        Handlers still running after ``drain`` seconds are cancelled, and
        connections not yet flushed are aborted. Calling it twice does nothing.
        """
        if self._stopping:
            return
        self._stopping = True
        self.table.accepting = False
        self._unlink()
        if self._server is not None:
            self._server.close()
        for session in list(self._sessions.values()):
            if session.attached:
                session._end_local(code, reason)
            else:
                # Nobody to tell; drop it with whatever it holds.
                self.table.discard(session._core)
                session._core.ended = True
                session._core.end_code = code
                session._core.end_reason = reason
                session._ended()
        loop = self.loop
        deadline = loop.time() + drain
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=drain)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        for leg in list(self._legs):
            if leg.core.session is None:
                leg.abort()  # still in handshake
        while self._legs and loop.time() < deadline:
            self._closed_legs.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed_legs.wait(), deadline - loop.time())
        for leg in list(self._legs):
            leg.abort()
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        if self._server is not None:
            await self._server.wait_closed()
        log.info("agent stopped")

    # -- socket file ---------------------------------------------------------

    def _unlink(self) -> None:
        # Only our own socket: another agent may have replaced a stale path.
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._sock_id:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove %s: %s", self.path, exc)

    # -- sessions ------------------------------------------------------------

    def _open(self, core: AgentSession, leg: _LegProtocol) -> Session:
        session = Session(self, core)
        session._attach(leg)
        self._sessions[core.session_id] = session
        task = self.loop.create_task(self._run_handler(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info(
            "session %d opened (tenant %d, agent %d)",
            core.session_id,
            core.tenant_id,
            core.agent_id,
        )
        return session

    def _reattach(self, event: SessionReattached, leg: _LegProtocol) -> Session | None:
        core = event.session
        session = self._sessions.get(core.session_id)
        if session is None:  # pragma: no cover - the table and the dict agree
            return None
        old = session._leg
        if old is not None and old is not leg:
            old.session = None
            old.flush_and_close()
        session._attach(leg)
        self._rearm_grace()
        log.info("session %d resumed (daemon last_rx_seq %d)", core.session_id, event.last_rx_seq)
        if core.ended:
            # The DISCONNECT it held has just been delivered.
            self._sessions.pop(core.session_id, None)
        return session

    def _detached(self, session: Session, leg: _LegProtocol) -> None:
        if session._leg is leg:
            session._attach(None)
        self._rearm_grace()
        log.info(
            "session %d lost its daemon connection; kept %.0f s for a RESUME",
            session.id,
            self.table.grace,
        )
        session._presence(False)

    def _session_ended(self, session: Session) -> None:
        if session._core.session_id not in self.table.sessions:
            self._sessions.pop(session.id, None)

    async def _run_handler(self, session: Session) -> None:
        try:
            await self.handler(session)
        except asyncio.CancelledError:
            session._end_local(ErrorCode.SHUTTING_DOWN, SHUTDOWN_REASON)
            raise
        except Exception:
            log.exception("session %d: handler failed", session.id)
            session._end_local(ErrorCode.INTERNAL, "agent error")
        else:
            session._end_local(0, "")

    # -- grace timer ---------------------------------------------------------

    def _rearm_grace(self) -> None:
        at = self.table.get_timer()
        if at == self._grace_at:
            return
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        self._grace_at = at
        if at is not None:
            self._grace_timer = self.loop.call_at(at, self._on_grace_timer)

    def _on_grace_timer(self) -> None:
        self._grace_timer = None
        self._grace_at = None
        for core in self.table.handle_timer(self.loop.time()):
            session = self._sessions.pop(core.session_id, None)
            log.info("session %d: no RESUME within the grace period; ended", core.session_id)
            if session is not None:
                session._ended()
        self._rearm_grace()


def run(
    handler: Handler,
    *,
    socket_dir: str | os.PathLike[str] = DEFAULT_SOCKET_DIR,
    tenant_id: int = 0,
    agent_id: int = 1,
    grace: float = DEFAULT_AGENT_GRACE,
    ring_size: int = DEFAULT_RING_SIZE,
    use_uvloop: bool = True,
) -> None:
    """Serve ``handler`` until SIGTERM or SIGINT, then stop gracefully.

    Blocks. Every session gets DISCONNECT ("agent shutting down") and the
    socket file is removed before it returns. Raises
    :class:`AgentSocketError` if the socket cannot be created.
    """

    async def main() -> None:
        server = AgentServer(
            handler,
            socket_dir=socket_dir,
            tenant_id=tenant_id,
            agent_id=agent_id,
            grace=grace,
            ring_size=ring_size,
        )
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await server.start()
        try:
            await stop.wait()
        finally:
            await server.stop()

    if use_uvloop:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - a declared dependency
            pass
        else:
            uvloop.run(main())
            return
    asyncio.run(main())
