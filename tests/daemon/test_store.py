"""The session table (SPEC §17): real SQLite files, a real SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clawterm.daemon.store import SessionRecord, SessionStore

pytestmark = pytest.mark.timeout(60)


def rec(sid: int, state: str = "active", **kw: object) -> SessionRecord:
    fields: dict[str, object] = {
        "session_id": sid,
        "tenant": sid % 7,
        "agent": sid % 5,
        "token_hash": (sid & 0xFFFFFFFF).to_bytes(4, "big") * 8,
        "state": state,
        "created_at": 1_700_000_000.5 + sid,
        "detached_at": None if state == "active" else 1_700_000_100.25,
        "capabilities": 7,
    }
    fields.update(kw)
    return SessionRecord(**fields)  # type: ignore[arg-type]


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    store = SessionStore(path)
    loaded = store.open()
    assert loaded.records == [] and loaded.problems == []
    assert store.persistent
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for sid in (5, 1, 0xFFFFFFFF):
        store.upsert(rec(sid))
    store.upsert(rec(5, "suspended"))  # a state change replaces the row
    store.upsert(rec(9, "connecting", tenant=0xFFFFFFFF, capabilities=0xFFFFFFFF))
    store.delete(1)
    store.delete(12345)  # unknown: ignored
    store.close()
    store.close()

    again = SessionStore(path)
    loaded = again.open()
    assert loaded.problems == []
    assert loaded.records == [
        rec(5, "suspended"),
        rec(9, "connecting", tenant=0xFFFFFFFF, capabilities=0xFFFFFFFF),
        rec(0xFFFFFFFF),
    ]
    assert conn_mode(path) == "wal"
    again.close()


def conn_mode(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


def test_invalid_records_raise(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "s.db")
    store.open()
    for bad, msg in [
        (rec(0), "session id"),
        (rec(2**32), "session id"),
        (rec(1, tenant=-1), "tenant"),
        (rec(1, agent=2**32), "agent"),
        (rec(1, token_hash=b"short"), "token hash"),
        (rec(1, state="ACTIVE"), "state"),
        (rec(1, created_at=float("nan")), "created_at"),
        (rec(1, detached_at=float("inf")), "detached_at"),
        (rec(1, capabilities=-1), "capabilities"),
        (rec(1, tenant=True), "tenant"),
    ]:
        with pytest.raises(ValueError, match=msg):
            store.upsert(bad)
    store.close()


# ---------------------------------------------------------------------------
# Crash safety

CHILD = textwrap.dedent(
    """
    import sys
    from clawterm.daemon.store import SessionRecord, SessionStore
    store = SessionStore(sys.argv[1])
    store.open()
    base = int(sys.argv[2])
    k = 0
    while True:
        k += 1
        sid = base + k
        if k % 3 == 0:
            store.delete(sid - 1)
        else:
            store.upsert(SessionRecord(sid, 1, 2, bytes(32), "active", 1.0, None, 3))
        print(k, flush=True)
    """
)


def expected_ids(base: int, upto: int) -> set[int]:
    alive: set[int] = set()
    for k in range(1, upto + 1):
        if k % 3 == 0:
            alive.discard(base + k - 1)
        else:
            alive.add(base + k)
    return alive


def test_survives_sigkill_mid_write(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    survivors: set[int] = set()
    for round_, base in enumerate((0, 1_000_000, 2_000_000)):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(base)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        last = 0
        for line in child.stdout:
            last = int(line)
            if last >= 400 + 137 * round_:
                break
        os.kill(child.pid, signal.SIGKILL)  # while it keeps writing
        child.wait()
        for line in child.stdout:  # whatever it acknowledged before it died
            last = int(line)
        child.stdout.close()

        store = SessionStore(path)
        loaded = store.open()
        assert loaded.problems == []
        got = {r.session_id for r in loaded.records}
        # Every acknowledged change is there; the one in flight may be or not.
        assert got in (
            survivors | expected_ids(base, last),
            survivors | expected_ids(base, last + 1),
        )
        survivors = got
        store.close()


# ---------------------------------------------------------------------------
# Damaged files


def populated(path: Path, n: int) -> None:
    store = SessionStore(path)
    store.open()
    for sid in range(1, n + 1):
        store.upsert(rec(sid))
    store.close()


def aside_files(tmp_path: Path) -> list[Path]:
    return sorted(p for p in tmp_path.iterdir() if ".corrupt-" in p.name)


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    path.write_bytes(os.urandom(10_000))
    store = SessionStore(path)
    loaded = store.open()
    assert loaded.records == []
    assert len(loaded.problems) == 1
    problem = loaded.problems[0]
    assert str(path) in problem
    assert "moved it to" in problem and ".corrupt-" in problem
    assert "no sessions could be recovered" in problem
    assert store.persistent
    assert len(aside_files(tmp_path)) == 1
    # The new table works and persists.
    store.upsert(rec(3))
    store.close()
    again = SessionStore(path)
    assert again.open().records == [rec(3)]
    again.close()


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    path.write_text("hello, this is not SQLite\n" * 10)
    loaded = SessionStore(path).open()
    assert loaded.records == []
    assert "not a database" in loaded.problems[0]


@pytest.mark.parametrize(("keep", "salvage"), [(50, False), (4096, False), (100_000, True)])
def test_truncated_file(tmp_path: Path, keep: int, salvage: bool) -> None:
    path = tmp_path / "sessions.db"
    populated(path, 3000)
    size = path.stat().st_size
    assert size > keep
    with open(path, "r+b") as f:
        f.truncate(keep)
    store = SessionStore(path)
    loaded = store.open()  # never raises
    assert len(loaded.problems) == 1
    assert "moved it to" in loaded.problems[0]
    assert len(loaded.records) < 3000
    if salvage:  # what was before the cut is still readable, and kept
        assert len(loaded.records) > 1000
        assert f"recovered {len(loaded.records)} sessions" in loaded.problems[0]
    for r in loaded.records:
        assert r == rec(r.session_id)  # whatever was salvaged is exact
    store.upsert(rec(99_999))
    store.close()
    again = SessionStore(path)
    reloaded = again.open()
    assert reloaded.problems == []
    assert {r.session_id for r in reloaded.records} == {r.session_id for r in loaded.records} | {
        99_999
    }
    again.close()


def test_damaged_page_salvages_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    populated(path, 3000)
    with open(path, "r+b") as f:
        f.seek(4096 * 20)
        f.write(b"\xa5" * 4096)
    store = SessionStore(path)
    loaded = store.open()
    assert "recovered" in loaded.problems[0]
    assert 0 < len(loaded.records) < 3000
    for r in loaded.records:
        assert r == rec(r.session_id)
    store.close()


def test_other_sqlite_database(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (x)")
    conn.commit()
    conn.close()
    loaded = SessionStore(path).open()
    assert "not a ClawTerm session table" in loaded.problems[0]
    assert len(aside_files(tmp_path)) == 1


def test_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    populated(path, 2)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    loaded = SessionStore(path).open()
    assert "schema version 2" in loaded.problems[0]


def test_bad_rows_skipped_one_line_each(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    populated(path, 5)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE sessions SET state = 'bogus' WHERE session_id = 1")
    conn.execute("UPDATE sessions SET token_hash = x'00' WHERE session_id = 2")
    conn.execute("UPDATE sessions SET tenant = 4294967296 WHERE session_id = 3")
    conn.execute("UPDATE sessions SET agent = 'seven' WHERE session_id = 4")
    conn.execute("INSERT INTO sessions VALUES (0, 1, 1, zeroblob(32), 'active', 1.0, NULL, 0)")
    conn.commit()
    conn.close()
    store = SessionStore(path)
    loaded = store.open()
    assert [r.session_id for r in loaded.records] == [5]
    assert len(loaded.problems) == 5
    text = "\n".join(loaded.problems)
    for part in ("'bogus'", "token hash", "tenant 4294967296", "agent 'seven'", "session id 0"):
        assert part in text
    assert not aside_files(tmp_path)  # bad rows do not condemn the file
    store.close()
    # Reported once: dropped from the table.
    again = SessionStore(path)
    assert again.open().problems == []
    again.close()


def test_unopenable_path_runs_in_memory(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "no" / "such" / "dir" / "sessions.db")
    loaded = store.open()
    assert not store.persistent
    assert "will not survive a restart" in loaded.problems[0]
    store.upsert(rec(1))
    store.delete(1)
    store.close()


def test_write_failure_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "sessions.db"
    store = SessionStore(path)
    store.open()
    # Another connection holds the write lock: writes fail after the busy timeout.
    store.busy_timeout = 0.0
    assert store._conn is not None
    store._conn.execute("PRAGMA busy_timeout = 0")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        store.upsert(rec(1))
        store.upsert(rec(2))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.write_failures == 2
    errors = [r for r in caplog.records if r.name == "clawterm.daemon.store"]
    assert len(errors) == 1  # rate-limited
    assert "Traceback" not in caplog.text
    store.upsert(rec(3))
    store.close()
