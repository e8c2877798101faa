"""Metrics and the health HTTP server: real HTTP over loopback."""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from clawterm.constants import ErrorCode
from clawterm.daemon.metrics import HealthServer, Metrics, parse_hostport

pytestmark = pytest.mark.timeout(30)


def make_metrics(state: dict[str, Any] | None = None) -> Metrics:
    state = state if state is not None else {}
    return Metrics(
        sessions_by_state=lambda: state.get("sessions", {"active": 2, "suspended": 1}),
        agents_registered=lambda: state.get("agents", 3),
    )


def sample(text: str, name: str) -> float:
    """The value of one sample line ``name value`` of the exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics:\n{text}")


def test_render_contents() -> None:
    m = make_metrics()
    c = m.counters
    c.frames_c2a += 3
    c.frames_a2c += 5
    c.bytes_c2a += 300
    c.bytes_a2c += 500
    c.frames_dropped_duplicate += 2
    c.frames_unknown_type += 1
    m.errors_total.labels(code=ErrorCode.AUTH_FAILED.name).inc()
    m.handshake_seconds.observe(0.003)
    m.connections_total.inc()
    m.resumes_total.labels(result="ok").inc()
    m.sessions_restored_total.inc(4)
    text = m.render().decode()
    assert sample(text, 'clawterm_frames_total{direction="client_to_agent"}') == 3
    assert sample(text, 'clawterm_frames_total{direction="agent_to_client"}') == 5
    assert sample(text, 'clawterm_bytes_total{direction="client_to_agent"}') == 300
    assert sample(text, 'clawterm_bytes_total{direction="agent_to_client"}') == 500
    assert sample(text, "clawterm_frames_dropped_duplicate_total") == 2
    assert sample(text, "clawterm_frames_unknown_type_total") == 1
    assert sample(text, 'clawterm_errors_total{code="AUTH_FAILED"}') == 1
    assert sample(text, 'clawterm_errors_total{code="BAD_CRC"}') == 0  # every code, from 0
    assert sample(text, 'clawterm_handshake_seconds_bucket{le="0.005"}') == 1
    assert sample(text, "clawterm_handshake_seconds_count") == 1
    assert sample(text, "clawterm_connections_total") == 1
    assert sample(text, 'clawterm_resumes_total{result="ok"}') == 1
    assert sample(text, "clawterm_sessions_restored_total") == 4
    assert sample(text, 'clawterm_sessions{state="active"}') == 2
    assert sample(text, 'clawterm_sessions{state="suspended"}') == 1
    assert sample(text, "clawterm_agents_registered") == 3
    assert "process_cpu_seconds_total" in text


def test_registries_are_separate() -> None:
    a, b = make_metrics(), make_metrics()
    a.connections_total.inc()
    a.counters.frames_c2a += 1
    assert sample(b.render().decode(), "clawterm_connections_total") == 0
    assert sample(b.render().decode(), 'clawterm_frames_total{direction="client_to_agent"}') == 0


def test_failing_callback_skips_only_its_metric() -> None:
    def boom() -> dict[str, int]:
        raise RuntimeError("bug")

    m = Metrics(sessions_by_state=boom, agents_registered=lambda: 1, process_metrics=False)
    text = m.render().decode()
    assert "clawterm_sessions{" not in text
    assert sample(text, "clawterm_agents_registered") == 1


def test_parse_hostport() -> None:
    assert parse_hostport("127.0.0.1:9720") == ("127.0.0.1", 9720)
    assert parse_hostport("[::1]:9720") == ("::1", 9720)
    assert parse_hostport("localhost:0") == ("localhost", 0)
    assert parse_hostport("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_hostport("off") is None
    assert parse_hostport("OFF") is None
    for bad in ("", "9720", ":9720", "::1:9720", "host:", "host:port", "host:70000", "[::1]"):
        with pytest.raises(ValueError, match="--metrics"):
            parse_hostport(bad)


# ---------------------------------------------------------------------------
# HTTP


def serve(
    test: Callable[[HealthServer, dict[str, Any]], Coroutine[Any, Any, None]],
    **kwargs: Any,
) -> None:
    async def main() -> None:
        state: dict[str, Any] = {"ready": False}
        server = HealthServer(**kwargs)
        await server.start("127.0.0.1", 0, make_metrics(state), lambda: bool(state["ready"]))
        try:
            await test(server, state)
        finally:
            await server.close()

    asyncio.run(main())


def get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def raw(port: int, data: bytes, *, close_write: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_paths() -> None:
    async def body(server: HealthServer, state: dict[str, Any]) -> None:
        base = f"http://127.0.0.1:{server.address[1]}"

        status, headers, data = await asyncio.to_thread(get, base + "/healthz")
        assert (status, data) == (200, b"ok\n")
        assert headers["Connection"] == "close"

        status, headers, data = await asyncio.to_thread(get, base + "/metrics")
        assert status == 200
        assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert b"clawterm_agents_registered 3.0" in data

        status, headers, data = await asyncio.to_thread(get, base + "/metrics?x=1", "HEAD")
        assert status == 200 and data == b""
        assert int(headers["Content-Length"]) > 100

        status, _, _ = await asyncio.to_thread(get, base + "/nope")
        assert status == 404
        status, headers, _ = await asyncio.to_thread(get, base + "/metrics", "POST")
        assert status == 405
        assert headers["Allow"] == "GET, HEAD"

    serve(body)


def test_readiness_flip_and_counters_visible() -> None:
    async def body(server: HealthServer, state: dict[str, Any]) -> None:
        base = f"http://127.0.0.1:{server.address[1]}"
        status, _, data = await asyncio.to_thread(get, base + "/readyz")
        assert (status, data) == (503, b"not ready\n")
        state["ready"] = True
        status, _, data = await asyncio.to_thread(get, base + "/readyz")
        assert (status, data) == (200, b"ready\n")

        state["agents"] = 42
        state["sessions"] = {"active": 7}
        _, _, data = await asyncio.to_thread(get, base + "/metrics")
        text = data.decode()
        assert sample(text, "clawterm_agents_registered") == 42
        assert sample(text, 'clawterm_sessions{state="active"}') == 7

    serve(body)


def test_raw_http10_and_bad_request() -> None:
    async def body(server: HealthServer, state: dict[str, Any]) -> None:
        port = server.address[1]
        out = await asyncio.to_thread(raw, port, b"GET /healthz HTTP/1.0\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200 OK\r\n")
        assert out.endswith(b"\r\n\r\nok\n")
        out = await asyncio.to_thread(raw, port, b"garbage\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 400 ")
        out = await asyncio.to_thread(raw, port, b"GET /healthz SPDY/3\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 400 ")
        # EOF before a whole head: closed without an answer.
        out = await asyncio.to_thread(raw, port, b"GET /hea", close_write=True)
        assert out == b""

    serve(body)


def test_oversize_head() -> None:
    async def body(server: HealthServer, state: dict[str, Any]) -> None:
        port = server.address[1]
        big = b"GET /metrics HTTP/1.1\r\nX-Junk: " + b"a" * 10_000 + b"\r\n\r\n"
        out = await asyncio.to_thread(raw, port, big)
        assert out.startswith(b"HTTP/1.1 431 ")
        # Just under the limit is fine.
        ok = b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 8000 + b"\r\n\r\n"
        out = await asyncio.to_thread(raw, port, ok)
        assert out.startswith(b"HTTP/1.1 200 ")

    serve(body)


def test_slow_request_times_out_and_server_stays_up() -> None:
    async def body(server: HealthServer, state: dict[str, Any]) -> None:
        port = server.address[1]
        loop = asyncio.get_running_loop()
        started = loop.time()
        out = await asyncio.to_thread(raw, port, b"GET /healthz HTTP/1.1\r\n")  # never ends
        assert out.startswith(b"HTTP/1.1 408 ")
        assert 0.2 <= loop.time() - started < 3
        out = await asyncio.to_thread(raw, port, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200 ")

    serve(body, timeout=0.3)


def test_connection_limit() -> None:
    async def body(server: HealthServer, state: dict[str, Any]) -> None:
        port = server.address[1]
        hogs = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        try:
            await asyncio.sleep(0.05)
            out = await asyncio.to_thread(raw, port, b"GET /healthz HTTP/1.1\r\n\r\n")
            assert out == b""  # over the limit: closed at once
        finally:
            for h in hogs:
                h.close()
        await asyncio.sleep(0.05)
        out = await asyncio.to_thread(raw, port, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200 ")

    serve(body, max_connections=2)
