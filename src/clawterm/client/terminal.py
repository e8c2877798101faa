"""The local terminal: raw mode, its size, and the link notices.

:class:`RawTerminal` puts a terminal in raw mode (like ssh: every key goes
to the agent, the agent's bytes reach the screen untouched) and restores
the saved settings on exit — on every path: normal exit, exception,
signal (the CLI turns SIGTERM/SIGHUP into a normal exit) and, as a last
resort, :mod:`atexit`.

Link notices (:class:`Notifier`), one line each when the link drops and
when it is back, chosen with ``--notice``:

* ``line`` (default) — a line written to stderr after CR-LF, in reverse
  video, followed by CR-LF. It never overwrites what the agent drew; it
  scrolls it by up to two lines. A PTY agent redraws full-screen programs
  after a resume, which repairs the scroll.
* ``title`` — the terminal's title (OSC 2) shows the notice; nothing on the
  screen changes. The title is pushed at start and popped when the link is
  back and at exit (xterm title stack; terminals without it keep the last
  title).
* ``none`` — no notice.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import select
import struct
import termios
import tty
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

__all__ = ["NoticeMode", "Notifier", "RawTerminal", "terminal_size", "write_all"]

NoticeMode = Literal["line", "title", "none"]


def terminal_size(fd: int) -> tuple[int, int, int, int]:
    """(rows, cols, xpixel, ypixel) of the terminal on ``fd``."""
    packed = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    rows, cols, xpix, ypix = struct.unpack("HHHH", packed)
    return rows, cols, xpix, ypix


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, blocking, even if ``fd`` is non-blocking."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        except InterruptedError:
            continue
        view = view[n:]


class RawTerminal:
    """Context manager: raw mode on ``fd``, restored on exit."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._saved: list[Any] | None = None

    def __enter__(self) -> RawTerminal:
        self._saved = termios.tcgetattr(self.fd)
        atexit.register(self.restore)
        tty.setraw(self.fd, termios.TCSANOW)
        return self

    def restore(self) -> None:
        """Put the saved settings back (idempotent)."""
        saved, self._saved = self._saved, None
        if saved is not None:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)
            atexit.unregister(self.restore)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()


class Notifier:
    """Writes link notices in the chosen mode. ``write`` defaults to stderr."""

    def __init__(self, mode: NoticeMode, write: Callable[[bytes], None] | None = None) -> None:
        self.mode = mode
        self._write = write or (lambda data: write_all(2, data))
        self._pushed = False

    def start(self) -> None:
        """Call once the terminal is raw."""
        if self.mode == "title":
            self._write(b"\x1b[22;0t")  # push the title
            self._pushed = True

    def down(self, text: str) -> None:
        """The link dropped."""
        self._show(text, lost=True)

    def up(self, text: str) -> None:
        """The link is back."""
        self._show(text, lost=False)

    def info(self, text: str) -> None:
        """Any other one-line message (always as a line, unless mode is none)."""
        if self.mode != "none":
            self._write(f"\r\n\x1b[7m[clawterm] {text}\x1b[0m\r\n".encode())

    def _show(self, text: str, *, lost: bool) -> None:
        if self.mode == "line":
            self._write(f"\r\n\x1b[7m[clawterm] {text}\x1b[0m\r\n".encode())
        elif self.mode == "title":
            if lost:
                self._write(f"\x1b]2;[clawterm] {text}\x07".encode())
            else:
                self._write(b"\x1b[23;0t\x1b[22;0t")  # pop back the user's title, push again

    def stop(self) -> None:
        """Call before leaving raw mode."""
        if self._pushed:
            self._write(b"\x1b[23;0t")
            self._pushed = False
