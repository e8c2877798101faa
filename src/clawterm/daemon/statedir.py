"""The daemon's state directory (SPEC §16, §17).

It holds ``cert.pem``, ``key.pem``, ``tokens.toml``, ``dev-token``,
``sessions.db`` and ``lock``. Nothing in it is session data, but the key and
the dev token are secrets, so the directory is created readable by its owner
only. One daemon at a time: two daemons restoring and rewriting one session
table would each resume the other's agents, so the daemon holds an exclusive
``flock`` on ``lock`` (with its pid in it) for its whole life; the kernel
releases it when the process ends, however it ends.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from pathlib import Path

from ..errors import ClawTermError

__all__ = [
    "STATE_DIR_MODE",
    "StateDirError",
    "default_state_dir",
    "lock_holder",
    "prepare_state_dir",
    "try_lock",
]

logger = logging.getLogger("clawterm.daemon.statedir")

#: Mode of a state directory the daemon creates.
STATE_DIR_MODE = 0o700


class StateDirError(ClawTermError):
    """The state directory cannot be used; the message names the path and why."""


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/clawterm``, else ``~/.local/state/clawterm``.

    A relative ``XDG_STATE_HOME`` is ignored, as the XDG base directory
    specification asks.
    """
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "clawterm"


def prepare_state_dir(path: Path) -> Path:
    """Make sure ``path`` is a usable state directory and return it.

    A missing directory is created (parents too) with mode 0700. An existing
    one is used as it is; if other users can read or write it a warning is
    logged, but its mode is left to the operator. Raises
    :class:`StateDirError` if ``path`` exists and is not a directory, or
    cannot be created or written.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        try:
            path.mkdir(mode=STATE_DIR_MODE, parents=True)
        except FileExistsError:
            pass  # created concurrently; checked below
        except OSError as exc:
            raise StateDirError(
                f"cannot create state directory {path}: {exc.strerror or exc}"
            ) from None
        try:
            st = path.stat()
        except OSError as exc:
            raise StateDirError(f"state directory {path}: {exc.strerror or exc}") from None
    except OSError as exc:
        raise StateDirError(f"state directory {path}: {exc.strerror or exc}") from None

    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"state directory {path} exists and is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise StateDirError(f"state directory {path} is not writable by this user")
    if st.st_mode & 0o077:
        logger.warning(
            "state directory %s has mode %04o: other users can reach the TLS key and "
            "dev token; consider chmod 700",
            path,
            stat.S_IMODE(st.st_mode),
        )
    return path


def try_lock(path: Path) -> int | None:
    """Take the state directory's lock; its file descriptor, or None if another holds it.

    The descriptor must stay open while the daemon runs; closing it (or the
    process ending) releases the lock.
    """
    lock = Path(path) / "lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def lock_holder(path: Path) -> str:
    """The pid written by the daemon holding the lock, as text ("?" if unknown)."""
    try:
        return (Path(path) / "lock").read_text().strip() or "?"
    except OSError:
        return "?"
