"""Metrics, health and one structured log line per session event (issue 3)."""

from __future__ import annotations

import os
from pathlib import Path

from clawterm.constants import ErrorCode, FrameType
from clawterm.payloads import Connect
from tests.daemon.test_handshake import run
from tests.daemon.test_resume import reopen, session
from tests.helpers import EchoAgent, WireClient, daemon


def test_metrics_health_and_session_log(tmp_path: Path) -> None:
    with daemon(tmp_path, "--log-format", "text") as d:
        assert d.http("/healthz")[0] == 200
        assert d.http("/readyz")[0] == 200
        assert d.http("/nope")[0] == 404

        async def main() -> None:
            agent = await EchoAgent(d.socket_dir).start()
            c = await session(d, agent)
            for _ in range(5):
                c.send_data(b"12345")
            assert await c.read_exactly(25) == b"12345" * 5
            assert d.metric("clawterm_sessions", state="active") == 1
            bad = await WireClient.open(d.port)
            bad.send(
                FrameType.CONNECT, Connect(1, 7, 0, 1, bytes(32), os.urandom(16)).encode(), sid=0
            )
            await bad.expect_error(ErrorCode.AUTH_FAILED)
            c.abort()
            c2, _ = await reopen(d, c)
            c2.send(FrameType.SUSPEND)
            await c2.expect_closed()
            await agent.stop()

        run(main())
        assert d.metric("clawterm_frames_total", direction="client_to_agent") >= 5
        assert d.metric("clawterm_bytes_total", direction="agent_to_client") >= 25
        assert d.metric("clawterm_errors_total", code="AUTH_FAILED") == 1
        assert d.metric("clawterm_sessions", state="suspended") == 1
        assert d.metric("clawterm_resumes_total", result="ok") == 1
        assert d.metric("clawterm_handshake_seconds_count") >= 2
        assert b"\nclawterm_gc_pause_seconds_count " in d.http("/metrics")[1]
        assert d.metric("clawterm_agents_registered") == 0
        log = d.log()
        for event in ("accept", "resume", "refused"):
            assert f"event={event} " in log, event
        assert log.count("event=suspend ") == 2  # transport lost, then SUSPEND
        assert 'reason="client suspended"' in log
        assert "Traceback" not in log
