"""Test plumbing shared by every test directory: ``async def`` tests."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

#: No single async test may run longer than this (seconds).
ASYNC_TEST_TIMEOUT = 40.0


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests in a fresh event loop, bounded by a timeout."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    kwargs: dict[str, Any] = {
        name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames
    }

    async def bounded() -> None:
        await asyncio.wait_for(pyfuncitem.obj(**kwargs), ASYNC_TEST_TIMEOUT)

    asyncio.run(bounded())
    return True
