"""The demo agent: a stand-in for a streaming AI chat agent (``clawterm-agent demo``).

It prints a prompt, reads a line the way a raw terminal sends it (byte by
byte, echoing, CR or LF ends it, backspace erases), and streams a reply token
by token at ``rate`` tokens per second. Replies are canned and deterministic
— no model, no network — but the conversation is remembered: replies refer
back to earlier messages, and ``/history`` lists them.

Three pieces: :class:`LineEditor` (raw input → echo and lines),
:class:`DemoBrain` (a line → a reply, with memory) and
:func:`demo_handler` (the session loop). The first two do no I/O.
"""

from __future__ import annotations

import asyncio
import codecs
import re
import zlib
from collections import deque
from dataclasses import dataclass

from .server import Handler
from .session import Session, SessionClosed

__all__ = ["DEFAULT_RATE", "PROMPT", "DemoBrain", "Edit", "LineEditor", "demo_handler"]

#: Tokens per second of a streamed reply.
DEFAULT_RATE = 20.0
#: Printed before each line of input.
PROMPT = "you> "
#: Printed before each reply.
REPLY_PREFIX = "agent> "

_WORD = re.compile(r"[\w'-]+")
_TOKEN = re.compile(r"\s*\S+")


@dataclass(frozen=True, slots=True)
class Edit:
    """One result of feeding input to the :class:`LineEditor`."""

    #: "echo" (show ``text``), "line" (``text`` is a finished line),
    #: "interrupt" (Ctrl-C) or "eof" (Ctrl-D on an empty line).
    kind: str
    #: Text to echo, or the finished line.
    text: str = ""


class LineEditor:
    """Line editing over raw terminal input, as it arrives (any chunking).

    Handles UTF-8 split across chunks, CR, LF and CRLF line ends, backspace
    (DEL or BS), Ctrl-U, Ctrl-C, Ctrl-D; escape sequences (arrow keys…) are
    skipped.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        #: The line typed so far.
        self.buffer: list[str] = []
        self._after_cr = False
        # Escape-sequence state: None, "esc" (after ESC), "csi" (after ESC [), "ss3" (after ESC O).
        self._esc: str | None = None

    @property
    def text(self) -> str:
        """The line typed so far."""
        return "".join(self.buffer)

    def feed(self, data: bytes) -> list[Edit]:
        """Take raw input; returns what to echo and the lines it finished."""
        edits: list[Edit] = []
        echo: list[str] = []

        def flush_echo() -> None:
            if echo:
                edits.append(Edit("echo", "".join(echo)))
                echo.clear()

        for ch in self._decoder.decode(data):
            after_cr, self._after_cr = self._after_cr, False
            if self._esc is not None:
                self._escape(ch)
            elif ch == "\x1b":
                self._esc = "esc"
            elif ch in "\r\n":
                if ch == "\n" and after_cr:
                    continue  # CRLF
                self._after_cr = ch == "\r"
                flush_echo()
                edits.append(Edit("line", self.text))
                self.buffer.clear()
            elif ch in ("\x7f", "\b"):
                if self.buffer:
                    self.buffer.pop()
                    echo.append("\b \b")
            elif ch == "\x15":  # Ctrl-U
                echo.append("\b \b" * len(self.buffer))
                self.buffer.clear()
            elif ch == "\x03":  # Ctrl-C
                flush_echo()
                self.buffer.clear()
                edits.append(Edit("interrupt"))
            elif ch == "\x04":  # Ctrl-D
                if not self.buffer:
                    flush_echo()
                    edits.append(Edit("eof"))
            elif ch == "\t" or ch >= " ":
                self.buffer.append(ch)
                echo.append(ch)
        flush_echo()
        return edits

    def _escape(self, ch: str) -> None:
        state = self._esc
        if state == "esc":
            self._esc = "csi" if ch == "[" else "ss3" if ch == "O" else None
        elif state == "ss3" or "\x40" <= ch <= "\x7e":
            self._esc = None  # the final byte


def _quote(text: str, limit: int = 60) -> str:
    return "“" + (text if len(text) <= limit else text[: limit - 1] + "…") + "”"


class DemoBrain:
    """Deterministic replies that remember the conversation."""

    _OPENINGS = (
        "Got it.",
        "Interesting.",
        "Let me think about that.",
        "Understood.",
        "Noted.",
    )
    _THOUGHTS = (
        "A real agent would now plan, call a few tools and stream its answer "
        "just like this, one token at a time.",
        "If your network drops right now, nothing is lost: the session lives in "
        "the daemon and in me, and your client picks up where it left off.",
        "I'm a deterministic demo, so ask me the same thing twice and you'll get the same answer.",
        "Try closing your laptop mid-reply and resuming from your phone: the rest "
        "of this sentence will be waiting for you.",
        "Every byte between us is numbered and acknowledged end to end.",
    )

    def __init__(self) -> None:
        #: The user's messages so far, oldest first.
        self.history: list[str] = []

    def reply(self, message: str) -> str:
        """The reply to ``message`` (may be empty: nothing to say)."""
        message = message.strip()
        if not message:
            return ""
        command = message.lower()
        if command == "/help":
            return (
                "Commands: /history lists what you said, /reset makes me forget, "
                "Ctrl-C stops a reply, Ctrl-D ends the session."
            )
        if command == "/history":
            return self._recap() or "You haven't said anything yet."
        if command == "/reset":
            self.history.clear()
            return "Forgotten. Let's start over."
        earlier = list(self.history)
        self.history.append(message)
        n = len(self.history)
        digest = zlib.crc32(message.encode())
        words = _WORD.findall(message)
        parts = [
            "Good question." if message.endswith("?") else self._OPENINGS[digest % 5],
        ]
        if words:
            parts.append(f"So this is about {_quote(max(words, key=len))}.")
        if any(k in command for k in ("remember", "recap", "what did i say", "so far")):
            recap = self._recap(earlier)
            parts.append(
                f"Here's what you told me before:\n{recap}\n" if recap else "This is our first."
            )
        elif not earlier:
            parts.append("This is the first thing you've told me.")
        else:
            i, previous = self._related(earlier, words)
            parts.append(f"That connects to your message {i}: {_quote(previous)}.")
        parts.append(self._THOUGHTS[(digest >> 8) % len(self._THOUGHTS)])
        parts.append(f"(That was message {n}.)")
        text = parts[0]
        for part in parts[1:]:
            text += part if text.endswith("\n") else " " + part
        return text

    def _recap(self, messages: list[str] | None = None) -> str:
        messages = self.history if messages is None else messages
        return "\n".join(f"  {i}. {m}" for i, m in enumerate(messages, 1))

    @staticmethod
    def _related(earlier: list[str], words: list[str]) -> tuple[int, str]:
        # The earlier message sharing the most words; ties go to the latest.
        wanted = {w.lower() for w in words}
        best = max(
            range(len(earlier)),
            key=lambda i: (len(wanted & {w.lower() for w in _WORD.findall(earlier[i])}), i),
        )
        return best + 1, earlier[best]


def tokens(text: str) -> list[str]:
    """Split a reply into the tokens it is streamed in (words with their leading space)."""
    return _TOKEN.findall(text)


def demo_handler(rate: float = DEFAULT_RATE) -> Handler:
    """A handler running the demo conversation; ``rate`` tokens/s (≤ 0: as fast as possible)."""

    async def handle(session: Session) -> None:
        await _Demo(session, rate).run()

    return handle


class _Demo:
    def __init__(self, session: Session, rate: float) -> None:
        self.session = session
        self.delay = 1.0 / rate if rate > 0 else 0.0
        self.editor = LineEditor()
        self.brain = DemoBrain()
        # Lines typed while a reply streams, answered in order after it;
        # None: Ctrl-D, the end of the conversation.
        self.pending: deque[str | None] = deque()
        self.busy = False
        self.interrupted = False
        self.responder: asyncio.Task[None] | None = None

    async def send(self, text: str) -> None:
        await self.session.send(text.replace("\n", "\r\n").encode())

    async def run(self) -> None:
        session = self.session
        await self.send(
            f"ClawTerm demo agent (session {session.id}): a stand-in for an AI agent,"
            " no model, no network.\n"
            "Type a message and press Enter. /help for commands, Ctrl-D to leave.\n\n" + PROMPT
        )
        try:
            async for data in session:
                for edit in self.editor.feed(data):
                    if None in self.pending:
                        break  # Ctrl-D typed ahead: nothing after it counts
                    if edit.kind == "echo":
                        if not self.busy:  # type-ahead is shown after the reply
                            await self.send(edit.text)
                    elif edit.kind == "line":
                        if self.busy:
                            self.pending.append(edit.text)
                        else:
                            self.busy = True
                            self.responder = asyncio.create_task(self.respond(edit.text))
                    elif edit.kind == "interrupt":
                        if self.busy:
                            self.interrupted = True
                        else:
                            await self.send("^C\n" + PROMPT)
                    elif self.busy:
                        self.pending.append(None)
                    else:
                        await self.goodbye()
                        return
        finally:
            if self.responder is not None:
                self.responder.cancel()

    async def respond(self, line: str) -> None:
        try:
            while True:
                await self.send("\n")
                reply = self.brain.reply(line)
                if reply:
                    await self.stream(REPLY_PREFIX + reply)
                if self.interrupted:
                    self.interrupted = False
                    eof = None in self.pending
                    self.pending.clear()
                    if eof:
                        self.pending.append(None)
                    await self.send(" ^C [stopped]\n\n")
                elif reply:
                    await self.send("\n\n")
                if not self.pending:
                    break
                next_line = self.pending.popleft()
                await self.send(PROMPT)
                if next_line is None:
                    await self.goodbye()
                    return
                line = next_line
                await self.send(line)
            # Nothing else to answer: a new prompt and whatever was typed ahead.
            self.busy = False
            await self.send(PROMPT + self.editor.text)
        except SessionClosed:
            pass

    async def goodbye(self) -> None:
        await self.send("\nbye\n")
        await self.session.close(0, "bye")

    async def stream(self, text: str) -> None:
        for token in tokens(text):
            if self.interrupted:
                return
            await self.send(token)
            await asyncio.sleep(self.delay)
