"""The echo agent: every byte back, exactly (``clawterm-agent echo``).

The benchmarks measure through it, so it does no per-byte work: each DATA
frame received goes back as one DATA frame of the same bytes.
"""

from __future__ import annotations

from .session import Session

__all__ = ["echo_handler"]


async def echo_handler(session: Session) -> None:
    """Send every chunk the client sends straight back until the session ends."""
    send = session.send
    async for data in session:
        await send(data)
