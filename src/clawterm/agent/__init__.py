"""The agent SDK: serve ClawTerm sessions from an agent process (SPEC §14).

::

    from clawterm.agent import Session, run

    async def shout(session: Session) -> None:
        async for data in session:
            await session.send(data.upper())

    run(shout, socket_dir="/run/claw/sockets", tenant_id=0, agent_id=1)

Layout: :mod:`.protocol` is the sans-I/O agent-leg core (with its events in
:mod:`.events`); :mod:`.server` and :mod:`.session` are the asyncio adapter
and the handler's API; :mod:`.pty_runner`, :mod:`.demo` and :mod:`.echo` are
the built-in agents of :mod:`.cli` (``clawterm-agent``).
"""

from __future__ import annotations

from .server import (
    SHUTDOWN_REASON,
    AgentServer,
    AgentSocketError,
    Handler,
    agent_socket_path,
    bind_agent_socket,
    run,
)
from .session import Session, SessionClosed

__all__ = [
    "SHUTDOWN_REASON",
    "AgentServer",
    "AgentSocketError",
    "Handler",
    "Session",
    "SessionClosed",
    "agent_socket_path",
    "bind_agent_socket",
    "run",
]
