"""Test plumbing for the client tests: short temp dirs and a private config dir."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory under /tmp (Unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ctc-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def config_dir(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private client config dir ($CLAWTERM_CONFIG_DIR) for known_hosts and sessions."""
    path = short_tmp / "config"
    monkeypatch.setenv("CLAWTERM_CONFIG_DIR", str(path))
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak tests of this directory run only when asked for (``-m slow``, ./dev test-slow)."""
    if config.getoption("markexpr"):
        return
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="slow soak test: run with -m slow (./dev test-slow)")
    for item in items:
        if "slow" in item.keywords and here in Path(str(item.path)).parents:
            item.add_marker(skip)
