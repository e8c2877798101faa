"""Token file, CONNECT token check and nonce guard (SPEC §5, §16)."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
import tomllib
from pathlib import Path

import pytest

from clawterm.daemon.tokens import (
    NonceGuard,
    NonceResult,
    TokenEntry,
    TokenFileError,
    TokenStore,
    cmd_token_list,
    cmd_token_new,
    ensure_dev_token,
    parse_agents,
    parse_token,
)

TOKEN_A = bytes(range(32))
TOKEN_B = bytes(range(100, 132))


def entry_toml(token: bytes, tenant: int | str, agents: str, label: str = "x") -> str:
    return (
        "[[token]]\n"
        f"tenant = {tenant}\n"
        f"agents = {agents}\n"
        f'sha256 = "{hashlib.sha256(token).hexdigest()}"\n'
        f'label = "{label}"\n'
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------------------
# Loading and checking


def test_load_and_check(tmp_path: Path) -> None:
    f = write(
        tmp_path / "tokens.toml",
        "# comment\n"
        + entry_toml(TOKEN_A, 0, '"*"', "dev")
        + entry_toml(TOKEN_B, 7, "[1, 2]", "ci"),
    )
    store = TokenStore(f)
    store.load()
    assert store.entries == (
        TokenEntry(0, None, hashlib.sha256(TOKEN_A).digest(), "dev"),
        TokenEntry(7, frozenset({1, 2}), hashlib.sha256(TOKEN_B).digest(), "ci"),
    )
    # "*" allows every agent of its tenant, and only its tenant.
    assert store.check(0, 0, TOKEN_A)
    assert store.check(0, 0xFFFFFFFF, TOKEN_A)
    assert not store.check(7, 1, TOKEN_A)
    # A list allows those agents only.
    assert store.check(7, 1, TOKEN_B)
    assert store.check(7, 2, TOKEN_B)
    assert not store.check(7, 3, TOKEN_B)
    assert not store.check(0, 1, TOKEN_B)
    # Bad tokens.
    assert not store.check(0, 1, bytes(32))
    assert not store.check(0, 1, TOKEN_A[:-1] + b"\x00")
    assert not store.check(0, 1, b"")
    assert not store.check(0, 1, TOKEN_A + b"x")
    assert not store.check(99, 1, TOKEN_A)


def test_same_token_two_entries_union(tmp_path: Path) -> None:
    f = write(
        tmp_path / "t.toml",
        entry_toml(TOKEN_A, 3, "[1]")
        + entry_toml(TOKEN_A, 3, "[2]")
        + entry_toml(TOKEN_B, 3, "[5]"),
    )
    store = TokenStore(f)
    store.load()
    assert store.check(3, 1, TOKEN_A)
    assert store.check(3, 2, TOKEN_A)
    assert not store.check(3, 5, TOKEN_A)


def test_label_optional_and_empty_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = write(
        tmp_path / "t.toml",
        f'[[token]]\ntenant = 1\nagents = "*"\nsha256 = "{"AB" * 32}"\n',
    )
    store = TokenStore(f)
    store.load()
    assert store.entries[0].label == ""
    assert store.entries[0].sha256 == bytes([0xAB]) * 32

    write(f, "# nothing yet\n")
    with caplog.at_level(logging.WARNING, logger="clawterm.daemon.tokens"):
        store.load()
    assert store.entries == ()
    assert "no [[token]] entries" in caplog.text


GOOD_HASH = "0" * 64


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[[token]\n", "not valid TOML"),
        ('[[token]]\ntenant = 0\nagents = "*"\n', "token #1: missing 'sha256'"),
        (f'[[token]]\nagents = "*"\nsha256 = "{GOOD_HASH}"\n', "missing 'tenant'"),
        (f'[[token]]\ntenant = 0\nsha256 = "{GOOD_HASH}"\n', "missing 'agents'"),
        (f'[[token]]\ntenant = "0"\nagents = "*"\nsha256 = "{GOOD_HASH}"\n', "tenant must be"),
        (f'[[token]]\ntenant = true\nagents = "*"\nsha256 = "{GOOD_HASH}"\n', "tenant must be"),
        (f'[[token]]\ntenant = -1\nagents = "*"\nsha256 = "{GOOD_HASH}"\n', "tenant must be"),
        (
            f'[[token]]\ntenant = 4294967296\nagents = "*"\nsha256 = "{GOOD_HASH}"\n',
            "tenant must be",
        ),
        (f'[[token]]\ntenant = 0\nagents = "all"\nsha256 = "{GOOD_HASH}"\n', "agents must be"),
        (f'[[token]]\ntenant = 0\nagents = 3\nsha256 = "{GOOD_HASH}"\n', "agents must be"),
        (f'[[token]]\ntenant = 0\nagents = []\nsha256 = "{GOOD_HASH}"\n', "agents is empty"),
        (f'[[token]]\ntenant = 0\nagents = [1, "2"]\nsha256 = "{GOOD_HASH}"\n', "agents must hold"),
        (f'[[token]]\ntenant = 0\nagents = [-4]\nsha256 = "{GOOD_HASH}"\n', "agents must hold"),
        ('[[token]]\ntenant = 0\nagents = "*"\nsha256 = "abc"\n', "sha256 must be 64 hex"),
        (f'[[token]]\ntenant = 0\nagents = "*"\nsha256 = "{"g" * 64}"\n', "sha256 must be"),
        ('[[token]]\ntenant = 0\nagents = "*"\nsha256 = 5\n', "sha256 must be"),
        (
            f'[[token]]\ntenant = 0\nagents = "*"\nsha256 = "{GOOD_HASH}"\nlabel = 3\n',
            "label must be a string",
        ),
        (
            f'[[token]]\ntenant = 0\nagent = "*"\nagents = "*"\nsha256 = "{GOOD_HASH}"\n',
            "unknown key 'agent'",
        ),
        (f'[[tokens]]\ntenant = 0\nagents = "*"\nsha256 = "{GOOD_HASH}"\n', "unknown top-level"),
        (f'[token]\ntenant = 0\nagents = "*"\nsha256 = "{GOOD_HASH}"\n', "array of tables"),
    ],
)
def test_malformed(tmp_path: Path, text: str, problem: str) -> None:
    f = write(tmp_path / "tokens.toml", text)
    with pytest.raises(TokenFileError) as info:
        TokenStore(f).load()
    message = str(info.value)
    assert str(f) in message
    assert problem in message


def test_malformed_names_the_entry(tmp_path: Path) -> None:
    f = write(
        tmp_path / "tokens.toml",
        entry_toml(TOKEN_A, 0, '"*"', "first")
        + '[[token]]\ntenant = 0\nagents = "*"\nsha256 = "xyz"\nlabel = "laptop"\n',
    )
    with pytest.raises(TokenFileError, match=r"token #2 \(label 'laptop'\): sha256"):
        TokenStore(f).load()


def test_missing_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="does not exist"):
        TokenStore(tmp_path / "nope.toml").load()
    with pytest.raises(TokenFileError, match="not a regular file"):
        TokenStore(tmp_path).load()
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe[[token]]")
    with pytest.raises(TokenFileError, match="not UTF-8"):
        TokenStore(tmp_path / "bin.toml").load()


def test_reload_keeps_old_table_on_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = write(tmp_path / "t.toml", entry_toml(TOKEN_A, 0, '"*"'))
    store = TokenStore(f)
    store.load()
    write(f, entry_toml(TOKEN_B, 0, '"*"') + "[[token]]\ntenant = \n")
    with caplog.at_level(logging.ERROR, logger="clawterm.daemon.tokens"):
        assert store.reload() is False
    assert "previous tokens stay in force" in caplog.text
    assert "Traceback" not in caplog.text
    assert store.check(0, 1, TOKEN_A)
    assert not store.check(0, 1, TOKEN_B)
    # load() raises and also keeps the old table.
    with pytest.raises(TokenFileError):
        store.load()
    assert store.check(0, 1, TOKEN_A)

    write(f, entry_toml(TOKEN_B, 0, '"*"'))
    assert store.reload() is True
    assert store.check(0, 1, TOKEN_B)
    assert not store.check(0, 1, TOKEN_A)


def test_world_writable_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = write(tmp_path / "t.toml", entry_toml(TOKEN_A, 0, '"*"'))
    f.chmod(0o666)
    with caplog.at_level(logging.WARNING, logger="clawterm.daemon.tokens"):
        TokenStore(f).load()
    assert "other users can add tokens" in caplog.text


# ---------------------------------------------------------------------------
# Adding tokens


def test_add_creates_file_mode_0600_with_hash_only(tmp_path: Path) -> None:
    f = tmp_path / "tokens.toml"
    store = TokenStore(f)
    hex_token = store.add(5, frozenset({3, 1}), 'ci "runner" \\ \n\x7f é')
    assert len(hex_token) == 64
    assert hex_token == hex_token.lower()
    token = bytes.fromhex(hex_token)
    assert mode(f) == 0o600
    text = f.read_text()
    assert hex_token not in text
    assert hashlib.sha256(token).hexdigest() in text
    doc = tomllib.loads(text)
    assert doc["token"][0]["agents"] == [1, 3]
    assert doc["token"][0]["label"] == 'ci "runner" \\ \n\x7f é'
    assert store.check(5, 3, token)  # the store is updated in place
    fresh = TokenStore(f)
    fresh.load()
    assert fresh.check(5, 1, token)
    assert not fresh.check(5, 2, token)
    assert not [p for p in tmp_path.iterdir() if p.name != "tokens.toml"]  # no temp left


def test_add_appends_keeping_comments_and_mode(tmp_path: Path) -> None:
    f = write(tmp_path / "tokens.toml", "# keep me\n" + entry_toml(TOKEN_A, 0, '"*"', "old"))
    f.chmod(0o644)
    store = TokenStore(f)
    store.load()
    new = bytes.fromhex(store.add(0, None, "new"))
    assert f.read_text().startswith("# keep me\n")
    assert mode(f) == 0o600
    assert store.check(0, 9, TOKEN_A)
    assert store.check(0, 9, new)
    assert [e.label for e in store.entries] == ["old", "new"]


def test_add_refuses_broken_file_and_bad_args(tmp_path: Path) -> None:
    f = write(tmp_path / "tokens.toml", "[[token]]\ntenant = 0\n")
    store = TokenStore(f)
    with pytest.raises(TokenFileError, match="missing"):
        store.add(0, None, "x")
    assert f.read_text() == "[[token]]\ntenant = 0\n"
    ok = TokenStore(tmp_path / "ok.toml")
    with pytest.raises(ValueError, match="tenant"):
        ok.add(-1, None, "x")
    with pytest.raises(ValueError, match="tenant"):
        ok.add(2**32, None, "x")
    with pytest.raises(ValueError, match="agent id"):
        ok.add(0, frozenset({2**32}), "x")
    with pytest.raises(ValueError, match="non-empty"):
        ok.add(0, frozenset(), "x")
    with pytest.raises(ValueError, match="longer than"):
        ok.add(0, None, "x" * 1000)
    with pytest.raises(TokenFileError, match="cannot write"):
        TokenStore(tmp_path / "no" / "such" / "dir.toml").add(0, None, "x")


def test_add_concurrent_keeps_every_entry(tmp_path: Path) -> None:
    f = tmp_path / "tokens.toml"
    tokens: list[str] = []

    def worker() -> None:
        for _ in range(10):
            tokens.append(TokenStore(f).add(1, None, "w"))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = TokenStore(f)
    store.load()
    assert len(store.entries) == 40
    assert all(store.check(1, 1, bytes.fromhex(t)) for t in tokens)


# ---------------------------------------------------------------------------
# Command-line helpers


def test_parse_agents() -> None:
    assert parse_agents("*") is None
    assert parse_agents(" * ") is None
    assert parse_agents("1,2, 7") == frozenset({1, 2, 7})
    assert parse_agents("0") == frozenset({0})
    for bad, msg in [
        ("", "needs"),
        ("1,,2", "is not an agent id"),
        ("a", "is not an agent id"),
        ("-1", "is not an agent id"),
        ("1;2", "is not an agent id"),
        ("4294967296", "above"),
        ("*,1", "is not an agent id"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_agents(bad)


def test_parse_token() -> None:
    assert parse_token(TOKEN_A.hex().upper() + "\n") == TOKEN_A
    with pytest.raises(ValueError):
        parse_token("ab")
    with pytest.raises(ValueError):
        parse_token("zz" * 32)


def test_cmd_token_new_and_list(tmp_path: Path) -> None:
    f = tmp_path / "tokens.toml"
    t1 = cmd_token_new(f, 3, "*", "laptop")
    t2 = cmd_token_new(f, 4, "1,2", "ci")
    lines = cmd_token_list(f)
    assert lines[0].split() == ["TENANT", "AGENTS", "SHA256", "LABEL"]
    assert len(lines) == 3
    assert lines[1].split()[:2] == ["3", "*"]
    assert lines[1].endswith("laptop")
    assert lines[2].split()[:2] == ["4", "1,2"]
    assert hashlib.sha256(bytes.fromhex(t2)).hexdigest()[:16] in lines[2]
    assert t1 not in "\n".join(lines)
    with pytest.raises(ValueError):
        cmd_token_new(f, 3, "x", "bad")
    with pytest.raises(TokenFileError):
        cmd_token_list(tmp_path / "missing.toml")


# ---------------------------------------------------------------------------
# Development token


def test_ensure_dev_token(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    old_umask = os.umask(0)  # even a careless umask must not widen the modes
    try:
        dev = ensure_dev_token(tmp_path, tokens)
    finally:
        os.umask(old_umask)
    assert dev == tmp_path / "dev-token"
    assert mode(dev) == 0o600
    assert mode(tokens) == 0o600
    text = dev.read_text()
    assert len(text.strip()) == 64 and text.endswith("\n")
    token = parse_token(text)
    store = TokenStore(tokens)
    store.load()
    assert store.entries == (TokenEntry(0, None, hashlib.sha256(token).digest(), "development"),)
    assert store.check(0, 12345, token)
    assert text.strip() not in tokens.read_text()
    # Second start: the token file exists, nothing happens.
    assert ensure_dev_token(tmp_path, tokens) is None
    assert dev.read_text() == text


def test_ensure_dev_token_replaces_stale_dev_token(tmp_path: Path) -> None:
    stale = tmp_path / "dev-token"
    stale.write_text("f" * 64 + "\n")
    stale.chmod(0o644)
    dev = ensure_dev_token(tmp_path, tmp_path / "tokens.toml")
    assert dev is not None
    assert mode(dev) == 0o600
    assert dev.read_text() != "f" * 64 + "\n"


def test_ensure_dev_token_existing_file_untouched(tmp_path: Path) -> None:
    tokens = write(tmp_path / "tokens.toml", "")
    assert ensure_dev_token(tmp_path, tokens) is None
    assert not (tmp_path / "dev-token").exists()


# ---------------------------------------------------------------------------
# Nonce guard (SPEC §5)


def test_nonce_guard_replay_within_window() -> None:
    g = NonceGuard(window=600.0)
    n = bytes(16)
    assert g.check(1, n, 1000.0) is NonceResult.OK
    assert g.check(1, n, 1000.0) is NonceResult.REPLAY
    assert g.check(1, n, 1599.0) is NonceResult.REPLAY
    assert g.check(2, n, 1599.0) is NonceResult.OK  # per tenant
    assert g.check(1, b"\x01" * 16, 1599.0) is NonceResult.OK


def test_nonce_guard_expiry() -> None:
    g = NonceGuard(window=10.0, granularity=1.0)
    a, b = b"a" * 16, b"b" * 16
    assert g.check(0, a, 100.0) is NonceResult.OK
    assert g.check(0, b, 105.0) is NonceResult.OK
    assert len(g) == 2
    # Never forgotten before the window is over.
    assert g.check(0, a, 110.0) is NonceResult.REPLAY
    # Forgotten within one granularity after it.
    g.expire(111.0)
    assert len(g) == 1
    assert g.check(0, a, 111.0) is NonceResult.OK
    assert g.check(0, b, 114.9) is NonceResult.REPLAY
    g.expire(1000.0)
    assert len(g) == 0


def test_nonce_guard_full_never_forgets_live_nonce() -> None:
    g = NonceGuard(window=10.0, max_entries=3)
    nonces = [bytes([i]) * 16 for i in range(5)]
    for i in range(3):
        assert g.check(0, nonces[i], 100.0 + i) is NonceResult.OK
    assert g.check(0, nonces[3], 103.0) is NonceResult.FULL
    assert g.check(0, nonces[0], 103.0) is NonceResult.REPLAY  # still remembered
    assert len(g) == 3
    # Once the oldest expires there is room again.
    assert g.check(0, nonces[3], 111.5) is NonceResult.OK
    assert g.check(0, nonces[4], 111.5) is NonceResult.FULL
    assert g.check(0, nonces[1], 111.5) is NonceResult.REPLAY


def test_nonce_guard_argument_checks() -> None:
    g = NonceGuard()
    with pytest.raises(ValueError):
        g.check(0, b"short", 0.0)
    with pytest.raises(ValueError):
        g.check(-1, bytes(16), 0.0)
    with pytest.raises(ValueError):
        NonceGuard(window=0)
    with pytest.raises(ValueError):
        NonceGuard(max_entries=0)


def test_nonce_guard_many_entries_fast() -> None:
    g = NonceGuard(window=600.0, max_entries=200_000)
    now = 0.0
    for i in range(200_000):
        now += 0.01
        assert g.check(i & 0xFF, i.to_bytes(16, "big"), now) is NonceResult.OK
    assert len(g) <= 200_000
    g.expire(now + 601.1)
    assert len(g) == 0
