"""The daemon's state directory (SPEC §16, §17)."""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

import pytest

from clawterm.daemon.statedir import (
    StateDirError,
    default_state_dir,
    lock_holder,
    prepare_state_dir,
    try_lock,
)
from tests.helpers import DaemonProcess


def test_default_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "clawterm"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "clawterm"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "clawterm"


def test_creates_with_mode_0700(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "clawterm"
    assert prepare_state_dir(target) == target
    assert target.is_dir()
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    # Existing: used as it is.
    assert prepare_state_dir(target) == target


def test_existing_open_dir_warns_but_is_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "open"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="clawterm.daemon.statedir"):
        assert prepare_state_dir(target) == target
    assert "consider chmod 700" in caplog.text
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


def test_not_a_directory(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(StateDirError, match="exists and is not a directory"):
        prepare_state_dir(f)
    with pytest.raises(StateDirError, match="below: Not a directory"):
        prepare_state_dir(f / "below")


def test_lock_is_exclusive_and_released_on_close(tmp_path: Path) -> None:
    first = try_lock(tmp_path)
    assert first is not None
    assert lock_holder(tmp_path) == str(os.getpid())
    assert try_lock(tmp_path) is None  # a second open file description is refused
    os.close(first)
    again = try_lock(tmp_path)
    assert again is not None
    os.close(again)


def test_second_daemon_on_one_state_dir_refused_until_the_first_dies(tmp_path: Path) -> None:
    first = DaemonProcess(tmp_path / "a").start()
    try:
        second = DaemonProcess(tmp_path / "b", "--shutdown-timeout", "0.5")
        second.state_dir = first.state_dir
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="exited 1"):
            second.start()
        # It waited twice the shutdown timeout for a daemon still stopping, then gave up.
        assert 0.9 < time.monotonic() - started < 10
        assert f"in use by another clawtermd (pid {first.pid})" in second.log()
        assert first.ready()  # the first never noticed
        first.kill()  # SIGKILL: the kernel releases the lock
        third = DaemonProcess(tmp_path / "c")
        third.state_dir = first.state_dir
        third.start()
        third.stop()
    finally:
        first.stop()
