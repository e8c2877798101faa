"""Where the client keeps its files, and where a local daemon keeps its dev token.

* Config directory: ``$CLAWTERM_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/clawterm``
  (if absolute), else ``~/.config/clawterm``. It holds ``known_hosts`` and
  ``sessions.json`` and is created with mode 0700.
* The daemon's state directory, for the development token it writes there
  on first start (SPEC §16): ``$CLAWTERM_STATE_DIR``, else
  ``$XDG_STATE_HOME/clawterm``, else ``~/.local/state/clawterm``; file
  ``dev-token``, 64 hex characters.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "DEV_TOKEN_NAME",
    "KNOWN_HOSTS_NAME",
    "SESSIONS_NAME",
    "config_dir",
    "daemon_state_dir",
    "ensure_private_dir",
]

KNOWN_HOSTS_NAME = "known_hosts"
SESSIONS_NAME = "sessions.json"
DEV_TOKEN_NAME = "dev-token"


def _xdg(var: str, fallback: Path) -> Path:
    value = os.environ.get(var, "")
    return Path(value) if value and os.path.isabs(value) else fallback


def config_dir() -> Path:
    """The client's config directory (not created)."""
    explicit = os.environ.get("CLAWTERM_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    return _xdg("XDG_CONFIG_HOME", Path.home() / ".config") / "clawterm"


def daemon_state_dir() -> Path:
    """The state directory a local ``clawtermd`` with embedded defaults uses."""
    explicit = os.environ.get("CLAWTERM_STATE_DIR")
    if explicit:
        return Path(explicit)
    return _xdg("XDG_STATE_HOME", Path.home() / ".local" / "state") / "clawterm"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700 if missing; return it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
