"""The demo agent's line editor and reply generator, and the demo handler in-process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from clawterm.agent.demo import DemoBrain, Edit, LineEditor, demo_handler, tokens

from .leg import DaemonLeg, disconnect, serving


def feed_all(editor: LineEditor, data: bytes, bytewise: bool) -> list[Edit]:
    if not bytewise:
        return editor.feed(data)
    edits: list[Edit] = []
    for i in range(len(data)):
        edits += editor.feed(data[i : i + 1])
    return edits


def lines(edits: list[Edit]) -> list[str]:
    return [e.text for e in edits if e.kind == "line"]


@pytest.mark.parametrize("bytewise", [False, True])
def test_line_editor(bytewise: bool) -> None:
    editor = LineEditor()
    edits = feed_all(editor, "héllo\r\nwörld\nthird\rfourth\r".encode(), bytewise)
    assert lines(edits) == ["héllo", "wörld", "third", "fourth"]
    echo = "".join(e.text for e in edits if e.kind == "echo")
    assert echo == "héllowörldthirdfourth"
    # Backspace (DEL or BS), Ctrl-U, escape sequences (arrows, F1) skipped.
    edits = feed_all(editor, b"abx\x7fc\x08d\x1b[A\x1bOP\x1b[1;5Ce\r", bytewise)
    assert lines(edits) == ["abde"]
    edits = feed_all(editor, b"junk\x15ok\r", bytewise)
    assert lines(edits) == ["ok"]
    # Ctrl-C clears the line; Ctrl-D only on an empty line.
    edits = feed_all(editor, b"abc\x03", bytewise)
    assert edits[-1] == Edit("interrupt") and editor.text == ""
    assert feed_all(editor, b"x\x04", bytewise) == [Edit("echo", "x")]
    assert feed_all(editor, b"\x15\x04", bytewise)[-1] == Edit("eof")


def test_brain_remembers() -> None:
    brain = DemoBrain()
    first = brain.reply("How do I deploy the daemon?")
    assert first.startswith("Good question.") and "“deploy”" in first
    assert "first thing" in first
    second = brain.reply("and the daemon logs")
    assert "message 1: “How do I deploy the daemon?”" in second
    third = brain.reply("what did I say so far")
    assert "1. How do I deploy the daemon?" in third and "2. and the daemon logs" in third
    assert brain.reply("   ") == ""
    assert "1. How do I" in brain.reply("/history")
    assert brain.reply("/reset") and brain.history == []
    # Deterministic.
    assert DemoBrain().reply("same") == DemoBrain().reply("same")
    assert tokens("a bc  d") == ["a", " bc", "  d"]


async def test_reply_streams_at_the_rate_and_ctrl_c_stops_it(socket_dir: Path) -> None:
    async with serving(demo_handler(rate=50), socket_dir) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(1)
        await leg.output_until(b"you> ")
        t0 = time.monotonic()
        leg.send_data(b"one\r")
        await leg.output_until(b"agent> Got")
        first = time.monotonic()
        await leg.output_until(b"(That was message 1.)")
        # ~30 tokens at 50/s: well over 0.3 s, one DATA frame each.
        assert time.monotonic() - first > 0.3
        await leg.output_until(b"you> ")
        assert time.monotonic() - t0 < 5
        # Type-ahead during a reply is answered after it; Ctrl-C stops a reply.
        leg.send_data(b"two\r")
        await leg.output_until(b"agent> ")
        leg.send_data(b"\x03")
        text = await leg.output_until(b"you> ")
        assert b"^C [stopped]" in text and b"(That was message 2.)" not in text
        leg.send_data(b"\x04")
        frames = await leg.closed()
        assert disconnect(frames[-1]).code == 0


async def test_everything_typed_ahead_is_answered_before_ctrl_d(socket_dir: Path) -> None:
    # As a script would send it: all at once, Ctrl-D included.
    async with serving(demo_handler(rate=0), socket_dir) as server:
        leg = await DaemonLeg.open(server.path)
        await leg.connect(2)
        leg.send_data(b"first line\rsecond line\r\x04ignored\r")
        frames = await leg.closed()
        text = b"".join(leg.data[s] for s in sorted(leg.data)).decode()
        assert "(That was message 1.)" in text and "(That was message 2.)" in text
        assert "you> second line" in text
        assert text.endswith("you> \r\nbye\r\n") and "ignored" not in text
        assert disconnect(frames[-1]).reason == "bye"
