"""Observability: Prometheus ``/metrics``, ``/healthz`` and ``/readyz`` (SPEC §16).

Two kinds of numbers, kept apart by cost:

* **Hot path.** Frames and bytes relayed happen millions of times; the
  relay bumps plain ``int`` attributes of :class:`Counters` (one attribute
  add, no lock, no label lookup). A custom collector reads them only when
  Prometheus scrapes. The daemon is one asyncio thread, so plain ints are
  exact.
* **Rare events** (errors, handshakes, connections, resumes) use
  ``prometheus_client`` objects directly, registered in a per-daemon
  :class:`~prometheus_client.CollectorRegistry`, never the global one, so
  several daemons in one process (tests) do not mix.

Gauges of state (sessions by state, registered agents) are callbacks the
daemon supplies, evaluated at scrape time: nothing to keep in sync.

:class:`HealthServer` is a deliberately tiny HTTP/1.1 server on asyncio
streams: one request per connection, ``Connection: close``, a bounded request
head read under a deadline. It listens on loopback by default
(``127.0.0.1:9720``); it must not be exposed where it is not wanted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from ..constants import ErrorCode

__all__ = [
    "CONTENT_TYPE",
    "HANDSHAKE_BUCKETS",
    "Counters",
    "HealthServer",
    "Metrics",
    "parse_hostport",
]

logger = logging.getLogger("clawterm.daemon.metrics")

#: Content type of ``/metrics``: the Prometheus text format 0.0.4.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
#: Histogram buckets of garbage-collector pauses, seconds.
GC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

#: Histogram buckets of the handshake latency, seconds (CONNECT to ACCEPT).
HANDSHAKE_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Counters:
    """Hot-path counters: plain ints the daemon increments directly.

    Increment them from the event loop thread only (``c.frames_c2a += 1``).
    They are exported as Prometheus counters at scrape time and must only
    ever grow.
    """

    __slots__ = (
        "bytes_a2c",
        "bytes_c2a",
        "frames_a2c",
        "frames_c2a",
        "frames_dropped_duplicate",
        "frames_unknown_type",
    )

    def __init__(self) -> None:
        self.frames_c2a = 0  #: DATA frames relayed client → agent
        self.frames_a2c = 0  #: DATA frames relayed agent → client
        self.bytes_c2a = 0  #: DATA payload bytes relayed client → agent
        self.bytes_a2c = 0  #: DATA payload bytes relayed agent → client
        self.frames_dropped_duplicate = 0  #: replayed DATA dropped as duplicates (SPEC §4)
        self.frames_unknown_type = 0  #: frames of unknown TYPE ignored (SPEC §3)


class _ScrapeCollector:
    """Exports :class:`Counters` and the callback gauges when scraped."""

    def __init__(
        self,
        counters: Counters,
        sessions_by_state: Callable[[], Mapping[str, int]],
        agents_registered: Callable[[], int],
    ) -> None:
        self._c = counters
        self._sessions_by_state = sessions_by_state
        self._agents_registered = agents_registered

    def collect(self) -> Iterable[Metric]:
        c = self._c
        frames = CounterMetricFamily(
            "clawterm_frames",
            "DATA frames relayed, by direction.",
            labels=["direction"],
        )
        frames.add_metric(["client_to_agent"], c.frames_c2a)
        frames.add_metric(["agent_to_client"], c.frames_a2c)
        yield frames
        data = CounterMetricFamily(
            "clawterm_bytes",
            "DATA payload bytes relayed, by direction.",
            labels=["direction"],
        )
        data.add_metric(["client_to_agent"], c.bytes_c2a)
        data.add_metric(["agent_to_client"], c.bytes_a2c)
        yield data
        yield CounterMetricFamily(
            "clawterm_frames_dropped_duplicate",
            "Replayed DATA frames dropped as duplicates (SPEC §4).",
            value=c.frames_dropped_duplicate,
        )
        yield CounterMetricFamily(
            "clawterm_frames_unknown_type",
            "Frames of an unknown TYPE, ignored (SPEC §3).",
            value=c.frames_unknown_type,
        )

        try:
            by_state = dict(self._sessions_by_state())
        except Exception:
            logger.exception("sessions_by_state callback failed; clawterm_sessions skipped")
        else:
            sessions = GaugeMetricFamily(
                "clawterm_sessions", "Sessions held, by state (SPEC §11).", labels=["state"]
            )
            for state, count in sorted(by_state.items()):
                sessions.add_metric([state], count)
            yield sessions
        try:
            agents = self._agents_registered()
        except Exception:
            logger.exception(
                "agents_registered callback failed; clawterm_agents_registered skipped"
            )
        else:
            yield GaugeMetricFamily(
                "clawterm_agents_registered",
                "Agents with a socket in the socket directory (SPEC §15).",
                value=agents,
            )


class Metrics:
    """Every metric of one daemon, in its own registry.

    ``sessions_by_state()`` returns ``{state name: count}`` and
    ``agents_registered()`` the number of registered agents; both are called
    at scrape time on the loop and must be quick and must not block.

    Attributes the daemon uses:

    * ``counters`` — :class:`Counters`, bumped on the hot path;
    * ``errors_total.labels(code=ErrorCode.X.name).inc()`` — ERROR frames sent;
    * ``handshake_seconds.observe(seconds)`` — CONNECT received to ACCEPT sent;
    * ``connections_total.inc()`` — client transports accepted;
    * ``resumes_total.labels(result="ok" | "failed" | …).inc()``;
    * ``sessions_restored_total.inc(n)`` — sessions read back after a restart (SPEC §17).
    """

    def __init__(
        self,
        *,
        sessions_by_state: Callable[[], Mapping[str, int]],
        agents_registered: Callable[[], int],
        process_metrics: bool = True,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.counters = Counters()
        self.registry.register(
            _ScrapeCollector(self.counters, sessions_by_state, agents_registered)
        )
        self.errors_total = Counter(
            "clawterm_errors",
            "ERROR frames sent, by code (SPEC §12).",
            ["code"],
            registry=self.registry,
        )
        for code in ErrorCode:
            self.errors_total.labels(code=code.name)  # every code shows, from 0
        self.handshake_seconds = Histogram(
            "clawterm_handshake_seconds",
            "Time from CONNECT received to ACCEPT sent.",
            buckets=HANDSHAKE_BUCKETS,
            registry=self.registry,
        )
        self.connections_total = Counter(
            "clawterm_connections", "Client transports accepted.", registry=self.registry
        )
        self.resumes_total = Counter(
            "clawterm_resumes",
            "RESUME attempts, by result (SPEC §6).",
            ["result"],
            registry=self.registry,
        )
        self.gc_pause_seconds = Histogram(
            "clawterm_gc_pause_seconds",
            "Pauses of Python's cyclic garbage collector (the loop stops meanwhile).",
            buckets=GC_BUCKETS,
            registry=self.registry,
        )
        self.sessions_restored_total = Counter(
            "clawterm_sessions_restored",
            "Sessions read back from the session table after a restart (SPEC §17).",
            registry=self.registry,
        )
        if process_metrics:
            ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4) of every metric."""
        return generate_latest(self.registry)


# ---------------------------------------------------------------------------
# HTTP


_HOSTPORT = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.%\w]+)\]|(?P<host>[^:\[\]\s]+)):(?P<port>[0-9]{1,5})"
)


def parse_hostport(text: str) -> tuple[str, int] | None:
    """``"127.0.0.1:9720"``, ``"[::1]:9720"``, ``"host:9720"`` → (host, port); ``"off"`` → None.

    Raises :class:`ValueError` with a message fit for the command line.
    """
    text = text.strip()
    if text.lower() == "off":
        return None
    m = _HOSTPORT.fullmatch(text)
    if m is None:
        raise ValueError(
            f"--metrics {text!r}: expected HOST:PORT, [IPV6]:PORT or off (e.g. 127.0.0.1:9720)"
        )
    port = int(m.group("port"))
    if port > 65535:
        raise ValueError(f"--metrics {text!r}: port {port} is above 65535")
    return (m.group("v6") or m.group("host"), port)


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class _HeadTooLarge(Exception):
    pass


class HealthServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` over a minimal HTTP/1.1.

    * ``GET``/``HEAD /metrics`` — 200, Prometheus text format 0.0.4;
    * ``/healthz`` — 200 ``ok`` while the event loop runs;
    * ``/readyz`` — 200 when ``ready()`` is true, else 503;
    * other paths 404; other methods on these paths 405.

    One request per connection (``Connection: close``). A request head above
    ``max_head`` bytes gets 431, one not complete within ``timeout`` seconds
    gets 408; writing the answer is bounded by the same ``timeout``. At most
    ``max_connections`` are served at once; more are closed at once.
    Call :meth:`start` on the loop and :meth:`close` when done.
    """

    def __init__(
        self, *, max_head: int = 8192, timeout: float = 5.0, max_connections: int = 64
    ) -> None:
        self.max_head = max_head
        self.timeout = timeout
        self.max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._metrics: Metrics | None = None
        self._ready: Callable[[], bool] = lambda: False
        self._active = 0

    async def start(
        self, host: str, port: int, metrics: Metrics, ready: Callable[[], bool]
    ) -> None:
        """Listen on ``host:port`` (port 0: any free port, see :attr:`address`).

        ``ready()`` is called for each ``/readyz`` and must not block.
        Raises :class:`OSError` if the address cannot be bound.
        """
        self._metrics = metrics
        self._ready = ready
        self._server = await asyncio.start_server(
            self._handle, host, port, reuse_address=True, limit=self.max_head
        )

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound, of the first listening socket."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("health server not started")
        name = self._server.sockets[0].getsockname()
        return (str(name[0]), int(name[1]))

    async def close(self) -> None:
        """Stop listening and wait for the server to close."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), self.timeout)

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes | None:
        buf = bytearray()
        while True:
            chunk = await reader.read(4096)
            if not chunk:
                return None
            buf += chunk
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                end = buf.find(b"\n\n")
            if end >= 0 and end <= self.max_head:
                return bytes(buf[:end])
            if len(buf) > self.max_head:
                raise _HeadTooLarge

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._active >= self.max_connections:
            writer.close()
            return
        self._active += 1
        head: bytes | None = None
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    head = await self._read_head(reader)
                except _HeadTooLarge:
                    await self._send(writer, 431, b"request head too large\n", "GET")
                    return
                if head is not None:
                    await self._answer(writer, head)
        except TimeoutError:
            if head is None:  # still reading the request: say so; else it was the write
                writer.write(self._response(408, b"request timeout\n", "GET"))
        except (ConnectionError, OSError):
            pass
        finally:
            self._active -= 1
            writer.close()  # flushes what is buffered, then closes

    async def _answer(self, writer: asyncio.StreamWriter, head: bytes) -> None:
        line = head.split(b"\n", 1)[0].strip()
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            await self._send(writer, 400, b"bad request\n", "GET")
            return
        method = parts[0].decode("ascii", "replace")
        target = parts[1].decode("ascii", "replace")
        path = urlsplit(target).path if "://" in target else target.split("?", 1)[0]
        if path not in ("/metrics", "/healthz", "/readyz"):
            await self._send(writer, 404, b"not found\n", method)
            return
        if method not in ("GET", "HEAD"):
            await self._send(writer, 405, b"method not allowed\n", method)
            return
        if path == "/healthz":
            await self._send(writer, 200, b"ok\n", method)
        elif path == "/readyz":
            try:
                ready = bool(self._ready())
            except Exception:
                logger.exception("ready() callback failed")
                ready = False
            if ready:
                await self._send(writer, 200, b"ready\n", method)
            else:
                await self._send(writer, 503, b"not ready\n", method)
        else:
            assert self._metrics is not None
            try:
                body = self._metrics.render()
            except Exception:
                logger.exception("rendering /metrics failed")
                await self._send(writer, 500, b"internal error\n", method)
                return
            await self._send(writer, 200, body, method, CONTENT_TYPE)

    def _response(
        self, status: int, body: bytes, method: str, ctype: str = "text/plain; charset=utf-8"
    ) -> bytes:
        headers = [
            f"HTTP/1.1 {status} {_REASONS[status]}",
            f"Content-Type: {ctype}",
            f"Content-Length: {len(body)}",
            "Cache-Control: no-store",
            "Connection: close",
        ]
        if status == 405:
            headers.append("Allow: GET, HEAD")
        out = ("\r\n".join(headers) + "\r\n\r\n").encode("ascii")
        return out if method == "HEAD" else out + body

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        method: str,
        ctype: str = "text/plain; charset=utf-8",
    ) -> None:
        writer.write(self._response(status, body, method, ctype))
        await writer.drain()
