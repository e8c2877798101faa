"""Pod registry (SPEC §15): real inotify, real AF_UNIX sockets in temp dirs."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from clawterm.daemon.registry import (
    AgentRegistry,
    NotASocket,
    open_agent_socket,
    parse_agent_name,
    parse_id,
    socket_path,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for s in opened:
        s.close()


def listen(path: Path | str, opened: list[socket.socket]) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(os.fspath(path))
    s.listen()
    opened.append(s)
    return s


def listen_then_rename(path: Path, opened: list[socket.socket]) -> None:
    """What agents do: bind a temporary dot-name, listen, rename into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    listen(tmp, opened)
    os.rename(tmp, path)


async def eventually(cond: Callable[[], bool], within: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def settle() -> None:
    """Give the registry a moment to process any pending events."""
    for _ in range(10):
        await asyncio.sleep(0.005)


def run(factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(factory())


# ---------------------------------------------------------------------------


def test_parse_ids() -> None:
    assert parse_id("0") == 0
    assert parse_id("4294967295") == 0xFFFFFFFF
    for bad in ("", "01", "-1", "+1", "4294967296", "99999999999", "1 ", "１", "0x1", "1\n"):
        assert parse_id(bad) is None, bad
    assert parse_agent_name("7.sock") == 7
    for bad in ("07.sock", "7", "7.sock.tmp", ".7.sock", "4294967296.sock", "a.sock"):
        assert parse_agent_name(bad) is None, bad


def test_socket_dir_created(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "sockets"

    async def main() -> None:
        reg = AgentRegistry(root)
        await reg.start()
        await reg.close()

    run(main)
    assert root.is_dir()


def test_scan_at_start(tmp_path: Path, sockets: list[socket.socket]) -> None:
    (tmp_path / "0").mkdir()
    (tmp_path / "4294967295").mkdir()
    listen(tmp_path / "0" / "1.sock", sockets)
    listen(tmp_path / "0" / "2.sock", sockets)
    listen(tmp_path / "4294967295" / "4294967295.sock", sockets)

    async def main() -> None:
        reg = AgentRegistry(tmp_path)
        await reg.start()
        try:
            assert sorted(reg.agents()) == [(0, 1), (0, 2), (0xFFFFFFFF, 0xFFFFFFFF)]
            assert len(reg) == 3
            assert (0, 1) in reg
            assert (0, 3) not in reg
            assert reg.lookup(0, 2) == str(tmp_path / "0" / "2.sock")
            assert reg.lookup(1, 2) is None
        finally:
            await reg.close()

    run(main)


def test_add_and_delete_after_start(tmp_path: Path, sockets: list[socket.socket]) -> None:
    changes: list[tuple[int, int, bool]] = []
    (tmp_path / "5").mkdir()

    async def main() -> None:
        reg = AgentRegistry(tmp_path, on_change=lambda t, a, p: changes.append((t, a, p)))
        await reg.start()
        try:
            assert len(reg) == 0
            s = listen(tmp_path / "5" / "9.sock", sockets)
            await eventually(lambda: (5, 9) in reg)
            assert reg.lookup(5, 9) == socket_path(tmp_path, 5, 9)

            os.unlink(tmp_path / "5" / "9.sock")
            s.close()
            await eventually(lambda: (5, 9) not in reg)
            assert len(reg) == 0
        finally:
            await reg.close()

    run(main)
    assert changes == [(5, 9, True), (5, 9, False)]


def test_bind_temp_then_rename(tmp_path: Path, sockets: list[socket.socket]) -> None:
    (tmp_path / "1").mkdir()

    async def main() -> None:
        reg = AgentRegistry(tmp_path)
        await reg.start()
        try:
            listen_then_rename(tmp_path / "1" / "3.sock", sockets)
            await eventually(lambda: (1, 3) in reg)
            await settle()
            assert reg.agents() == [(1, 3)]  # the temporary name never counted
            # Moving it away unregisters it.
            os.rename(tmp_path / "1" / "3.sock", tmp_path / "1" / ".old")
            await eventually(lambda: (1, 3) not in reg)
        finally:
            await reg.close()

    run(main)


def test_tenant_dir_created_after_start_race(tmp_path: Path, sockets: list[socket.socket]) -> None:
    """A socket made right after its tenant directory, before any watch on it."""

    async def main() -> None:
        reg = AgentRegistry(tmp_path)
        await reg.start()
        try:
            for tenant in range(20):
                d = tmp_path / str(tenant)
                d.mkdir()
                listen(d / "1.sock", sockets)  # no await in between: registry is behind
                listen_then_rename(d / "2.sock", sockets)
            await eventually(lambda: len(reg) == 40)
            # And one created after the watch is certainly in place.
            await settle()
            listen(tmp_path / "3" / "7.sock", sockets)
            await eventually(lambda: (3, 7) in reg)
        finally:
            await reg.close()

    run(main)


def test_tenant_dir_moved_in(tmp_path: Path, sockets: list[socket.socket]) -> None:
    outside = tmp_path / "outside"
    root = tmp_path / "root"
    root.mkdir()
    outside.mkdir()
    listen(outside / "4.sock", sockets)

    async def main() -> None:
        reg = AgentRegistry(root)
        await reg.start()
        try:
            os.rename(outside, root / "12")
            await eventually(lambda: (12, 4) in reg)
        finally:
            await reg.close()

    run(main)


def test_tenant_dir_removed_or_moved_away(tmp_path: Path, sockets: list[socket.socket]) -> None:
    changes: list[tuple[int, int, bool]] = []
    for t in ("1", "2"):
        (tmp_path / t).mkdir()
        listen(tmp_path / t / "1.sock", sockets)
        listen(tmp_path / t / "2.sock", sockets)

    async def main() -> None:
        reg = AgentRegistry(tmp_path, on_change=lambda t, a, p: changes.append((t, a, p)))
        await reg.start()
        try:
            assert len(reg) == 4
            shutil.rmtree(tmp_path / "1")
            await eventually(lambda: len(reg) == 2)
            assert sorted(reg.agents()) == [(2, 1), (2, 2)]

            os.rename(tmp_path / "2", tmp_path / ".2-away")
            await eventually(lambda: len(reg) == 0)
            # Changes in the moved-away directory no longer count.
            listen(tmp_path / ".2-away" / "3.sock", sockets)
            await settle()
            assert len(reg) == 0

            # A new directory of the same name works as before.
            (tmp_path / "2").mkdir()
            listen(tmp_path / "2" / "5.sock", sockets)
            await eventually(lambda: (2, 5) in reg)
        finally:
            await reg.close()

    run(main)
    assert sorted(c for c in changes if not c[2]) == [
        (1, 1, False),
        (1, 2, False),
        (2, 1, False),
        (2, 2, False),
    ]


def test_non_sockets_and_bad_names_ignored_and_logged_once(
    tmp_path: Path, sockets: list[socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="clawterm.daemon.registry")
    (tmp_path / "01").mkdir()
    listen(tmp_path / "01" / "1.sock", sockets)
    (tmp_path / "4294967296").mkdir()
    (tmp_path / "7").write_text("a file where a tenant directory belongs")
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "1.sock").write_text("regular file")
    listen(tmp_path / "3" / "01.sock", sockets)
    listen(tmp_path / "3" / "2.socket", sockets)
    (tmp_path / "3" / "4.sock").mkdir()
    # A tenant must not point its name at another tenant's socket.
    (tmp_path / "8").mkdir()
    listen(tmp_path / "8" / "1.sock", sockets)
    os.symlink(tmp_path / "8" / "1.sock", tmp_path / "3" / "5.sock")
    os.symlink(tmp_path / "8", tmp_path / "9")

    async def main() -> None:
        reg = AgentRegistry(tmp_path)
        await reg.start()
        try:
            assert reg.agents() == [(8, 1)]
            # Created after start: still ignored.
            (tmp_path / "3" / "6.sock").write_text("x")
            listen(tmp_path / "3" / "bad.sock", sockets)
            (tmp_path / "-1").mkdir()
            listen(tmp_path / "3" / "10.sock", sockets)  # a good one, to know events ran
            await eventually(lambda: (3, 10) in reg)
            assert sorted(reg.agents()) == [(3, 10), (8, 1)]
            reg._full_scan()  # a rescan must not log the same names again
        finally:
            await reg.close()

    run(main)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name in ("01", "4294967296", "7", "3/1.sock", "3/01.sock", "3/2.socket", "3/4.sock"):
        hits = [m for m in warned if f"ignoring {name} " in m]
        assert len(hits) == 1, (name, warned)
    for name in ("3/5.sock", "9", "3/6.sock", "3/bad.sock", "-1"):
        assert any(f"ignoring {name} " in m for m in warned), (name, warned)


def test_logged_names_bounded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="clawterm.daemon.registry")
    for i in range(10):
        (tmp_path / f"junk{i}").write_text("")

    async def main() -> None:
        reg = AgentRegistry(tmp_path, max_logged_names=3)
        await reg.start()
        await reg.close()

    run(main)
    assert len([r for r in caplog.records if "ignoring" in r.getMessage()]) == 3


def test_hidden_names_silent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clawterm.daemon.registry")
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / ".5.sock.tmp").write_text("")
    (tmp_path / ".cache").mkdir()

    async def main() -> None:
        reg = AgentRegistry(tmp_path)
        await reg.start()
        await reg.close()

    run(main)
    assert not [r for r in caplog.records if "ignoring" in r.getMessage()]


def test_discard_then_recreate(tmp_path: Path, sockets: list[socket.socket]) -> None:
    changes: list[tuple[int, int, bool]] = []
    (tmp_path / "2").mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(os.fspath(tmp_path / "2" / "1.sock"))
    stale.close()  # the file stays: an agent that died without cleaning up

    async def main() -> None:
        reg = AgentRegistry(tmp_path, on_change=lambda t, a, p: changes.append((t, a, p)))
        await reg.start()
        try:
            path = reg.lookup(2, 1)
            assert path is not None
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with pytest.raises(ConnectionRefusedError):
                probe.connect(path)
            probe.close()
            reg.discard(2, 1)
            assert reg.lookup(2, 1) is None
            reg.discard(2, 1)  # twice is harmless
            # A rescan finds the same stale inode and leaves it discarded.
            reg._full_scan()
            assert (2, 1) not in reg

            # The agent comes back: unlink the stale file, bind anew.
            os.unlink(tmp_path / "2" / "1.sock")
            listen_then_rename(tmp_path / "2" / "1.sock", sockets)
            await eventually(lambda: (2, 1) in reg)

            # Discard, then a rename over the name (no unlink first) also brings it back.
            reg.discard(2, 1)
            listen_then_rename(tmp_path / "2" / "1.sock", sockets)
            await eventually(lambda: (2, 1) in reg)
        finally:
            await reg.close()

    run(main)
    assert changes == [
        (2, 1, True),
        (2, 1, False),
        (2, 1, True),
        (2, 1, False),
        (2, 1, True),
    ]


def test_queue_overflow_rescans(
    tmp_path: Path, sockets: list[socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="clawterm.daemon.registry")
    max_events = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if max_events > 100_000:
        pytest.skip("inotify queue too large to overflow quickly")
    (tmp_path / "1").mkdir()

    async def main() -> None:
        reg = AgentRegistry(tmp_path)
        await reg.start()
        try:
            # No await: the registry cannot read while the queue fills up.
            junk = tmp_path / "1" / ".junk"
            for _ in range(max_events // 2 + 10):
                junk.touch()
                junk.unlink()
            listen(tmp_path / "1" / "2.sock", sockets)  # its event is lost
            # Draining ~max_events queued events comes first: slow on a loaded machine.
            await eventually(lambda: (1, 2) in reg, within=20.0)
        finally:
            await reg.close()

    run(main)
    assert any("overflowed" in r.getMessage() for r in caplog.records)


def test_socket_dir_removed_and_recreated(tmp_path: Path, sockets: list[socket.socket]) -> None:
    root = tmp_path / "sockets"

    async def main() -> None:
        reg = AgentRegistry(root, check_interval=0.05)
        await reg.start()
        try:
            (root / "1").mkdir()
            listen(root / "1" / "1.sock", sockets)
            await eventually(lambda: (1, 1) in reg)
            shutil.rmtree(root)
            await eventually(lambda: len(reg) == 0 and root.is_dir())
            (root / "4").mkdir()
            listen(root / "4" / "4.sock", sockets)
            await eventually(lambda: (4, 4) in reg)
            # Moved away: noticed at once (IN_MOVE_SELF), the new directory is watched.
            os.rename(root, tmp_path / "old")
            await eventually(lambda: len(reg) == 0 and root.is_dir())
            (root / "6").mkdir()
            listen(root / "6" / "6.sock", sockets)
            await eventually(lambda: (6, 6) in reg)
            listen(tmp_path / "old" / "4" / "5.sock", sockets)
            await settle()
            assert reg.agents() == [(6, 6)]
        finally:
            await reg.close()

    run(main)


def test_socket_dir_is_a_file(tmp_path: Path) -> None:
    from clawterm.daemon.registry import RegistryError

    (tmp_path / "f").write_text("")

    async def main() -> None:
        reg = AgentRegistry(tmp_path / "f")
        with pytest.raises(RegistryError, match="socket directory"):
            await reg.start()

    run(main)


def test_tenant_dir_renamed_to_another_tenant(tmp_path: Path, sockets: list[socket.socket]) -> None:
    (tmp_path / "5").mkdir()
    listen(tmp_path / "5" / "1.sock", sockets)

    async def main() -> None:
        reg = AgentRegistry(tmp_path)
        await reg.start()
        try:
            os.rename(tmp_path / "5", tmp_path / "6")
            await eventually(lambda: reg.agents() == [(6, 1)])
            # The watch follows the directory under its new name only.
            listen(tmp_path / "6" / "2.sock", sockets)
            await eventually(lambda: (6, 2) in reg)
            await settle()
            assert sorted(reg.agents()) == [(6, 1), (6, 2)]
            # Renamed over an existing empty tenant directory.
            (tmp_path / "7").mkdir()
            await settle()
            os.rename(tmp_path / "6", tmp_path / "7")
            await eventually(lambda: sorted(reg.agents()) == [(7, 1), (7, 2)])
            os.unlink(tmp_path / "7" / "1.sock")
            await eventually(lambda: reg.agents() == [(7, 2)])
        finally:
            await reg.close()

    run(main)


# -- connecting: the socket file itself, never through a symlink -------------


def test_open_agent_socket_connects_to_the_socket_itself(
    tmp_path: Path, sockets: list[socket.socket]
) -> None:
    # Deeper than sun_path's 108 bytes: the connection goes through /proc/self/fd.
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    assert len(os.fsencode(deep / "7.sock")) > 108
    dirfd = os.open(deep, os.O_PATH)
    try:  # an agent can bind there the same way
        server = listen(f"/proc/self/fd/{dirfd}/7.sock", sockets)
    finally:
        os.close(dirfd)

    async def main() -> None:
        conn = await open_agent_socket(asyncio.get_running_loop(), str(deep / "7.sock"))
        try:
            peer, _ = server.accept()
            with peer:
                conn.setblocking(True)
                conn.sendall(b"hello")
                assert peer.recv(5) == b"hello"
        finally:
            conn.close()

    run(main)


def test_open_agent_socket_refuses_symlinks_and_files(
    tmp_path: Path, sockets: list[socket.socket]
) -> None:
    """A tenant that swaps its socket name for a link to another's is not followed."""
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    other = listen(tmp_path / "2" / "2.sock", sockets)
    other.setblocking(False)
    os.symlink(tmp_path / "2" / "2.sock", tmp_path / "1" / "1.sock")
    (tmp_path / "1" / "3.sock").write_text("not a socket")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(NotASocket, match="symbolic link"):
            await open_agent_socket(loop, str(tmp_path / "1" / "1.sock"))
        with pytest.raises(NotASocket, match="not a socket"):
            await open_agent_socket(loop, str(tmp_path / "1" / "3.sock"))
        with pytest.raises(FileNotFoundError):
            await open_agent_socket(loop, str(tmp_path / "1" / "9.sock"))
        nobody = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        nobody.bind(str(tmp_path / "1" / "4.sock"))  # bound, never listening
        sockets.append(nobody)
        with pytest.raises(ConnectionRefusedError):
            await open_agent_socket(loop, str(tmp_path / "1" / "4.sock"))

    run(main)
    # The other tenant's agent saw no connection at all.
    with pytest.raises(BlockingIOError):
        other.accept()
