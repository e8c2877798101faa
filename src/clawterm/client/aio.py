"""The asyncio client: a thin adapter around :class:`~clawterm.client.protocol.ClientConnection`.

Usage::

    async with clawterm.client.connect("node.example", token=TOKEN, agent=3) as session:
        await session.send(b"ls\\n")
        async for data in session:
            sys.stdout.buffer.write(data)

How it works. A :class:`Session` owns one sans-I/O core for the whole life
of the session and at most one transport at a time (TLS 1.3 over TCP, an
:class:`asyncio.Protocol`). Every input — bytes, end of a transport, a
timer — goes into the core; then :meth:`Session._pump` writes what the core
produced, acts on its events (open a transport, close one, deliver data,
announce a state) and re-arms the one timer (STYLE §2). When the core asks
for a transport the adapter connects, checks the daemon's certificate
(:class:`~clawterm.client.trust.Trust`) *before* telling the core, so
CONNECT and its token never reach an untrusted daemon.

Flow control, both ways, never unbounded and never dropping:

* ``send()`` waits while the core's unacknowledged plus unsent bytes reach
  ``send_limit`` (256 KiB) or the transport's write buffer is above its
  high-water mark;
* received bytes wait in a queue for the application; above
  ``max_receive_queue`` the adapter stops reading the socket (the daemon's
  ring then fills and the agent is paused, SPEC §7).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..constants import DEFAULT_PORT, DEFAULT_QUIC_PORT
from ..errors import LocalProtocolError
from ..frame import Buffer
from .errors import SavedSessionError, SessionEnded, TrustError, error_for
from .events import (
    Accepted,
    ClientState,
    CloseReason,
    CloseTransport,
    DataReceived,
    Event,
    OpenTransport,
    Resumed,
    StateChanged,
)
from .link import HandoffLink, is_link
from .protocol import ClientConfig, ClientConnection, ResumeTicket
from .saved import SavedSession, SessionStore
from .trust import KnownHosts, Trust

if TYPE_CHECKING:  # aioquic is imported only when QUIC is used
    from ..quic.client import QuicClientConnection, QuicStreamReader, QuicStreamWriter

__all__ = [
    "HEAD_START",
    "TRANSPORTS",
    "Session",
    "SessionContext",
    "StateInfo",
    "TransportMode",
    "connect",
    "parse_token",
    "resume",
]

#: ``tcp``: TLS 1.3 over TCP; ``quic``: QUIC (UDP); ``auto``: race them, QUIC first.
TransportMode = Literal["tcp", "quic", "auto"]
TRANSPORTS: tuple[TransportMode, ...] = ("tcp", "quic", "auto")
#: ``auto``: how long QUIC may try alone before TLS/TCP is started too (seconds).
HEAD_START = 0.25
#: Bytes written on a QUIC stream and not yet acknowledged above which ``send()`` waits.
_QUIC_WRITE_HIGH = 256 * 1024

log = logging.getLogger("clawterm.client")

#: Reasons after which iteration simply ends (no exception).
CLEAN_REASONS = frozenset({CloseReason.SUSPENDED, CloseReason.CLOSED, CloseReason.DISCONNECTED})
# Saved-state names: a session this client stopped using but the daemon still
# holds is "suspended" (resumable); one that is over, or elsewhere, is not.
_STILL_ON_DAEMON = frozenset(
    {CloseReason.GAVE_UP, CloseReason.PROTOCOL_ERROR, CloseReason.UNTRUSTED}
)


def parse_token(token: bytes | str) -> bytes:
    """A token as 32 raw bytes, from raw bytes or 64 hex characters."""
    if isinstance(token, str):
        text = token.strip()
        if len(text) != 64:
            raise ValueError("a token is 64 hexadecimal characters")
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise ValueError("a token is 64 hexadecimal characters") from None
    if len(token) != 32:
        raise ValueError("a token is 32 bytes")
    return bytes(token)


@dataclass(frozen=True, slots=True)
class StateInfo:
    """A state of the session as the application sees it."""

    #: The state.
    state: ClientState
    #: Why (SUSPENDED and CLOSED only).
    reason: CloseReason | None = None
    #: The DISCONNECT or ERROR code behind the reason, if any.
    code: int | None = None
    #: Detail: DISCONNECT reason, ERROR message, why the link dropped…
    message: str = ""
    #: CONNECTED after a RESUMED: True.
    resumed: bool = False
    #: CONNECTED after a RESUMED with GAP: output was lost in the daemon (SPEC §7).
    gap: bool = False
    #: The transport in use when this state was entered: "tcp", "quic" or None (none up).
    transport: str | None = None

    @property
    def finished(self) -> bool:
        """True for SUSPENDED and CLOSED."""
        return self.state in (ClientState.SUSPENDED, ClientState.CLOSED)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "connection closed by the daemon"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class _Transport(Protocol):
    """What the session needs of a transport (an :class:`asyncio.Transport` has it)."""

    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


class _Link(asyncio.Protocol):
    """One transport. Feeds the session only once attached (after the trust check)."""

    def __init__(self, session: Session, kind: str = "tcp") -> None:
        self.session = session
        #: "tcp" or "quic".
        self.kind = kind
        #: The QUIC connection (migration), for a QUIC link.
        self.quic: QuicClientConnection | None = None
        self.transport: _Transport | None = None
        self.attached = False
        self.early: list[bytes] = []
        self.paused = False
        self.lost: BaseException | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.attached:
            self.session._on_data(self, data)
        else:
            self.early.append(data)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.closed.done():
            return
        self.lost = exc
        self.closed.set_result(None)
        if self.attached:
            self.session._on_lost(self, exc)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.session._wake()


class _QuicTransport:
    """A QUIC stream (:func:`clawterm.quic.client.open_quic_stream`) as a :class:`_Transport`.

    A task reads the stream into the link; ``pause_reading`` stops reading, so
    the stream's receive window closes (QUIC flow control). Writes above
    ``_QUIC_WRITE_HIGH`` unacknowledged bytes pause the link's writing until
    the daemon has acknowledged enough.
    """

    def __init__(
        self,
        link: _Link,
        reader: QuicStreamReader,
        writer: QuicStreamWriter,
        conn: QuicClientConnection,
    ) -> None:
        self._link = link
        self._reader = reader
        self._writer = writer
        self._conn = conn
        self._loop = asyncio.get_running_loop()
        self._reading = asyncio.Event()
        self._reading.set()
        self._closing = False
        self._drainer: asyncio.Task[None] | None = None
        writer.high = _QUIC_WRITE_HIGH
        self._task = self._loop.create_task(self._read_loop())

    async def _read_loop(self) -> None:
        exc: BaseException | None = None
        try:
            while True:
                await self._reading.wait()
                data = await self._reader.read(65536)
                if not data:
                    break
                self._link.data_received(data)
        except asyncio.CancelledError:
            pass
        except (ConnectionError, OSError) as err:
            exc = err
        self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        if not self._closing:
            self._closing = True
            self._conn.close()
        if self._drainer is not None:
            self._drainer.cancel()
        # The UDP socket is closed by the connection once it terminated; make sure.
        proto: Any = self._conn.protocol
        self._loop.call_later(3.0, lambda: proto._transport and proto._transport.close())
        self._link.connection_lost(exc)

    def write(self, data: bytes) -> None:
        if self._closing or self._writer.is_closing():
            return  # as a closed TCP transport: the core resends after RESUME
        try:
            self._writer.write(data)
        except ConnectionError:
            return
        if self._writer.buffered() > _QUIC_WRITE_HIGH and self._drainer is None:
            self._link.pause_writing()
            self._drainer = self._loop.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except ConnectionError:
            return
        finally:
            self._drainer = None
        self._link.resume_writing()

    def close(self) -> None:
        """FIN after what was written; the connection closes once the daemon has it."""
        if self._closing:
            return
        self._closing = True
        self._writer.close()  # the reader then sees EOF: _finish

    def abort(self) -> None:
        if not self._closing:
            self._closing = True
            self._conn.close()
        self._task.cancel()

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._writer.transport.get_extra_info(name, default)


def _route_source(addr: Any) -> str | None:
    """The local address the kernel would send to ``addr`` from (no packet is sent)."""
    family = socket.AF_INET6 if ":" in str(addr[0]) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(addr[:2] if family == socket.AF_INET else addr)
            return str(probe.getsockname()[0])
    except OSError:
        return None


class Session:
    """One client session; survives its transports. Create with :func:`connect` or :func:`resume`.

    Not thread-safe: use it from the event loop it was created on.
    """

    def __init__(
        self,
        conn: ClientConnection,
        *,
        host: str,
        port: int,
        trust: Trust,
        connect_timeout: float = 10.0,
        max_receive_queue: int = 1 << 20,
        store: SessionStore | None = None,
        name: str | None = None,
        save_interval: float = 1.0,
        on_state: Callable[[StateInfo], None] | None = None,
        transport: TransportMode = "tcp",
        quic_port: int = DEFAULT_QUIC_PORT,
        head_start: float = HEAD_START,
        migrate_timeout: float = 3.0,
        watch_address: float | None = 2.0,
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}")
        self._conn = conn
        #: Daemon host and TLS/TCP port (also the known_hosts key for both transports).
        self.host = host
        self.port = port
        #: Transport policy: "tcp", "quic" or "auto".
        self.transport_mode: TransportMode = transport
        #: Daemon QUIC (UDP) port.
        self.quic_port = quic_port
        self._head_start = head_start
        self._migrate_timeout = migrate_timeout
        self._watch_interval = watch_address
        self._watch: asyncio.TimerHandle | None = None
        self._route_src: str | None = None
        self._migrating = False
        #: Successful QUIC migrations (no RESUME needed).
        self.migrations = 0
        #: Migrations that failed and fell back to reconnect + RESUME.
        self.failed_migrations = 0
        self.trust = trust
        self._ssl = trust.ssl_context()
        self._connect_timeout = connect_timeout
        self._max_queue = max_receive_queue
        self._store = store
        #: Name of the saved-session record (None when not saving).
        self.name = name
        self._save_interval = save_interval
        self._on_state = on_state
        #: SHA-256 of the daemon's certificate (set once connected).
        self.fingerprint: str | None = trust.expected
        self._loop = asyncio.get_running_loop()
        self._link: _Link | None = None
        self._closing: set[_Link] = set()
        self._open_task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._rxq: deque[tuple[int, bytes]] = deque()
        self._rx_bytes = 0
        self._reading_paused = False
        self._consumed = conn.last_rx_seq
        self._info = StateInfo(conn.state)
        self._state_queues: list[asyncio.Queue[StateInfo]] = []
        self._error: SessionEnded | None = None
        self._pending_resumed: Resumed | None = None
        self._saved_at = 0.0
        self._save_handle: asyncio.TimerHandle | None = None
        self._save_failed = False
        self._created = time.time()

    # ------------------------------------------------------------------ public API

    @property
    def state(self) -> ClientState:
        """The current state."""
        return self._info.state

    @property
    def transport(self) -> str | None:
        """The transport in use now: "tcp", "quic", or None while none is up."""
        link = self._link
        return link.kind if link is not None else None

    async def migrate(self, local_host: str | None = None, *, within: float | None = None) -> bool:
        """The local network changed: move the transport to it; True if migrated.

        Over QUIC the connection moves to a new local UDP socket (on
        ``local_host``, default: any address) and proves the new path with a
        PING within ``within`` seconds (default ``migrate_timeout``): the
        stream goes on, no RESUME. If that fails, the transport is dropped
        and the session reconnects and RESUMEs as after any drop (False).
        A TLS/TCP connection cannot change address: it is dropped and the
        session reconnects and RESUMEs at once (False). Without a transport
        up (reconnecting, finished) nothing happens (False).
        """
        link = self._link
        if link is None or self._conn.finished or self._migrating:
            return False
        if link.quic is None:
            self._drop(link, ConnectionError("local address changed"))
            return False
        self._migrating = True
        started = self._loop.time()
        try:
            await link.quic.migrate(
                local_host=local_host,
                within=self._migrate_timeout if within is None else within,
            )
        except (OSError, TimeoutError, ConnectionError) as exc:
            self.failed_migrations += 1
            log.info("QUIC migration failed (%s): reconnecting with RESUME", _describe(exc))
            self._drop(link, ConnectionError(f"migration failed: {_describe(exc)}"))
            return False
        finally:
            self._migrating = False
        self.migrations += 1
        log.debug("QUIC connection migrated in %.3f s", self._loop.time() - started)
        return self._link is link

    def _drop(self, link: _Link, why: BaseException) -> None:
        """Give up ``link`` now: the core reconnects (and RESUMEs)."""
        if self._link is link:
            self._on_lost(link, why)
        if link.transport is not None:
            link.transport.abort()

    @property
    def info(self) -> StateInfo:
        """The current state with its reason and detail."""
        return self._info

    @property
    def finished(self) -> bool:
        """True once SUSPENDED or CLOSED."""
        return self._conn.finished

    @property
    def session_id(self) -> int:
        """The session id (0 until ACCEPT)."""
        return self._conn.session_id

    @property
    def resume_token(self) -> bytes | None:
        """The resume token (a secret)."""
        return self._conn.resume_token

    @property
    def tenant(self) -> int:
        return self._conn.tenant_id

    @property
    def agent(self) -> int:
        return self._conn.agent_id

    @property
    def last_rx_seq(self) -> int:
        """SEQ of the last daemon DATA handed to the application."""
        return self._consumed

    @property
    def gaps(self) -> int:
        """How many RESUMEDs reported GAP (output the daemon no longer had)."""
        return self._conn.gaps

    @property
    def disconnect_code(self) -> int | None:
        """The code of the DISCONNECT that ended the session (e.g. the agent's exit status)."""
        if self._conn.close_reason is CloseReason.DISCONNECTED:
            return self._conn.close_code
        return None

    @property
    def disconnect_reason(self) -> str:
        """The reason text of the DISCONNECT that ended the session."""
        if self._conn.close_reason is CloseReason.DISCONNECTED:
            return self._conn.close_message
        return ""

    @property
    def unsent_bytes(self) -> int:
        """Bytes accepted by :meth:`send` and never written (e.g. suspended while down)."""
        return self._conn.unsent_bytes

    def exception(self) -> SessionEnded | None:
        """The error that ended the session, or None (running, or ended cleanly)."""
        return self._error

    async def send(self, data: Buffer) -> None:
        """Send bytes to the agent.

        Waits while 256 KiB are unacknowledged or the transport is paused
        (backpressure) and while reconnecting once that much is queued;
        never drops. Raises :class:`SessionEnded` (or a subclass) once the
        session is over.
        """
        view = memoryview(data).cast("B")
        step = self._conn.config.max_frame_payload
        pos = 0
        if not view and not self._conn.finished:
            return
        while True:
            await self._wait(self._can_send)
            if self._conn.finished:
                raise self._ended_error()
            chunk = view[pos : pos + step]
            self._conn.send_data(chunk, self._loop.time())
            self._pump()
            pos += len(chunk)
            if pos >= len(view):
                return

    async def drain(self) -> None:
        """Wait until the agent has acknowledged everything sent.

        Raises :class:`SessionEnded` if the session ends first.
        """
        conn = self._conn
        await self._wait(lambda: conn.finished or conn.unacked_bytes + conn.unsent_bytes == 0)
        if conn.unacked_bytes + conn.unsent_bytes and conn.finished:
            raise self._ended_error()

    def resize(
        self, rows: int, cols: int, xpixel: int | None = None, ypixel: int | None = None
    ) -> None:
        """Tell the agent the terminal size (WINSIZE, SPEC §13); re-sent after each resume."""
        if self._conn.finished:
            return
        self._conn.send_winsize(rows, cols, xpixel, ypixel, now=self._loop.time())
        self._pump()

    async def suspend(self, grace: float = 5.0) -> None:
        """Detach on purpose: SUSPEND, then close. The session stays warm on the daemon.

        Waits up to ``grace`` seconds for the transport to flush and close.
        Resume it later with :func:`resume` (its saved record or a link).
        No-op once finished.
        """
        if self._conn.finished:
            return
        self._conn.send_suspend(self._loop.time())
        self._pump()
        await self._wait_transports(grace)

    async def close(self, code: int | None = None, reason: str = "", grace: float = 10.0) -> None:
        """End the session for good: DISCONNECT (SPEC §10), optionally with a code and reason.

        First waits up to ``grace`` seconds for a transport and for the
        agent to acknowledge everything sent, so nothing sent before is
        lost. No-op once finished.
        """
        conn = self._conn
        if conn.finished:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._wait(
                    lambda: (
                        conn.finished
                        or (conn.transport_open and conn.unacked_bytes + conn.unsent_bytes == 0)
                    )
                )
        if conn.finished:
            return
        conn.send_disconnect(code, reason, now=self._loop.time())
        self._pump()
        await self._wait_transports(grace)

    async def receive(self) -> bytes:
        """The next bytes from the agent, in order, never a duplicate.

        Returns ``b""`` once the session ended cleanly (DISCONNECT, or our
        own suspend/close) and everything before was returned; raises the
        :class:`SessionEnded` subclass that ended it otherwise.
        """
        while True:
            while self._rxq:
                seq, data = self._rxq.popleft()
                self._rx_bytes -= len(data)
                self._consumed = seq
                self._after_consume()
                if data:
                    return data
            if self._conn.finished:
                if self._error is not None:
                    raise self._error
                return b""
            await self._wait(lambda: bool(self._rxq) or self._conn.finished)

    def __aiter__(self) -> Session:
        return self

    async def __anext__(self) -> bytes:
        data = await self.receive()
        if not data:
            raise StopAsyncIteration
        return data

    async def states(self) -> AsyncIterator[StateInfo]:
        """The current state, then every change, until SUSPENDED or CLOSED."""
        queue: asyncio.Queue[StateInfo] = asyncio.Queue()
        self._state_queues.append(queue)
        try:
            info = self._info
            while True:
                yield info
                if info.finished:
                    return
                info = await queue.get()
        finally:
            self._state_queues.remove(queue)

    async def wait_closed(self) -> StateInfo:
        """Wait until SUSPENDED or CLOSED; return that state."""
        await self._wait(lambda: self._conn.finished)
        return self._info

    def saved(self) -> SavedSession:
        """A saved-session record of this session as it is now.

        Raises :class:`~clawterm.errors.LocalProtocolError` before ACCEPT.
        """
        token = self._conn.resume_token
        if not self._conn.session_id or token is None:
            raise LocalProtocolError("the session has no id or resume token yet")
        info = self._info
        state = info.state.value
        if info.reason in _STILL_ON_DAEMON:
            state = ClientState.SUSPENDED.value
        elif info.reason is CloseReason.TAKEN_OVER:
            state = "taken-over"
        return SavedSession(
            name=self.name or f"{self._conn.session_id:08x}",
            host=self.host,
            port=self.port,
            tenant=self._conn.tenant_id,
            agent=self._conn.agent_id,
            session_id=self._conn.session_id,
            resume_token=token,
            last_rx_seq=self._consumed,
            fingerprint=self.fingerprint,
            ca=os.fspath(self.trust.ca) if self.trust.ca is not None else None,
            keepalive=self._conn.keepalive,
            state=state,
            reason=info.reason.value if info.reason else "",
            detail=info.message,
            created=self._created,
            last_seen=time.time(),
            transport=self.transport_mode,
            quic_port=self.quic_port,
        )

    def handoff_link(self) -> HandoffLink:
        """The link another device can take this session over with (a secret)."""
        return self.saved().link()

    # ------------------------------------------------------------------ adapter loop

    async def _start(self) -> None:
        self._pump()
        await self._wait(lambda: self._conn.established or self._conn.finished)
        if self._error is not None:
            raise self._error
        if self._conn.finished:
            raise self._ended_error()

    def _pump(self) -> None:
        conn = self._conn
        out = conn.data_to_send()
        if out and self._link is not None and self._link.transport is not None:
            self._link.transport.write(out)
        for event in conn.events_received():
            self._on_event(event)
        self._rearm()
        self._wake()

    def _on_event(self, event: Event) -> None:
        if isinstance(event, DataReceived):
            self._rxq.append((event.seq, event.data))
            self._rx_bytes += len(event.data)
            if self._rx_bytes > self._max_queue and not self._reading_paused:
                self._set_reading(paused=True)
        elif isinstance(event, OpenTransport):
            self._open_task = self._loop.create_task(self._open(event.attempt))
        elif isinstance(event, CloseTransport):
            self._close_link(event)
        elif isinstance(event, StateChanged):
            self._on_state_changed(event)
        elif isinstance(event, Resumed):
            self._name_record(event.session_id)
            self._pending_resumed = event
            if event.gap:
                log.warning(
                    "session %08x: the daemon no longer had all output (GAP)", event.session_id
                )
        elif isinstance(event, Accepted):
            self._name_record(event.session_id)

    def _on_state_changed(self, event: StateChanged) -> None:
        resumed = self._pending_resumed
        self._pending_resumed = None
        info = StateInfo(
            event.state,
            event.reason,
            event.code,
            event.message,
            resumed=resumed is not None,
            gap=resumed is not None and resumed.gap,
            transport=self.transport,
        )
        self._info = info
        if info.finished:
            if self._open_task is not None and not self._open_task.done():
                self._open_task.cancel()
            if self._watch is not None:
                self._watch.cancel()
                self._watch = None
            assert event.reason is not None
            if event.reason not in CLEAN_REASONS and self._error is None:
                self._error = error_for(event.reason, event.code, event.message)
        if self._conn.established or self.name is not None:
            self._save(force=True)
        for queue in self._state_queues:
            queue.put_nowait(info)
        if self._on_state is not None:
            try:
                self._on_state(info)
            except Exception:
                log.exception("on_state callback failed")

    def _close_link(self, event: CloseTransport) -> None:
        link, self._link = self._link, None
        if link is None:
            if self._open_task is not None and not self._open_task.done():
                self._open_task.cancel()
            return
        link.attached = False
        transport = link.transport
        if transport is None:
            return
        if event.data:
            transport.write(event.data)
        if event.abort:
            transport.abort()
        else:
            transport.close()
        self._closing.add(link)
        link.closed.add_done_callback(lambda _: self._closing.discard(link))

    async def _wait_transports(self, grace: float) -> None:
        links = [link.closed for link in self._closing]
        if self._open_task is not None and not self._open_task.done():
            self._open_task.cancel()
        if links:
            await asyncio.wait(links, timeout=grace)
        for link in list(self._closing):
            if link.transport is not None:
                link.transport.abort()

    async def _open(self, attempt: int) -> None:
        conn = self._conn
        try:
            link = await self._dial()
        except TrustError as exc:
            # Never retried: a changed certificate, or a chain/name that did not verify.
            self._error = exc
            conn.fail(CloseReason.UNTRUSTED, str(exc), self._loop.time())
            self._pump()
            return
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.debug("transport to %s failed: %s", self._where(), _describe(exc))
            conn.receive_eof(self._loop.time(), _describe(exc))
            self._pump()
            return
        transport = link.transport
        assert transport is not None
        if conn.finished or self._open_task is not asyncio.current_task():
            transport.abort()  # suspended or closed meanwhile: this transport is not wanted
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.debug("transport %d to %s up over %s", attempt, self._where(), link.kind)
        link.attached = True
        self._link = link
        if self._reading_paused:
            transport.pause_reading()
        if link.quic is not None:
            self._start_watch(link)
        conn.transport_opened(self._loop.time())
        self._pump()
        for data in link.early:
            if self._link is link:
                self._on_data(link, data)
        link.early.clear()
        if link.closed.done() and self._link is link:
            self._on_lost(link, link.lost)

    def _where(self) -> str:
        if self.transport_mode == "tcp":
            return f"{self.host}:{self.port}"
        if self.transport_mode == "quic":
            return f"{self.host}:{self.quic_port}/udp"
        return f"{self.host}:{self.port} or {self.quic_port}/udp"

    async def _dial(self) -> _Link:
        """A trusted, not yet attached transport, by the transport policy.

        Raises :class:`TrustError` (final) or OSError/TimeoutError/SSLError.
        """
        if self.transport_mode == "tcp":
            return await self._dial_tcp()
        if self.transport_mode == "quic":
            return await self._dial_quic()
        return await self._race()

    async def _race(self) -> _Link:
        """``auto``: QUIC first; TLS/TCP too after the head start; the first up wins."""
        quic = self._loop.create_task(self._dial_quic())
        tasks = [quic]
        try:
            done, _ = await asyncio.wait({quic}, timeout=self._head_start)
            if not done or quic.exception() is not None:
                tasks.append(self._loop.create_task(self._dial_tcp()))
            pending = {t for t in tasks if not t.done()}
            while True:
                for task in tasks:  # QUIC first when both are up
                    if task.done() and task.exception() is None:
                        winner = task.result()
                        for other in tasks:
                            if other is not task:
                                other.add_done_callback(_discard_link)
                        return winner
                    if task.done():
                        err = _dial_error(task)
                        if isinstance(err, TrustError):
                            raise err
                if not pending:
                    break
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
        raise _dial_error(tasks[-1])  # TLS/TCP's error when both failed: the more telling one

    async def _dial_tcp(self) -> _Link:
        link = _Link(self, "tcp")
        try:
            await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: link,
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host,
                    ssl_handshake_timeout=self._connect_timeout,
                ),
                self._connect_timeout,
            )
        except asyncio.CancelledError:
            if link.transport is not None:
                link.transport.abort()
            raise
        except ssl.SSLCertVerificationError as exc:
            # CA mode: the chain or the name did not verify.
            raise TrustError(
                f"certificate of {self.host}:{self.port} not trusted: {exc.verify_message}"
            ) from None
        transport = link.transport
        assert transport is not None
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self._check(link, der, f"{self.host}:{self.port}")
        return link

    async def _dial_quic(self) -> _Link:
        from ..quic.client import QuicCertificateError, open_quic_stream

        link = _Link(self, "quic")
        ca = self.trust.ca
        try:
            reader, writer, qconn = await open_quic_stream(
                self.host,
                self.quic_port,
                verify=ca is not None,
                cafile=os.fspath(ca) if ca is not None else None,
                server_name=self.host,
                connect_timeout=self._connect_timeout,
            )
        except QuicCertificateError as exc:
            raise TrustError(f"certificate of {self.host}:{self.quic_port}/udp: {exc}") from None
        except ConnectionError as exc:
            raise ConnectionError(f"QUIC: {exc or 'handshake failed'}") from None
        link.quic = qconn
        link.transport = _QuicTransport(link, reader, writer, qconn)
        # Same certificate, same known_hosts entry (host:TLS port) as TLS/TCP.
        self._check(link, qconn.peer_certificate_der, f"{self.host}:{self.quic_port}/udp")
        return link

    def _check(self, link: _Link, der: bytes | None, where: str) -> None:
        """The trust check, before anything is sent; aborts the link on failure."""
        try:
            if not der:
                raise TrustError(f"{where} presented no certificate")
            self.fingerprint = self.trust.check(self.host, self.port, der)
        except TrustError:
            if link.transport is not None:
                link.transport.abort()
            raise

    def _start_watch(self, link: _Link) -> None:
        """QUIC: watch the route's source address toward the daemon; migrate when it changes."""
        if self._watch_interval is None or link.transport is None:
            return
        peer = link.transport.get_extra_info("peername")
        if peer is None:
            return
        self._route_src = _route_source(peer)
        if self._watch is not None:
            self._watch.cancel()
        self._watch = self._loop.call_later(self._watch_interval, self._check_route, link, peer)

    def _check_route(self, link: _Link, peer: Any) -> None:
        self._watch = None
        if self._link is not link or self._conn.finished or self._watch_interval is None:
            return
        src = _route_source(peer)
        if src is not None and src != self._route_src and not self._migrating:
            log.info("local address changed (%s -> %s): migrating", self._route_src, src)
            self._route_src = src
            self._loop.create_task(self.migrate())
        self._watch = self._loop.call_later(self._watch_interval, self._check_route, link, peer)

    def _on_data(self, link: _Link, data: bytes) -> None:
        if link is not self._link:
            return
        self._conn.receive_data(data, self._loop.time())
        self._pump()

    def _on_lost(self, link: _Link, exc: BaseException | None) -> None:
        if link is not self._link:
            return
        self._link = None
        link.attached = False
        self._conn.receive_eof(self._loop.time(), _describe(exc))
        self._pump()

    def _rearm(self) -> None:
        when = self._conn.get_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None:
            self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._conn.handle_timer(self._loop.time())
        self._pump()

    def _set_reading(self, *, paused: bool) -> None:
        self._reading_paused = paused
        link = self._link
        if link is not None and link.transport is not None:
            if paused:
                link.transport.pause_reading()
            else:
                link.transport.resume_reading()
        self._conn.set_reading_paused(paused, self._loop.time())

    def _after_consume(self) -> None:
        if self._reading_paused and self._rx_bytes <= self._max_queue // 2:
            self._set_reading(paused=False)
            self._pump()
        if self._store is not None:
            self._save()

    def _can_send(self) -> bool:
        conn = self._conn
        if conn.finished:
            return True
        link = self._link
        return not conn.send_blocked and not (link is not None and link.paused)

    def _ended_error(self) -> SessionEnded:
        if self._error is not None:
            return self._error
        info = self._info
        return error_for(info.reason or CloseReason.CLOSED, info.code, info.message)

    async def _wait(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            fut = self._loop.create_future()
            self._waiters.append(fut)
            try:
                await fut
            finally:
                if fut in self._waiters:
                    self._waiters.remove(fut)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # ------------------------------------------------------------------ saving

    def _name_record(self, session_id: int) -> None:
        if self._store is not None and self.name is None:
            try:
                self.name = self._store.unique_name(f"{session_id:08x}")
            except (OSError, SavedSessionError) as exc:
                log.warning("cannot read saved sessions in %s: %s", self._store.path, exc)
                self.name = f"{session_id:08x}"

    def _save(self, *, force: bool = False) -> None:
        """Write the saved record: now if forced, else at most every save_interval."""
        if self._store is None or not self._conn.session_id or self._conn.resume_token is None:
            return
        now = self._loop.time()
        if not force and now - self._saved_at < self._save_interval:
            if self._save_handle is None:
                delay = self._save_interval - (now - self._saved_at)
                self._save_handle = self._loop.call_later(delay, self._save_later)
            return
        if self._save_handle is not None:
            self._save_handle.cancel()
            self._save_handle = None
        self._saved_at = now
        try:
            self._store.save(self.saved())
        except (OSError, SavedSessionError) as exc:
            if not self._save_failed:
                log.warning("cannot save session to %s: %s", self._store.path, exc)
            self._save_failed = True

    def _save_later(self) -> None:
        self._save_handle = None
        self._save(force=True)


def _dial_error(task: asyncio.Task[_Link]) -> BaseException:
    exc = task.exception()
    assert exc is not None
    return exc


def _discard_link(task: asyncio.Task[_Link]) -> None:
    """A dial that lost the race: close what it opened, swallow its error."""
    if task.cancelled() or task.exception() is not None:
        return
    link = task.result()
    if link.transport is not None:
        link.transport.abort()


def _session_context(
    make_conn: Callable[[], ClientConnection],
    on_exit: Literal["suspend", "close"],
    **session_options: Any,
) -> SessionContext:
    """What :func:`connect` and :func:`resume` share: a fresh sans-I/O core per
    entry, wrapped in a :class:`Session` with the caller's options."""
    return SessionContext(lambda: Session(make_conn(), **session_options), on_exit)


class SessionContext:
    """What :func:`connect` and :func:`resume` return.

    ``async with`` it to get a connected :class:`Session`; on leaving the
    block a session still running is suspended (``on_exit="suspend"``, the
    default: it stays warm and resumable) or closed with DISCONNECT
    (``on_exit="close"``). ``await`` it instead to get the session without
    that cleanup.
    """

    def __init__(
        self, factory: Callable[[], Session], on_exit: Literal["suspend", "close"]
    ) -> None:
        self._factory = factory
        self._on_exit = on_exit
        self._session: Session | None = None

    async def _enter(self) -> Session:
        session = self._factory()
        self._session = session
        try:
            await session._start()
        except BaseException:
            if not session.finished:
                await session.suspend()
            raise
        return session

    def __await__(self) -> Generator[object, None, Session]:
        return self._enter().__await__()

    async def __aenter__(self) -> Session:
        return await self._enter()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session = self._session
        if session is None or session.finished:
            return
        if self._on_exit == "close" and exc_type is None:
            await session.close()
        else:
            await session.suspend()


def _mode(text: str | None) -> TransportMode:
    """A recorded transport policy (unknown or missing: tcp)."""
    for mode in TRANSPORTS:
        if text == mode:
            return mode
    return "tcp"


def _trust(
    ca: str | os.PathLike[str] | None,
    known_hosts: KnownHosts | str | os.PathLike[str] | None,
    fingerprint: str | None,
    tofu: bool,
    on_pin: Callable[[str, str, Path], None] | None,
) -> Trust:
    kh = known_hosts if isinstance(known_hosts, KnownHosts) else KnownHosts(known_hosts)
    return Trust(ca=ca, known_hosts=kh, fingerprint=fingerprint, tofu=tofu, on_pin=on_pin)


def connect(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    token: bytes | str,
    tenant: int = 0,
    agent: int = 1,
    ca: str | os.PathLike[str] | None = None,
    known_hosts: KnownHosts | str | os.PathLike[str] | None = None,
    fingerprint: str | None = None,
    tofu: bool = True,
    on_pin: Callable[[str, str, Path], None] | None = None,
    config: ClientConfig | None = None,
    connect_timeout: float = 10.0,
    max_receive_queue: int = 1 << 20,
    store: SessionStore | None = None,
    name: str | None = None,
    save_interval: float = 1.0,
    on_state: Callable[[StateInfo], None] | None = None,
    on_exit: Literal["suspend", "close"] = "suspend",
    transport: TransportMode | None = None,
    quic_port: int | None = None,
    head_start: float = HEAD_START,
    migrate_timeout: float = 3.0,
    watch_address: float | None = 2.0,
) -> SessionContext:
    """Open a new session with ``agent`` of ``tenant`` on the daemon at ``host:port``.

    ``token``: 32 bytes or 64 hex characters. Trust: ``ca`` (a CA bundle)
    or, by default, certificate pinning in ``known_hosts`` (default
    ``<config dir>/known_hosts``) with trust on first use (``tofu``;
    ``on_pin(key, fingerprint, path)`` is told of each new pin);
    ``fingerprint`` requires one exact certificate. ``config`` sets limits,
    timings and the reconnect backoff. With ``store`` the session is saved
    there under ``name`` (default: its id in hex) for :func:`resume`.
    ``on_state`` is called with each :class:`StateInfo`.

    ``transport``: ``"tcp"`` (the default: TLS 1.3 on ``port``), ``"quic"``
    (UDP ``quic_port``, default 7221) or ``"auto"`` (QUIC first; TLS/TCP too
    if QUIC is not up within ``head_start`` seconds; the first up wins, the
    other is closed). Every reconnect follows the same policy. Trust is the
    same on both: one known_hosts entry (``host:port``) for the daemon's one
    certificate. Over QUIC, a change of the local address seen every
    ``watch_address`` seconds (None: never) migrates the connection (see
    :meth:`Session.migrate`); a migration not confirmed within
    ``migrate_timeout`` falls back to reconnect + RESUME.

    The first transport is not retried: if it fails, or the daemon refuses,
    entering the context raises (:class:`~clawterm.client.errors.ConnectFailed`,
    :class:`~clawterm.client.errors.AuthenticationFailed`,
    :class:`~clawterm.client.errors.TrustError`…). After ACCEPT the session
    reconnects by itself.
    """
    raw_token = parse_token(token)
    trust = _trust(ca, known_hosts, fingerprint, tofu, on_pin)
    mode: TransportMode = transport or "tcp"
    qport = DEFAULT_QUIC_PORT if quic_port is None else quic_port

    return _session_context(
        lambda: ClientConnection(tenant_id=tenant, agent_id=agent, token=raw_token, config=config),
        on_exit,
        host=host,
        port=port,
        trust=trust,
        connect_timeout=connect_timeout,
        max_receive_queue=max_receive_queue,
        store=store,
        name=name,
        save_interval=save_interval,
        on_state=on_state,
        transport=mode,
        quic_port=qport,
        head_start=head_start,
        migrate_timeout=migrate_timeout,
        watch_address=watch_address,
    )


def resume(
    target: SavedSession | HandoffLink | str,
    *,
    last_rx_seq: int | None = None,
    known_hosts: KnownHosts | str | os.PathLike[str] | None = None,
    ca: str | os.PathLike[str] | None = None,
    tofu: bool = True,
    on_pin: Callable[[str, str, Path], None] | None = None,
    config: ClientConfig | None = None,
    connect_timeout: float = 10.0,
    max_receive_queue: int = 1 << 20,
    store: SessionStore | None = None,
    name: str | None = None,
    save_interval: float = 1.0,
    on_state: Callable[[StateInfo], None] | None = None,
    on_exit: Literal["suspend", "close"] = "suspend",
    transport: TransportMode | None = None,
    quic_port: int | None = None,
    head_start: float = HEAD_START,
    migrate_timeout: float = 3.0,
    watch_address: float | None = 2.0,
) -> SessionContext:
    """Take up an existing session: from a saved record, a handoff link or its text.

    A saved record resumes from its saved last_rx_seq; a link from 0 — the
    daemon then replays all the output it retains (full context) and the
    client that had the session gets TAKEN_OVER. ``last_rx_seq`` overrides
    either. The record's or link's certificate fingerprint is required.
    Unlike :func:`connect`, a failing transport is retried with backoff
    (the daemon may be restarting); entering the context returns once
    RESUMED arrives and raises if the session is gone
    (:class:`~clawterm.client.errors.SessionGone`), taken over, or
    reconnecting gives up (``config.backoff.give_up_after``).

    ``transport``/``quic_port``: as :func:`connect`; by default the ones the
    record or link carries (``"tcp"`` and 7221 for records and links that
    carry none).

    Nothing sent before a previous process died can be resent: a client
    keeps its resend buffer in memory only.
    """
    if isinstance(target, str):
        if not is_link(target):
            raise ValueError("resume() takes a SavedSession, a HandoffLink or a clawterm:// link")
        target = HandoffLink.parse(target)
    if isinstance(target, HandoffLink):
        host, port, tenant, agent = target.host, target.port, target.tenant, target.agent
        fingerprint = target.fingerprint
        ticket = ResumeTicket(target.session_id, target.resume_token, last_rx_seq or 0)
        record_ca = None
        record_mode, record_qport = target.transport, target.quic_port
    else:
        host, port, tenant, agent = target.host, target.port, target.tenant, target.agent
        fingerprint = target.fingerprint
        ticket = target.ticket(last_rx_seq)
        record_ca = target.ca
        record_mode, record_qport = target.transport, target.quic_port
        if name is None:
            name = target.name
    mode: TransportMode = transport or _mode(record_mode)
    qport = quic_port or record_qport or DEFAULT_QUIC_PORT
    trust = _trust(ca if ca is not None else record_ca, known_hosts, fingerprint, tofu, on_pin)

    return _session_context(
        lambda: ClientConnection(tenant_id=tenant, agent_id=agent, resume=ticket, config=config),
        on_exit,
        host=host,
        port=port,
        trust=trust,
        connect_timeout=connect_timeout,
        max_receive_queue=max_receive_queue,
        store=store,
        name=name,
        save_interval=save_interval,
        on_state=on_state,
        transport=mode,
        quic_port=qport,
        head_start=head_start,
        migrate_timeout=migrate_timeout,
        watch_address=watch_address,
    )
