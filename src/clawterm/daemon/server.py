"""``clawtermd``: the daemon that owns listeners, the session table and housekeeping.

The work per frame happens in :mod:`.relay` (sans-I/O) driven by the
adapters in :mod:`.legs`. This module does what happens once per connection
or per session: the handshake and its order of checks (SPEC §5), RESUME and
takeover (SPEC §6), opening agent legs (SPEC §14), limits, keepalive and
expiry (one housekeeping tick for all connections, not a timer each),
persistence of the session table and its restore after a restart (SPEC §17),
and shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import importlib
import json
import logging
import os
import secrets
import signal
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..constants import (
    PROTOCOL_VERSION,
    Capability,
    ErrorCode,
    FrameType,
    KeepaliveFlag,
)
from ..errors import ProtocolViolation
from ..frame import Frame, encode_frame
from ..payloads import Accept, Connect, Disconnect, Resume, Resumed
from ..session import SessionInput, SessionState
from .config import Config
from .gcpolicy import GcPolicy
from .legs import AgentProtocol, ClientProtocol
from .metrics import HealthServer, Metrics, parse_hostport
from .registry import AgentRegistry, NotASocket, open_agent_socket
from .relay import Session
from .statedir import StateDirError, default_state_dir, lock_holder, prepare_state_dir, try_lock
from .store import SessionRecord, SessionStore
from .tls import ensure_certificate, fingerprint, format_fingerprint, server_context
from .tlslayer import TLSLayer
from .tokens import NonceGuard, NonceResult, TokenStore, ensure_dev_token

__all__ = ["Daemon", "run_daemon"]

log = logging.getLogger("clawterm.daemon")

#: Capabilities this daemon offers in ACCEPT.
SERVER_CAPABILITIES = Capability.ACK | Capability.RESUME2 | Capability.WINSIZE
#: Window over which failed RESUMEs are counted per source address.
RESUME_FAILURE_WINDOW = 60.0
#: Agent legs re-resumed at once after a restart.
RESTORE_CONCURRENCY = 64


class AgentUnavailable(Exception):
    """The agent's socket is missing or refuses connections (NO_SUCH_AGENT)."""


class AgentRefused(Exception):
    """The agent answered ERROR or nothing in time (AGENT_REFUSED)."""

    def __init__(self, frame: Frame | None = None) -> None:
        super().__init__("agent refused")
        self.frame = frame


class Daemon:
    """One ``clawtermd``. ``await start()``, then ``await wait_stopped()``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.sessions: dict[int, Session] = {}
        self.per_tenant: dict[int, int] = {}
        self.clients: set[ClientProtocol] = set()
        self.handshakes_per_ip: dict[str, int] = {}
        self.resume_failures: dict[str, deque[float]] = {}
        self.restoring: dict[int, asyncio.Event] = {}
        self.stopping = False
        self.ready = False
        self._stopped = asyncio.Event()
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tick_task: asyncio.Task[None] | None = None
        self.gc: GcPolicy | None = None
        self._lock_fd: int | None = None
        self._persisted: dict[int, SessionState] = {}
        self._dummy_hash = hashlib.sha256(secrets.token_bytes(16)).digest()
        self.quic: Any = None
        self.health: HealthServer | None = None
        self.state_dir = prepare_state_dir(config.state_dir or default_state_dir())
        self.metrics = Metrics(
            sessions_by_state=self._sessions_by_state,
            agents_registered=lambda: len(self.registry),
        )
        self.counters = self.metrics.counters
        self.registry = AgentRegistry(config.socket_dir)
        self.tokens = TokenStore(config.tokens or self.state_dir / "tokens.toml")
        self.nonces = NonceGuard()
        self.store = SessionStore(self.state_dir / "sessions.db")
        self.ssl: ssl.SSLContext | None = None
        self.fingerprint = ""
        self.tcp_port = 0

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Prepare state, restore sessions, listen. Raises on bad configuration."""
        config = self.config
        log.info(
            "clawtermd v%d starting (port %d, sockets: %s, state: %s)",
            PROTOCOL_VERSION,
            config.port,
            config.socket_dir,
            self.state_dir,
        )
        await self._lock_state_dir()
        if config.cert is not None and config.key is not None:
            cert, key = config.cert, config.key
        else:
            cert, key, created = ensure_certificate(self.state_dir)
            log.info("%s self-signed certificate %s", "created" if created else "using", cert)
        self.fingerprint = fingerprint(cert)
        log.info("certificate SHA-256 fingerprint %s", format_fingerprint(self.fingerprint))
        self.ssl = server_context(cert, key)
        tokens_path = config.tokens or self.state_dir / "tokens.toml"
        dev = ensure_dev_token(self.state_dir, tokens_path)
        if dev is not None:
            log.info("no token file: created a development token (tenant 0, all agents) in %s", dev)
        self.tokens.load()
        await self.registry.start()
        loaded = self.store.open()
        for problem in loaded.problems:
            log.warning("session table: %s", problem)
        self._restore(loaded.records)

        # TLS by our own layer over a plain TCP transport, not create_server's
        # ssl=: uvloop's keeps up to ~500 KiB per connection after a burst
        # (tlslayer.py, docs/benchmarks.md "Busy sessions").
        ssl_context = self.ssl
        server = await self.loop.create_server(
            lambda: TLSLayer(ClientProtocol(self), ssl_context, config.handshake_timeout),
            config.host,
            config.port,
            reuse_address=True,
            backlog=1024,
        )
        self._servers.append(server)
        self.tcp_port = server.sockets[0].getsockname()[1]
        log.info("listening on %s:%d (TLS 1.3, TCP)", config.host, self.tcp_port)
        if config.quic_port:
            try:
                quic = importlib.import_module("clawterm.quic.server")
            except ImportError:
                log.warning("QUIC is not available in this build: serving TLS/TCP only")
            else:
                self.quic = await quic.start_quic_server(self, cert, key)
        if config.metrics != "off":
            hostport = parse_hostport(config.metrics)
            if hostport is not None:
                self.health = HealthServer()
                await self.health.start(hostport[0], hostport[1], self.metrics, lambda: self.ready)
                log.info("metrics and health on http://%s:%d", *self.health.address)
        self._tick_task = self.loop.create_task(self._tick())
        self.gc = GcPolicy(
            config.gc_full_interval, self.loop.time(), self.metrics.gc_pause_seconds.observe
        )
        self.gc.start()
        self.ready = not self.restoring
        if not self.ready:
            self._spawn(self._wait_restored())

    async def _lock_state_dir(self) -> None:
        """Hold the state directory for this daemon alone (statedir.py).

        A daemon that is still shutting down holds it for up to
        ``--shutdown-timeout``: wait twice that before giving up.
        """
        deadline = self.loop.time() + 2 * self.config.shutdown_timeout
        while (fd := try_lock(self.state_dir)) is None:
            if self.loop.time() >= deadline:
                raise StateDirError(
                    f"state directory {self.state_dir} is in use by another clawtermd "
                    f"(pid {lock_holder(self.state_dir)}): two daemons cannot share one "
                    "session table; give each its own --state-dir"
                )
            await asyncio.sleep(0.1)
        self._lock_fd = fd

    async def _wait_restored(self) -> None:
        for event in list(self.restoring.values()):
            await event.wait()
        self.ready = True

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop the daemon; SIGHUP reloads the token file."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.request_stop)
        self.loop.add_signal_handler(signal.SIGHUP, self._reload_tokens)

    def _reload_tokens(self) -> None:
        if self.tokens.reload():
            log.info("token file reloaded")

    def request_stop(self) -> None:
        if not self.stopping:
            self._spawn(self.stop())

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        """Graceful stop (SPEC §14, issue 3): clients get SHUTTING_DOWN and come
        back to RESUME; agent legs are closed *without* DISCONNECT so agents keep
        their sessions for their grace period; the session table is kept."""
        if self.stopping:
            return
        self.stopping = True
        self.ready = False
        log.info("shutting down: %d sessions kept for resume", len(self.sessions))
        for server in self._servers:
            server.close()
        if self.quic is not None:
            self.quic.close()
        for client in list(self.clients):
            client.fail(ErrorCode.SHUTTING_DOWN, "daemon shutting down, resume shortly")
        now = time.time()
        for session in self.sessions.values():
            if session.agent_leg is not None:
                session.agent_leg.close()
            if session.state is SessionState.ACTIVE:
                session.detached_at = now
                self._persist(session, force_state=SessionState.SUSPENDED)
        if self._tick_task is not None:
            self._tick_task.cancel()
        if self.gc is not None:
            self.gc.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.gather(*(s.wait_closed() for s in self._servers)),
                self.config.shutdown_timeout / 2,
            )
        await self.registry.close()
        if self.health is not None:
            await self.health.close()
        self.store.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        for task in list(self._tasks):
            task.cancel()
        self._stopped.set()

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("internal error in %s", task.get_coro(), exc_info=task.exception())

    # -- logging and metrics --------------------------------------------------

    def log_event(
        self,
        event: str,
        session: Session | None = None,
        *,
        peer: str | None = None,
        reason: str | None = None,
        level: int = logging.INFO,
    ) -> None:
        """One structured line per session event (issue 3: observability)."""
        if not log.isEnabledFor(level):
            return
        fields: dict[str, Any] = {"event": event}
        if session is not None:
            fields.update(session=session.session_id, tenant=session.tenant, agent=session.agent)
        if peer is not None:
            fields["peer"] = peer
        if reason is not None:
            fields["reason"] = reason
        if self.config.log_format == "json":
            log.log(level, json.dumps(fields))
        else:
            log.log(level, " ".join(f"{k}={_quote(v)}" for k, v in fields.items()))

    def count_error(self, code: ErrorCode) -> None:
        self.metrics.errors_total.labels(code=code.name).inc()

    def _sessions_by_state(self) -> dict[str, int]:
        counts = {state.value: 0 for state in SessionState}
        for session in self.sessions.values():
            counts[session.state.value] += 1
        return counts

    # -- client connections ---------------------------------------------------

    def client_connected(self, proto: ClientProtocol) -> None:
        if self.stopping:
            proto.fail(ErrorCode.SHUTTING_DOWN, "daemon shutting down")
            return
        self.clients.add(proto)
        self.metrics.connections_total.inc()
        count = self.handshakes_per_ip.get(proto.peer_ip, 0)
        if count >= self.config.max_handshakes_per_ip:
            self.count_error(ErrorCode.LIMIT)
            self.log_event(
                "refused", peer=proto.peer, reason="too many handshakes", level=logging.WARNING
            )
            proto.handshaking = False
            proto.fail(ErrorCode.LIMIT, "too many connections in handshake from this address")
            return
        self.handshakes_per_ip[proto.peer_ip] = count + 1

    def _handshake_done(self, proto: ClientProtocol) -> None:
        """A handshake completed: release its slot and record its latency."""
        if proto.handshaking:
            self.metrics.handshake_seconds.observe(self.loop.time() - proto.started)
            self._handshake_done_quietly(proto)

    def client_lost(self, proto: ClientProtocol) -> None:
        self.clients.discard(proto)
        self._handshake_done_quietly(proto)
        session = proto.session
        if session is not None and session.client is proto:
            session.detach(SessionInput.TRANSPORT_LOST, "transport lost")
            self.after_burst(session)

    def _handshake_done_quietly(self, proto: ClientProtocol) -> None:
        """Release the connection's per-address handshake slot (issue 3 limit)."""
        if proto.handshaking:
            proto.handshaking = False
            left = self.handshakes_per_ip.get(proto.peer_ip, 1) - 1
            if left > 0:
                self.handshakes_per_ip[proto.peer_ip] = left
            else:
                self.handshakes_per_ip.pop(proto.peer_ip, None)

    def refuse(self, proto: ClientProtocol, code: ErrorCode, message: str, reason: str) -> None:
        """Answer a failed CONNECT/RESUME: ERROR, close; no session is touched."""
        self.count_error(code)
        self.log_event("refused", peer=proto.peer, reason=reason, level=logging.WARNING)
        self._handshake_done_quietly(proto)
        proto.fail(code, message)

    def handshake_frame(self, proto: ClientProtocol, frame: Frame) -> None:
        """A frame from a client that has no session yet."""
        ftype = frame.type
        if ftype == FrameType.CONNECT:
            self._handle_connect(proto, frame)
        elif ftype == FrameType.RESUME:
            self._handle_resume(proto, frame)
        elif ftype == FrameType.KEEPALIVE:
            if frame.flags & KeepaliveFlag.PING:
                proto.send(encode_frame(FrameType.KEEPALIVE, 0, 0, flags=KeepaliveFlag.PONG))
        else:
            raise ProtocolViolation("expected CONNECT or RESUME")

    def _handle_connect(self, proto: ClientProtocol, frame: Frame) -> None:
        # Order of checks: SPEC §5.
        connect = Connect.decode(frame.payload)  # version, then length
        if frame.session_id != 0:
            raise ProtocolViolation("CONNECT must carry session id 0")
        if not self.tokens.check(connect.tenant_id, connect.agent_id, connect.token):
            self.refuse(proto, ErrorCode.AUTH_FAILED, "authentication failed", "bad token")
            return
        verdict = self.nonces.check(connect.tenant_id, connect.nonce, self.loop.time())
        if verdict is NonceResult.REPLAY:
            self.refuse(proto, ErrorCode.AUTH_FAILED, "authentication failed", "replayed nonce")
            return
        if verdict is NonceResult.FULL:
            self.refuse(proto, ErrorCode.LIMIT, "too many connections", "nonce table full")
            return
        path = self.registry.lookup(connect.tenant_id, connect.agent_id)
        if path is None:
            self.refuse(proto, ErrorCode.NO_SUCH_AGENT, "no such agent", "agent not registered")
            return
        if len(self.sessions) >= self.config.max_sessions or (
            self.per_tenant.get(connect.tenant_id, 0) >= self.config.max_sessions_per_tenant
        ):
            self.refuse(proto, ErrorCode.LIMIT, "session limit reached", "session limit")
            return
        proto.pending = True
        proto.pause_reading()
        self._spawn(self._open_session(proto, connect, path))

    def _new_session_id(self) -> int:
        while True:
            sid = secrets.randbits(32)
            if sid and sid not in self.sessions:
                return sid

    def _add_session(self, session: Session) -> None:
        self.sessions[session.session_id] = session
        self.per_tenant[session.tenant] = self.per_tenant.get(session.tenant, 0) + 1

    def _drop_session(self, session: Session) -> None:
        if self.sessions.pop(session.session_id, None) is not None:
            left = self.per_tenant.get(session.tenant, 1) - 1
            if left > 0:
                self.per_tenant[session.tenant] = left
            else:
                self.per_tenant.pop(session.tenant, None)

    def new_session(self, tenant: int, agent: int, token_hash: bytes, **kw: Any) -> Session:
        return Session(
            self._new_session_id(),
            tenant,
            agent,
            token_hash,
            counters=self.counters,
            ring_size=self.config.ring_size,
            drop_oldest=self.config.overflow == "drop-oldest",
            created_at=time.time(),
            **kw,
        )

    async def _open_session(self, proto: ClientProtocol, connect: Connect, path: str) -> None:
        resume_token = secrets.token_bytes(16)
        session = self.new_session(
            connect.tenant_id,
            connect.agent_id,
            hashlib.sha256(resume_token).digest(),
            capabilities=connect.capabilities & 0xFF,
        )
        self._add_session(session)
        hello = encode_frame(
            FrameType.CONNECT,
            session.session_id,
            0,
            # The client's token never leaves the daemon (SPEC §14).
            Connect(
                PROTOCOL_VERSION, 0, connect.tenant_id, connect.agent_id, bytes(32), connect.nonce
            ).encode(),
        )
        try:
            await self._open_agent_leg(session, path, hello, FrameType.ACCEPT)
        except AgentUnavailable:
            self._drop_session(session)
            self.refuse(proto, ErrorCode.NO_SUCH_AGENT, "no such agent", "agent socket refused")
            return
        except AgentRefused:
            self._drop_session(session)
            self.refuse(proto, ErrorCode.AGENT_REFUSED, "agent refused", "agent refused")
            return
        proto.pending = False
        if proto.closing or self.stopping:
            # The client left before ACCEPT: the session never opened.
            session.end("client left during handshake", SessionInput.TRANSPORT_LOST)
            self._drop_session(session)
            return
        self._handshake_done(proto)
        proto.send(
            encode_frame(
                FrameType.ACCEPT,
                session.session_id,
                0,
                Accept(
                    session.session_id,
                    PROTOCOL_VERSION,
                    SERVER_CAPABILITIES,
                    resume_token,
                    int(self.config.keepalive),
                ).encode(),
            )
        )
        proto.session = session
        session.attach(proto, 0, session.capabilities)
        self.log_event("accept", session, peer=f"{proto.peer} ({proto.transport_name})")
        proto.replay_backlog()
        proto.resume_reading()
        self.after_burst(session)

    async def _open_agent_leg(
        self, session: Session, path: str, hello: bytes, expect: FrameType
    ) -> Frame:
        """Connect to the agent, send ``hello``, wait for ``expect`` (SPEC §14)."""
        timeout = self.config.agent_timeout
        try:
            sock = await asyncio.wait_for(open_agent_socket(self.loop, path), timeout)
            try:
                _, leg = await self.loop.create_unix_connection(
                    lambda: AgentProtocol(self, session), sock=sock
                )
            except BaseException:
                sock.close()
                raise
        except NotASocket as exc:
            # Swapped for a symlink (or anything else) since it registered:
            # never followed (SPEC §15); unregistered like a stale socket.
            log.warning("agent %d/%d: %s; not connecting", session.tenant, session.agent, exc)
            self.registry.discard(session.tenant, session.agent)
            raise AgentUnavailable from exc
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            # A stale socket is treated as not registered (SPEC §15).
            self.registry.discard(session.tenant, session.agent)
            raise AgentUnavailable from exc
        except (OSError, TimeoutError) as exc:
            raise AgentRefused from exc
        leg.send(hello)
        leg.flush()
        try:
            answer = await asyncio.wait_for(asyncio.shield(leg.handshake), timeout)
        except TimeoutError:
            answer = None
        if answer is None or answer.type != expect:
            leg.close()
            raise AgentRefused(answer)
        session.agent_attached(leg)
        return answer

    # -- RESUME ---------------------------------------------------------------

    def _resume_limited(self, ip: str, now: float) -> bool:
        failures = self.resume_failures.get(ip)
        if not failures:
            return False
        while failures and failures[0] < now - RESUME_FAILURE_WINDOW:
            failures.popleft()
        return len(failures) >= self.config.resume_failures

    def _resume_failed(self, ip: str, now: float) -> None:
        self.resume_failures.setdefault(ip, deque()).append(now)
        self.metrics.resumes_total.labels(result="failed").inc()

    def _handle_resume(self, proto: ClientProtocol, frame: Frame) -> None:
        resume = Resume.decode(frame.payload)
        if frame.session_id != resume.session_id:
            raise ProtocolViolation("RESUME session id differs from its header")
        now = self.loop.time()
        if self._resume_limited(proto.peer_ip, now):
            self.refuse(proto, ErrorCode.LIMIT, "too many failed resumes", "resume rate limit")
            return
        session = self.sessions.get(resume.session_id)
        if resume.legacy:
            if not self.config.allow_legacy_resume:
                self._resume_failed(proto.peer_ip, now)
                self.refuse(
                    proto, ErrorCode.AUTH_FAILED, "authentication failed", "legacy resume refused"
                )
                return
            valid = session is not None
        else:
            # The token is checked before anything touches a live transport,
            # in constant time, with one answer for every failure (SPEC §6).
            presented = hashlib.sha256(resume.resume_token or b"").digest()
            expected = session.token_hash if session is not None else self._dummy_hash
            valid = hmac.compare_digest(presented, expected) and session is not None
        if (
            not valid
            or session is None
            or session.closed
            or (session.state is SessionState.CONNECTING)
        ):
            self._resume_failed(proto.peer_ip, now)
            self.refuse(proto, ErrorCode.NO_SUCH_SESSION, "no such session", "resume refused")
            return
        last_rx = session.ring.acked if resume.last_rx_seq is None else resume.last_rx_seq
        restoring = self.restoring.get(session.session_id)
        if restoring is not None:
            proto.pending = True
            proto.pause_reading()
            self._spawn(self._resume_after_restore(proto, session, last_rx, restoring))
            return
        self._attach_resumed(proto, session, last_rx)

    async def _resume_after_restore(
        self, proto: ClientProtocol, session: Session, last_rx: int, event: asyncio.Event
    ) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), self.config.agent_timeout * 2)
        proto.pending = False
        if proto.closing:
            return
        if session.closed or self.sessions.get(session.session_id) is not session:
            self.refuse(proto, ErrorCode.NO_SUCH_SESSION, "no such session", "session ended")
            return
        self._attach_resumed(proto, session, last_rx)
        proto.replay_backlog()
        proto.resume_reading()
        self.after_burst(session)

    def _attach_resumed(self, proto: ClientProtocol, session: Session, last_rx: int) -> None:
        old = session.take_client()
        if old is not None:
            # Device switch: the newer RESUME wins (SPEC §6).
            assert isinstance(old, ClientProtocol)
            self.log_event("takeover", session, peer=old.peer)
            old.fail(ErrorCode.TAKEN_OVER, "session taken over by another connection")
            old.session = None
        self._handshake_done(proto)
        proto.session = session
        session.attach(proto, last_rx, session.capabilities)
        self.metrics.resumes_total.labels(result="ok").inc()
        self.log_event("resume", session, peer=f"{proto.peer} ({proto.transport_name})")

    # -- agent legs -------------------------------------------------------------

    def agent_lost(self, leg: AgentProtocol) -> None:
        session = leg.session
        if self.stopping or session.agent_leg is not leg or not leg.ready:
            return
        session.agent_gone("agent gone")
        self.log_event("agent_gone", session)
        self.after_burst(session)

    # -- after every burst: flush, persist, forget ended sessions --------------

    def after_burst(self, session: Session) -> None:
        session.flush()
        if self.stopping:
            # stop() recorded every session already; transports closing now
            # must not rewrite the table (it may be closed).
            return
        if self._persisted.get(session.session_id) is not session.sm.state:
            self._persist(session)

    def _persist(self, session: Session, force_state: SessionState | None = None) -> None:
        state = force_state or session.state
        sid = session.session_id
        if state is SessionState.CLOSED:
            self._persisted.pop(sid, None)
            self._drop_session(session)
            self.store.delete(sid)
            self.log_event("close", session, reason=session.close_reason)
            return
        if state is SessionState.CONNECTING:
            return
        if state is SessionState.SUSPENDED:
            if session.detached_at is None:
                session.detached_at = time.time()
            if force_state is None:
                self.log_event("suspend", session, reason=session.close_reason)
        self._persisted[sid] = state
        self.store.upsert(
            SessionRecord(
                session_id=sid,
                tenant=session.tenant,
                agent=session.agent,
                token_hash=session.token_hash,
                state=state.value,
                created_at=session.created_at,
                detached_at=session.detached_at,
                capabilities=session.capabilities,
            )
        )

    # -- restore after a restart (SPEC §17) -------------------------------------

    def _restore(self, records: list[SessionRecord]) -> None:
        now = time.time()
        semaphore = asyncio.Semaphore(RESTORE_CONCURRENCY)
        for record in records:
            if record.session_id in self.sessions:
                continue
            session = Session(
                record.session_id,
                record.tenant,
                record.agent,
                record.token_hash,
                counters=self.counters,
                ring_size=self.config.ring_size,
                drop_oldest=self.config.overflow == "drop-oldest",
                capabilities=record.capabilities,
                state=SessionState.SUSPENDED,
                created_at=record.created_at,
            )
            session.detached_at = record.detached_at or now
            self._add_session(session)
            self._persisted[session.session_id] = SessionState.SUSPENDED
            event = asyncio.Event()
            self.restoring[session.session_id] = event
            self._spawn(self._restore_one(session, event, semaphore))
        if records:
            log.info("restoring %d sessions from the session table", len(records))
            self.metrics.sessions_restored_total.inc(len(records))

    async def _restore_one(
        self, session: Session, event: asyncio.Event, semaphore: asyncio.Semaphore
    ) -> None:
        try:
            async with semaphore:
                path = self.registry.lookup(session.tenant, session.agent)
                if path is None:
                    raise AgentUnavailable
                hello = encode_frame(
                    FrameType.RESUME,
                    session.session_id,
                    0,
                    Resume(session.session_id, 0, bytes(16)).encode(),
                )
                answer = await self._open_agent_leg(session, path, hello, FrameType.RESUMED)
                resumed = Resumed.decode(answer.payload)
                # The agent's last_rx_seq becomes ours (SPEC §17).
                session.c2a_last = resumed.last_rx_seq or 0
                self.log_event("restored", session)
        except (AgentUnavailable, AgentRefused, Exception) as exc:
            reason = "agent gone while the daemon was down"
            if not isinstance(exc, AgentUnavailable | AgentRefused):
                log.exception("restoring session %d", session.session_id)
            session.agent_gone(reason)
            self.log_event("agent_gone", session, reason=reason, level=logging.WARNING)
        finally:
            self.restoring.pop(session.session_id, None)
            event.set()

    # -- housekeeping ---------------------------------------------------------

    def _tick_interval(self) -> float:
        config = self.config
        candidates = [1.0, config.keepalive / 4 or 1.0, config.handshake_timeout / 4 or 1.0]
        return max(0.01, min(candidates))

    async def _tick(self) -> None:
        interval = self._tick_interval()
        while True:
            await asyncio.sleep(interval)
            try:
                self.housekeeping(self.loop.time(), time.time())
                if self.gc is not None:
                    self.gc.tick(self.loop.time())
            except Exception:
                log.exception("housekeeping failed")

    def housekeeping(self, now: float, wall: float) -> None:
        """Handshake timeouts, keepalives, dead transports, detached TTL."""
        config = self.config
        keepalive = config.keepalive
        for proto in list(self.clients):
            if proto.closing:
                continue
            if proto.handshaking or proto.session is None:
                if not proto.pending and now - proto.started > config.handshake_timeout:
                    self.refuse(proto, ErrorCode.TIMEOUT, "handshake timeout", "handshake timeout")
                continue
            if keepalive <= 0:
                continue
            if now - proto.last_rx > 3 * keepalive:
                # Dead transport (SPEC §8): the session becomes SUSPENDED.
                session = proto.session
                proto.abort()
                if session.client is proto:
                    session.detach(SessionInput.TRANSPORT_LOST, "keepalive timeout")
                    self.after_burst(session)
            elif now - proto.last_tx >= keepalive:
                proto.send(
                    encode_frame(
                        FrameType.KEEPALIVE,
                        proto.session.session_id,
                        proto.session.a2c_last,
                        flags=KeepaliveFlag.PING,
                    )
                )
                proto.flush()
        ttl = config.detached_ttl
        if ttl > 0:
            for session in list(self.sessions.values()):
                if (
                    session.state is SessionState.SUSPENDED
                    and session.detached_at is not None
                    and wall - session.detached_at > ttl
                    and session.session_id not in self.restoring
                ):
                    if session.agent_leg is not None:
                        session.agent_leg.send(
                            encode_frame(
                                FrameType.DISCONNECT,
                                session.session_id,
                                0,
                                Disconnect(ErrorCode.TIMEOUT, "detached TTL expired").encode(),
                            )
                        )
                        session.agent_leg.flush()
                    session.end("detached TTL expired", SessionInput.EXPIRED)
                    self.after_burst(session)
        for ip in [ip for ip, f in self.resume_failures.items() if not f or f[-1] < now - 60]:
            del self.resume_failures[ip]


def _quote(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or '"' in text or not text) else text


def run_daemon(config: Config, on_started: Callable[[Daemon], None] | None = None) -> None:
    """Run a daemon until SIGTERM/SIGINT (used by the CLI)."""

    async def main() -> None:
        daemon = Daemon(config)
        daemon.install_signal_handlers()
        await daemon.start()
        if on_started is not None:
            on_started(daemon)
        await daemon.wait_stopped()

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(main())
    else:
        uvloop.run(main())
