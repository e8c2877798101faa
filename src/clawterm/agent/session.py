"""The session object a handler gets (asyncio side of the agent SDK).

A :class:`Session` wraps one :class:`~clawterm.agent.protocol.AgentSession`
and the daemon connection it is attached to at the moment, which can change
under it (agent-leg resume, SPEC §14, §17) without the handler noticing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..constants import MAX_PAYLOAD
from ..errors import LocalProtocolError
from ..frame import Buffer
from ..payloads import WinSize
from .protocol import AgentSession

if TYPE_CHECKING:
    from .server import AgentServer, _LegProtocol

__all__ = ["Session", "SessionClosed"]

log = logging.getLogger("clawterm.agent")


class SessionClosed(LocalProtocolError):
    """The session has ended; it can no longer be written to.

    ``code`` and ``reason`` say how it ended (see :attr:`Session.close_code`).
    """

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"session closed ({code}: {reason})" if reason else "session closed")
        self.code = code
        self.reason = reason


class Session:
    """One client session, as the handler sees it.

    Read the client's bytes with ``async for data in session``; the
    iteration ends when the session ends. Write with :meth:`send`; end with
    :meth:`close`. Only one task should iterate; any number may send.

    Presence and window size: :attr:`client_present` and :attr:`winsize` are
    always current; :meth:`wait_presence` waits for a change, and the
    :attr:`on_presence` / :attr:`on_winsize` callbacks (plain functions, run
    on the event loop, must not block) are called on every notification.
    """

    def __init__(self, server: AgentServer, core: AgentSession) -> None:
        self._server = server
        self._core = core
        self._loop = server.loop
        self._leg: _LegProtocol | None = None
        self._inbox: deque[tuple[int, bytes]] = deque()
        self._inbox_bytes = 0
        self._reader: asyncio.Future[None] | None = None
        self._sender: asyncio.Future[None] | None = None
        self._send_lock = asyncio.Lock()
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False
        #: Called with the new :class:`~clawterm.payloads.WinSize` on every WINSIZE.
        self.on_winsize: Callable[[WinSize], object] | None = None
        #: Called with True (client back) or False (client gone) on every notification.
        self.on_presence: Callable[[bool], object] | None = None

    def __repr__(self) -> str:
        return f"Session(id={self.id}, tenant={self.tenant_id}, agent={self.agent_id})"

    # -- what the handler reads ---------------------------------------------

    @property
    def id(self) -> int:
        """The session id (the daemon's, SPEC §5)."""
        return self._core.session_id

    @property
    def tenant_id(self) -> int:
        """The client's tenant, from CONNECT."""
        return self._core.tenant_id

    @property
    def agent_id(self) -> int:
        """The agent id the client asked for, from CONNECT."""
        return self._core.agent_id

    @property
    def winsize(self) -> WinSize | None:
        """The latest window size from the client, or None before the first (SPEC §13)."""
        return self._core.winsize

    @property
    def client_present(self) -> bool:
        """False after the daemon's SUSPEND or a lost daemon connection; True after its RESUMED."""
        return self._core.client_present

    @property
    def attached(self) -> bool:
        """True while a daemon connection carries the session."""
        return self._core.connection is not None

    @property
    def closed(self) -> bool:
        """True once the session has ended (either side, or the grace ran out)."""
        return self._closed

    @property
    def close_code(self) -> int | None:
        """The DISCONNECT code the session ended with (TIMEOUT when the grace ran out)."""
        return self._core.end_code

    @property
    def close_reason(self) -> str:
        """The DISCONNECT reason the session ended with."""
        return self._core.end_reason

    @property
    def unacked_bytes(self) -> int:
        """Bytes of sent frames the client has not acknowledged yet (SPEC §4)."""
        return self._core.send_buffer.unacked_bytes

    # -- reading -------------------------------------------------------------

    def __aiter__(self) -> Session:
        return self

    async def __anext__(self) -> bytes:
        """The next bytes from the client; ends (StopAsyncIteration) when the session ends.

        Taking data is what acknowledges it to the client (SPEC §4): a
        handler that stops reading stops the client's writer, nothing piles up.
        """
        inbox = self._inbox
        while not inbox:
            if self._closed:
                raise StopAsyncIteration
            fut = self._loop.create_future()
            self._reader = fut
            try:
                await fut
            finally:
                self._reader = None
        seq, data = inbox.popleft()
        size = len(data)
        self._inbox_bytes -= size
        core = self._core
        core.data_consumed(seq, size, self._loop.time())
        leg = self._leg
        if leg is not None:
            leg.core_changed()
            if leg.reading_paused and self._inbox_bytes <= self._server.inbox_limit // 2:
                leg.resume_reading()
        return data

    # -- writing -------------------------------------------------------------

    async def send(self, data: Buffer) -> None:
        """Send ``data`` to the client as DATA frames of at most 65535 bytes.

        Waits while the client has a ring's worth of unacknowledged data or
        the daemon is not reading (SPEC §14): nothing is dropped and nothing
        is buffered without bound. While the daemon's connection is down the
        data is kept and replayed on RESUME. A send of several frames sets
        FLAGS MORE on all but the last. Raises :class:`SessionClosed` if the
        session ended before everything was handed over.
        """
        view = memoryview(data).cast("B")
        total = len(view)
        async with self._send_lock:
            pos = 0
            while True:
                await self._writable()
                end = pos + MAX_PAYLOAD
                chunk = view[pos:end]
                self._core.send_data(chunk, more=end < total)
                leg = self._leg
                if leg is not None:
                    leg.queued(len(chunk))
                pos = end
                if pos >= total:
                    return

    async def _writable(self) -> None:
        core = self._core
        while True:
            if core.ended:
                raise SessionClosed(core.end_code, core.end_reason)
            leg = self._leg
            if not core.send_buffer.full and (leg is None or not leg.writing_paused):
                return
            if leg is not None and leg.reading_paused:
                # What unblocks us (ACKs) may be behind the input we stopped reading.
                leg.resume_reading()
            fut = self._loop.create_future()
            self._sender = fut
            try:
                await fut
            finally:
                self._sender = None

    async def close(self, code: int = 0, reason: str = "") -> None:
        """End the session: DISCONNECT with ``code`` and ``reason`` (SPEC §10).

        The DISCONNECT follows every frame of a completed :meth:`send`; a
        send still waiting raises :class:`SessionClosed`. While the daemon's
        connection is down, the DISCONNECT is delivered on RESUME. Closing an
        ended session does nothing.
        """
        self._end_local(code, reason)

    # -- waiting -------------------------------------------------------------

    async def wait_presence(self, present: bool = True) -> bool:
        """Wait until :attr:`client_present` equals ``present``.

        Returns False instead if the session ends first.
        """
        while self._core.client_present != present:
            if self._closed:
                return False
            await self._wait_change()
        return True

    async def wait_closed(self) -> None:
        """Wait until the session has ended."""
        while not self._closed:
            await self._wait_change()

    async def _wait_change(self) -> None:
        fut = self._loop.create_future()
        self._waiters.append(fut)
        try:
            await fut
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)

    # -- called by the server and the connection adapter ---------------------

    def _notify(self) -> None:
        waiters = self._waiters
        self._waiters = []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _wake_sender(self) -> None:
        fut = self._sender
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _wake_reader(self) -> None:
        fut = self._reader
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _deliver(self, seq: int, data: bytes) -> None:
        self._inbox.append((seq, data))
        self._inbox_bytes += len(data)
        if self._inbox_bytes > self._server.inbox_limit and self._sender is None:
            # Only a client ignoring its window gets here (see protocol.py).
            # Never while a send() waits: the ACKs it waits for come this way.
            leg = self._leg
            if leg is not None and not leg.reading_paused:
                leg.pause_reading()
        self._wake_reader()

    def _attach(self, leg: _LegProtocol | None) -> None:
        self._leg = leg
        self._wake_sender()

    def _presence(self, present: bool) -> None:
        self._notify()
        callback = self.on_presence
        if callback is not None:
            try:
                callback(present)
            except Exception:
                log.exception("session %d: on_presence callback failed", self.id)

    def _winsize(self, winsize: WinSize) -> None:
        callback = self.on_winsize
        if callback is not None:
            try:
                callback(winsize)
            except Exception:
                log.exception("session %d: on_winsize callback failed", self.id)

    def _end_local(self, code: int | None, reason: str) -> None:
        core = self._core
        if core.ended:
            self._ended()
            return
        core.send_disconnect(code, reason)
        leg = self._leg
        if leg is not None:
            leg.schedule_flush()
        self._ended()

    def _ended(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._server._session_ended(self)
        self._wake_reader()
        self._wake_sender()
        self._notify()
