"""ClawTerm: a session-persistent binary protocol for AI-agent terminals.

The sans-I/O protocol core lives in the top-level modules (``frame``,
``payloads``, ``sequencing``, ``ring``, ``session``, …). The client API is
re-exported here and imported on first use, so ``import clawterm`` stays light::

    async with clawterm.connect("127.0.0.1", token=token) as session:
        await session.send(b"hello\\r")
        async for data in session:
            ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "connect", "resume"]

if TYPE_CHECKING:
    from .client import connect, resume


def __getattr__(name: str) -> Any:
    if name in ("connect", "resume"):
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'clawterm' has no attribute {name!r}")
