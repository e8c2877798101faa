"""Pure pieces of the client: escapes, links, saved sessions, notices, CLI helpers."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from clawterm.client import HandoffLink, LinkError, SavedSession, SavedSessionError, SessionStore
from clawterm.client.cli import _age, _escape_byte, _exit_status, _token, build_parser
from clawterm.client.errors import ClientError
from clawterm.client.escape import EscapeAction, EscapeParser
from clawterm.client.link import is_link
from clawterm.client.paths import config_dir, daemon_state_dir
from clawterm.client.terminal import Notifier

D = EscapeAction.DETACH


def feed_bytewise(p: EscapeParser, data: bytes) -> list[bytes | EscapeAction]:
    out: list[bytes | EscapeAction] = []
    for i in range(len(data)):
        out += p.feed(data[i : i + 1])
    return out


def joined(items: list[bytes | EscapeAction]) -> list[bytes | EscapeAction]:
    """Merge adjacent bytes items, so whole and bytewise feeding compare equal."""
    out: list[bytes | EscapeAction] = []
    for item in items:
        if isinstance(item, bytes) and out and isinstance(out[-1], bytes):
            out[-1] = out[-1] + item
        else:
            out.append(item)
    return out


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (b"~.", [D]),  # start of session counts as a line start
        (b"ls\r~.", [b"ls\r", D]),
        (b"ls\n~.rest", [b"ls\n", D, b"rest"]),
        (b"a~.", [b"a~."]),  # not after Enter: plain bytes
        (b"\r~~.", [b"\r~."]),  # ~~ sends one ~, and then . is plain
        (b"\r~x", [b"\r~x"]),
        (b"\r~?", [b"\r", EscapeAction.HELP]),
        (b"\r~?~.", [b"\r", EscapeAction.HELP, D]),
        (b"\r~", [b"\r"]),  # held back until the next key
    ],
)
def test_escape_parser(keys: bytes, expected: list[bytes | EscapeAction]) -> None:
    assert EscapeParser().feed(keys) == expected
    assert joined(feed_bytewise(EscapeParser(), keys)) == joined(expected)


def test_escape_disabled_and_other_char() -> None:
    assert EscapeParser(None).feed(b"\r~.") == [b"\r~."]
    assert EscapeParser(None).feed(b"") == []
    assert EscapeParser(ord("%")).feed(b"~.\r%.") == [b"~.\r", D]
    assert _escape_byte("none") is None and _escape_byte("%") == ord("%")
    with pytest.raises(ClientError):
        _escape_byte("ab")


def test_link_roundtrip_and_errors() -> None:
    link = HandoffLink("node.example", 7220, 3313305698, bytes(range(16)), "ab" * 32, 4, 9)
    url = link.to_url()
    assert url == (
        "clawterm://node.example:7220/resume?sid=3313305698&tok=000102030405060708090a0b0c0d0e0f"
        f"&fp={'ab' * 32}&tenant=4&agent=9"
    )
    assert HandoffLink.parse(url) == link and is_link(url) and not is_link("node")
    v6 = HandoffLink("::1", 7, 1, bytes(16))
    assert (
        v6.to_url().startswith("clawterm://[::1]:7/resume?")
        and HandoffLink.parse(v6.to_url()) == v6
    )
    assert HandoffLink.parse("CLAWTERM://h/RESUME?sid=1&tok=" + "00" * 16).port == 7220
    for bad, why in [
        ("http://h/resume?sid=1&tok=" + "00" * 16, "starts with"),
        ("clawterm://h/other?sid=1&tok=" + "00" * 16, "action"),
        ("clawterm://h/resume?tok=" + "00" * 16, "lacks sid"),
        ("clawterm://h/resume?sid=x&tok=" + "00" * 16, "decimal"),
        ("clawterm://h/resume?sid=0&tok=" + "00" * 16, "out of range"),
        ("clawterm://h/resume?sid=1&tok=00", "32 hex"),
        ("clawterm://h/resume?sid=1&tok=" + "00" * 16 + "&fp=zz", "bad link field"),
        ("clawterm://h:99999/resume?sid=1", "not a clawterm link"),
        ("clawterm:///resume?sid=1", "no host"),
    ]:
        with pytest.raises(LinkError, match=why):
            HandoffLink.parse(bad)


def record(name: str, seen: float, state: str = "suspended") -> SavedSession:
    return SavedSession(
        name=name,
        host="h",
        port=7220,
        tenant=0,
        agent=1,
        session_id=7,
        resume_token=bytes(16),
        state=state,
        last_seen=seen,
    )


def test_session_store(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "cfg" / "sessions.json")
    with pytest.raises(SavedSessionError, match="no resumable"):
        store.get()
    store.save(record("work", 10))
    store.save(record("workshop", 30, state="closed"))
    store.save(record("play", 20))
    assert os.stat(store.path).st_mode & 0o777 == 0o600
    assert os.stat(store.path.parent).st_mode & 0o777 == 0o700
    assert [s.name for s in store.entries()] == ["workshop", "play", "work"]
    assert store.get().name == "play"  # most recent resumable
    assert store.get("work").name == "work"  # exact beats prefix
    assert store.get("works").name == "workshop"
    assert store.get("pl").name == "play"
    with pytest.raises(SavedSessionError, match="several"):
        store.get("wo")
    with pytest.raises(SavedSessionError, match="no saved session named"):
        store.get("zzz")
    assert store.unique_name("work") == "work-2" and store.unique_name("new") == "new"
    store.touch("play", last_rx_seq=42)
    assert store.get("play").last_rx_seq == 42 and store.get("play").last_seen > 20
    assert store.prune() == ["workshop"]
    assert store.remove("work") and not store.remove("work")
    assert [s.name for s in store.entries()] == ["play"]
    rec = store.get("play")
    assert rec.ticket().last_rx_seq == 42 and rec.ticket(0).last_rx_seq == 0
    assert rec.link().session_id == 7
    store.path.write_text("{not json")
    with pytest.raises(SavedSessionError, match="not a saved-sessions file"):
        store.entries()


def test_notifier_modes() -> None:
    out: list[bytes] = []
    line = Notifier("line", out.append)
    line.start()
    line.down("link lost")
    line.up("link back")
    line.stop()
    assert out == [
        b"\r\n\x1b[7m[clawterm] link lost\x1b[0m\r\n",
        b"\r\n\x1b[7m[clawterm] link back\x1b[0m\r\n",
    ]
    out.clear()
    title = Notifier("title", out.append)
    title.start()
    title.down("link lost")
    title.up("back")
    title.stop()
    assert out == [
        b"\x1b[22;0t",
        b"\x1b]2;[clawterm] link lost\x07",
        b"\x1b[23;0t\x1b[22;0t",
        b"\x1b[23;0t",
    ]
    out.clear()
    quiet = Notifier("none", out.append)
    quiet.start()
    quiet.down("x")
    quiet.info("y")
    assert out == []


def test_token_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = "ab" * 32
    args = argparse.Namespace(token=None, token_file=None)
    monkeypatch.setenv("CLAWTERM_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("CLAWTERM_TOKEN", raising=False)
    monkeypatch.delenv("CLAWTERM_TOKEN_FILE", raising=False)
    with pytest.raises(ClientError, match="dev-token does not exist"):
        _token(args)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "dev-token").write_text("cd" * 32 + "\n")
    assert _token(args) == bytes.fromhex("cd" * 32)
    (tmp_path / "t").write_text(tok)
    monkeypatch.setenv("CLAWTERM_TOKEN_FILE", str(tmp_path / "t"))
    assert _token(args) == bytes.fromhex(tok)
    monkeypatch.setenv("CLAWTERM_TOKEN", "ef" * 32)
    assert _token(args) == bytes.fromhex("ef" * 32)
    assert _token(argparse.Namespace(token="01" * 32, token_file=None)) == bytes([1]) * 32
    (tmp_path / "bad").write_text("nope")
    with pytest.raises(ClientError, match="does not hold a token"):
        _token(argparse.Namespace(token=None, token_file=tmp_path / "bad"))
    with pytest.raises(ClientError, match="cannot read"):
        _token(argparse.Namespace(token=None, token_file=tmp_path / "missing"))


def test_paths_and_small_helpers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CLAWTERM_CONFIG_DIR", str(tmp_path / "c"))
    assert config_dir() == tmp_path / "c"
    monkeypatch.delenv("CLAWTERM_CONFIG_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "x"))
    assert config_dir() == tmp_path / "x" / "clawterm"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative")
    assert config_dir() == Path.home() / ".config" / "clawterm"
    monkeypatch.delenv("CLAWTERM_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "s"))
    assert daemon_state_dir() == tmp_path / "s" / "clawterm"
    assert [_age(5), _age(125), _age(7300), _age(200000)] == ["5s", "2m", "2h", "2d"]
    assert [_exit_status(None), _exit_status(3), _exit_status(300)] == [0, 3, 1]
    args = build_parser().parse_args(["attach", "node", "-p", "1", "--agent", "4"])
    assert (args.target, args.port, args.agent, args.tenant) == ("node", 1, 4, 0)
