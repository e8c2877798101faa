"""ssh-style escape sequences on the keyboard stream, sans I/O.

The escape character (``~`` by default) is recognised only right after
Enter (CR or LF) or at the very start of the session, as in ssh:

* ``~.`` — detach: SUSPEND the session, leave it warm on the daemon, exit;
* ``~~`` — send one literal ``~``;
* ``~?`` — show the escapes;
* ``~`` followed by anything else — both are sent unchanged.

A ``~`` at the start of a line is held back until the next key decides
what it is.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["ESCAPE_HELP", "EscapeAction", "EscapeParser"]


class EscapeAction(Enum):
    """What an escape sequence asks the client to do."""

    DETACH = "detach"  #: ``~.``
    HELP = "help"  #: ``~?``


ESCAPE_HELP = (
    "Supported escape sequences (after Enter):\n"
    " {e}.  - detach: the session stays on the daemon (clawterm resume)\n"
    " {e}?  - this message\n"
    " {e}{e}  - send the escape character itself\n"
)

_CR, _LF = 0x0D, 0x0A


class EscapeParser:
    """Splits keyboard bytes into bytes to send and :class:`EscapeAction` items."""

    def __init__(self, escape: int | None = ord("~")) -> None:
        #: The escape byte, or None to disable escapes.
        self.escape = escape
        self._line_start = True
        self._pending = False

    def feed(self, data: bytes) -> list[bytes | EscapeAction]:
        """Items in order; bytes items are to be sent as they are."""
        if self.escape is None:
            return [data] if data else []
        esc = self.escape
        out: list[bytes | EscapeAction] = []
        buf = bytearray()
        for b in data:
            if self._pending:
                self._pending = False
                if b == ord("."):
                    out.extend(self._flush(buf))
                    out.append(EscapeAction.DETACH)
                    self._line_start = False
                    continue
                if b == ord("?"):
                    out.extend(self._flush(buf))
                    out.append(EscapeAction.HELP)
                    self._line_start = True
                    continue
                buf.append(esc)
                if b == esc:
                    self._line_start = False
                    continue
            elif self._line_start and b == esc:
                self._pending = True
                continue
            buf.append(b)
            self._line_start = b in (_CR, _LF)
        out.extend(self._flush(buf))
        return out

    @staticmethod
    def _flush(buf: bytearray) -> list[bytes | EscapeAction]:
        if not buf:
            return []
        data = bytes(buf)
        buf.clear()
        return [data]
