"""The PTY runner: each session runs a command in its own pseudo-terminal.

``clawterm-agent pty -- CMD ARGS…`` serves :func:`pty_handler`. Per session:

* a new PTY (``os.openpty``); the child becomes a session leader (setsid)
  with the PTY as controlling terminal (TIOCSCTTY), ``TERM=xterm-256color``;
* PTY output → DATA. While :meth:`Session.send` waits (the client has a
  ring's worth unacknowledged, or the daemon is not reading) the master is
  not read, so the program blocks in write(): backpressure reaches it;
* DATA → PTY input, written as the PTY takes it; until it is written the next
  DATA is not taken, so it is not acknowledged and the client's writer waits;
* WINSIZE → TIOCSWINSZ on the master: the kernel sends SIGWINCH;
* on the client's return (RESUMED) the program is nudged to redraw: the size
  is set one row smaller and, ``redraw_delay`` later, back (two SIGWINCHes
  the program sees as two real resizes; see docs/agent.md);
* the exit status → DISCONNECT: code = status, or 128 + signal, reason
  "exited with status N" / "killed by signal N".

The process keeps running while its client is away. When the session ends
otherwise (the client's DISCONNECT, grace expiry, agent shutdown) the
process group gets SIGHUP, and SIGKILL if it has not exited after
``kill_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal
import struct
import subprocess
import termios
from collections.abc import Mapping, Sequence

from ..constants import MAX_PAYLOAD
from ..payloads import WinSize
from .server import Handler
from .session import Session, SessionClosed

__all__ = ["DEFAULT_WINSIZE", "PtyProcess", "exit_disconnect", "pty_handler"]

log = logging.getLogger("clawterm.agent.pty")

#: Size of a new PTY before the client's first WINSIZE.
DEFAULT_WINSIZE = WinSize(24, 80)
_WINSZ = struct.Struct("HHHH")


def exit_disconnect(returncode: int) -> tuple[int, str]:
    """DISCONNECT code and reason for a process's return code (negative: signal)."""
    if returncode < 0:
        sig = -returncode
        return 128 + sig, f"killed by signal {sig}"
    return returncode, f"exited with status {returncode}"


class PtyProcess:
    """A child process on its own PTY, driven from the event loop.

    Create with :meth:`spawn`; the caller must eventually call :meth:`close`
    (kills the process group if still running, closes the master).

    The child is started with :class:`subprocess.Popen`, not the event
    loop's subprocess support: uvloop's leaves descriptors open in the child
    (duplicates of the terminal, anything the agent inherited) even with
    ``close_fds``. Its exit is watched through a pidfd.
    """

    def __init__(self, master: int, popen: subprocess.Popen[bytes]) -> None:
        self.master = master
        self.popen = popen
        self._loop = asyncio.get_running_loop()
        self._size: WinSize = DEFAULT_WINSIZE
        self._restore: asyncio.TimerHandle | None = None
        self._closed = False
        self._idle: float | None = None

    @classmethod
    def spawn(
        cls,
        argv: Sequence[str],
        *,
        winsize: WinSize | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> PtyProcess:
        """Start ``argv`` on a new PTY of ``winsize`` (default 24×80).

        Call it from the event loop's thread; it blocks only until the
        child has exec'd. Raises OSError if the command cannot be started.
        """
        master, slave = os.openpty()
        try:
            size = winsize or DEFAULT_WINSIZE
            _set_winsize(master, size)
            environ = dict(os.environ if env is None else env)
            environ["TERM"] = "xterm-256color"
            popen = subprocess.Popen(
                list(argv),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=environ,
                cwd=cwd,
                start_new_session=True,  # setsid(): a session leader without a terminal...
                # ...which then takes the PTY as its own. Safe despite threads:
                # the child makes only async-signal-safe calls before exec.
                preexec_fn=_child_setup,  # noqa: PLW1509
                close_fds=True,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self = cls(master, popen)
        self._size = size
        return self

    @property
    def pid(self) -> int:
        """The child's process id (also its process group and session id)."""
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal), None while it runs."""
        return self.popen.poll()

    async def wait(self) -> int:
        """Wait for the child to exit; returns :attr:`returncode`."""
        try:
            pidfd = os.pidfd_open(self.popen.pid)
        except (AttributeError, OSError):
            pidfd = None  # no pidfd (Linux < 5.3): poll
        try:
            while (code := self.popen.poll()) is None:
                if pidfd is None:
                    await asyncio.sleep(0.05)
                    continue
                fut: asyncio.Future[None] = self._loop.create_future()
                self._loop.add_reader(pidfd, _set_done, fut)
                try:
                    await fut
                finally:
                    self._loop.remove_reader(pidfd)
            return code
        finally:
            if pidfd is not None:
                os.close(pidfd)

    @property
    def size(self) -> WinSize:
        """The size the PTY should have (a redraw nudge may differ for a moment)."""
        return self._size

    # -- size ----------------------------------------------------------------

    def resize(self, winsize: WinSize) -> None:
        """Apply a WINSIZE (SPEC §13): TIOCSWINSZ on the master, the program gets SIGWINCH."""
        if self._restore is not None:
            self._restore.cancel()
            self._restore = None
        self._size = winsize
        self._apply(winsize)

    def nudge_redraw(self, delay: float = 0.1) -> None:
        """Make the program redraw: one row smaller now, the real size after ``delay``.

        Two distinct sizes, because a program that re-reads the size on
        SIGWINCH and finds it unchanged (ncurses does) would not redraw.
        """
        size = self._size
        if self._restore is not None:
            self._restore.cancel()
        if size.rows > 1:
            smaller = WinSize(size.rows - 1, size.cols, size.xpixel, size.ypixel)
        elif size.cols > 1:
            smaller = WinSize(size.rows, size.cols - 1, size.xpixel, size.ypixel)
        else:
            return
        self._apply(smaller)
        self._restore = self._loop.call_later(delay, self._restore_size)

    def _restore_size(self) -> None:
        self._restore = None
        self._apply(self._size)

    def _apply(self, winsize: WinSize) -> None:
        if self._closed:
            return
        try:
            _set_winsize(self.master, winsize)
        except OSError as exc:
            log.debug("TIOCSWINSZ failed: %s", exc)

    # -- I/O -----------------------------------------------------------------

    async def read(self) -> bytes:
        """The next output of the PTY (at most 65535 bytes).

        Returns b"" once every process has closed the terminal, or, after
        :meth:`draining` was called, once no output came for its ``idle``
        seconds (a background process may keep the terminal open forever).
        """
        while True:
            try:
                return os.read(self.master, MAX_PAYLOAD)
            except BlockingIOError:
                if self._idle is None:
                    await self._ready(writing=False)
                else:
                    try:
                        await asyncio.wait_for(self._ready(writing=False), self._idle)
                    except TimeoutError:
                        return b""
            except OSError as exc:
                if exc.errno == errno.EIO:  # Linux: the slave side is closed everywhere
                    return b""
                raise

    def draining(self, idle: float) -> None:
        """The process exited: let :meth:`read` end after ``idle`` seconds without output."""
        self._idle = idle

    async def write(self, data: bytes) -> None:
        """Write all of ``data`` to the PTY input, waiting while it is full.

        Raises OSError (EIO) if the terminal is gone.
        """
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                await self._ready(writing=True)
                continue
            view = view[n:]

    async def _ready(self, *, writing: bool) -> None:
        loop = self._loop
        fut: asyncio.Future[None] = loop.create_future()
        if writing:
            loop.add_writer(self.master, _set_done, fut)
        else:
            loop.add_reader(self.master, _set_done, fut)
        try:
            await fut
        finally:
            if writing:
                loop.remove_writer(self.master)
            else:
                loop.remove_reader(self.master)

    async def close(self, kill_timeout: float = 2.0) -> int:
        """End the process if it still runs (SIGHUP, then SIGKILL), close the PTY.

        Returns the process's return code.
        """
        if self.returncode is None:
            self._signal(signal.SIGHUP)
            try:
                await asyncio.wait_for(self.wait(), kill_timeout)
            except TimeoutError:
                self._signal(signal.SIGKILL)
                await self.wait()
        if not self._closed:
            self._closed = True
            if self._restore is not None:
                self._restore.cancel()
            os.close(self.master)
        returncode = self.popen.returncode
        assert returncode is not None
        return returncode

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signum)


def _child_setup() -> None:
    # In the child, after setsid(), before exec: the PTY on fd 0 becomes the
    # controlling terminal; signals start from the defaults, none blocked.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGWINCH):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _set_winsize(fd: int, winsize: WinSize) -> None:
    packed = _WINSZ.pack(winsize.rows, winsize.cols, winsize.xpixel or 0, winsize.ypixel or 0)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, packed)


def pty_handler(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    redraw_delay: float = 0.1,
    drain_timeout: float = 1.0,
    kill_timeout: float = 2.0,
) -> Handler:
    """A handler that runs ``argv`` on a new PTY per session (see the module doc).

    ``drain_timeout``: after the process exits, its output is read to the
    end; if processes that inherited the terminal keep it open, reading stops
    once they have written nothing for this many seconds, and the DISCONNECT
    goes out.
    """
    if not argv:
        raise ValueError("pty_handler needs a command")
    command = list(argv)

    async def handle(session: Session) -> None:
        environ = dict(os.environ if env is None else env)
        environ["CLAWTERM_SESSION_ID"] = str(session.id)
        proc = PtyProcess.spawn(command, winsize=session.winsize, env=environ, cwd=cwd)
        log.info("session %d: started %s (pid %d)", session.id, command[0], proc.pid)
        session.on_winsize = proc.resize
        if session.winsize is not None and session.winsize != proc.size:
            proc.resize(session.winsize)  # arrived while the process was starting

        def on_presence(present: bool) -> None:
            if present:
                proc.nudge_redraw(redraw_delay)

        session.on_presence = on_presence
        output = asyncio.create_task(_pump_output(proc, session))
        inputs = asyncio.create_task(_pump_input(proc, session))
        exited = asyncio.create_task(proc.wait())
        ended = asyncio.create_task(session.wait_closed())
        try:
            await asyncio.wait((exited, ended), return_when=asyncio.FIRST_COMPLETED)
            if exited.done():
                # All output written before the exit goes first (SPEC §10);
                # however long the client takes to acknowledge it.
                proc.draining(drain_timeout)
                await output
                code, reason = exit_disconnect(exited.result())
                log.info("session %d: %s", session.id, reason)
                await session.close(code, reason)
        finally:
            for task in (output, inputs, ended):
                task.cancel()
            exited.cancel()
            await proc.close(kill_timeout)

    return handle


async def _pump_output(proc: PtyProcess, session: Session) -> None:
    try:
        while data := await proc.read():
            await session.send(data)
    except SessionClosed:
        pass


async def _pump_input(proc: PtyProcess, session: Session) -> None:
    try:
        async for data in session:
            await proc.write(data)
    except OSError as exc:
        log.debug("session %d: PTY input closed: %s", session.id, exc)
