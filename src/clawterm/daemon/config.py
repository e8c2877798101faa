"""The daemon's configuration: one dataclass, filled from flags and environment.

Every option can be given as a flag or as ``CLAWTERM_<NAME>`` (upper case,
dashes as underscores); the flag wins. The table lives in
``docs/architecture.md``; ``clawtermd --help`` explains each.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..constants import (
    DEFAULT_AGENT_TIMEOUT,
    DEFAULT_DETACHED_TTL,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_KEEPALIVE,
    DEFAULT_METRICS,
    DEFAULT_PORT,
    DEFAULT_QUIC_PORT,
    DEFAULT_RING_SIZE,
    DEFAULT_SOCKET_DIR,
    MAX_PAYLOAD,
)

__all__ = ["Config", "build_parser", "config_from_args"]


@dataclass
class Config:
    """Everything the daemon can be told. Defaults are SPEC §16's."""

    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    quic_port: int = DEFAULT_QUIC_PORT
    socket_dir: Path = Path(DEFAULT_SOCKET_DIR)
    state_dir: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    tokens: Path | None = None
    metrics: str = DEFAULT_METRICS
    ring_size: int = DEFAULT_RING_SIZE
    overflow: str = "block"
    keepalive: float = DEFAULT_KEEPALIVE
    detached_ttl: float = DEFAULT_DETACHED_TTL
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    agent_timeout: float = DEFAULT_AGENT_TIMEOUT
    max_payload: int = MAX_PAYLOAD
    max_sessions: int = 10_000
    max_sessions_per_tenant: int = 10_000
    max_handshakes_per_ip: int = 64
    max_buffer: int = 1 << 20
    resume_failures: int = 10
    allow_legacy_resume: bool = False
    shutdown_timeout: float = 5.0
    gc_full_interval: float = 600.0
    quic_retry: str = "auto"
    max_quic_connections: int = 10_000
    log_level: str = "info"
    log_format: str = "text"
    extra: dict[str, str] = field(default_factory=dict)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _payload(text: str) -> int:
    value = int(text)
    if not 0 < value <= MAX_PAYLOAD:
        raise argparse.ArgumentTypeError(f"must be 1..{MAX_PAYLOAD}, got {value}")
    return value


# (flags, dest, type, help). Defaults come from Config.
_OPTIONS: list[tuple[tuple[str, ...], str, object, str]] = [
    (("-p", "--port"), "port", _positive_int, "TLS 1.3 TCP port (SPEC §1)"),
    (("--host",), "host", str, "address to listen on, TCP and QUIC"),
    (("--quic-port",), "quic_port", _positive_int, "QUIC UDP port; 0 disables QUIC"),
    (("-s", "--socket-dir"), "socket_dir", Path, "agent socket directory, watched with inotify"),
    (
        ("--state-dir",),
        "state_dir",
        Path,
        "state directory: certificate, dev token, session table "
        "(default $XDG_STATE_HOME/clawterm or ~/.local/state/clawterm)",
    ),
    (("--cert",), "cert", Path, "PEM certificate chain (default: self-signed in the state dir)"),
    (("--key",), "key", Path, "PEM private key for --cert"),
    (("--tokens",), "tokens", Path, "token file, TOML (default <state-dir>/tokens.toml)"),
    (("--metrics",), "metrics", str, "HOST:PORT for /metrics, /healthz, /readyz, or 'off'"),
    (("--ring-size",), "ring_size", _positive_int, "replay ring bytes per session (SPEC §7)"),
    (
        ("--overflow",),
        "overflow",
        str,
        "when a client does not acknowledge: 'block' pauses the agent (nothing lost), "
        "'drop-oldest' evicts and reports GAP",
    ),
    (("--keepalive",), "keepalive", _seconds, "keepalive interval, seconds; dead after 3"),
    (
        ("--detached-ttl",),
        "detached_ttl",
        _seconds,
        "seconds a suspended session is kept; 0 = ever",
    ),
    (("--handshake-timeout",), "handshake_timeout", _seconds, "seconds to complete CONNECT/RESUME"),
    (("--agent-timeout",), "agent_timeout", _seconds, "seconds the agent has to ACCEPT"),
    (("--max-payload",), "max_payload", _payload, "largest frame payload accepted"),
    (("--max-sessions",), "max_sessions", _positive_int, "sessions in total"),
    (("--max-sessions-per-tenant",), "max_sessions_per_tenant", _positive_int, "per tenant"),
    (
        ("--max-handshakes-per-ip",),
        "max_handshakes_per_ip",
        _positive_int,
        "connections still in handshake per source address",
    ),
    (
        ("--max-buffer",),
        "max_buffer",
        _positive_int,
        "bytes buffered toward one peer before the other side's reading is paused",
    ),
    (
        ("--resume-failures",),
        "resume_failures",
        _positive_int,
        "failed RESUMEs allowed per source address per minute; then ERROR LIMIT",
    ),
    (
        ("--quic-retry",),
        "quic_retry",
        str,
        "QUIC address validation with Retry: on, off, or auto (on unless listening on loopback)",
    ),
    (("--max-quic-connections",), "max_quic_connections", _positive_int, "QUIC connections"),
    (("--shutdown-timeout",), "shutdown_timeout", _seconds, "seconds to finish on SIGTERM"),
    (
        ("--gc-full-interval",),
        "gc_full_interval",
        _seconds,
        "seconds between full garbage collections; survivors are frozen once a second "
        "in between, so other pauses stay short; 0 = Python's default collector",
    ),
    (("--log-level",), "log_level", str, "debug, info, warning or error"),
    (("--log-format",), "log_format", str, "text or json"),
]

_CHOICES = {
    "overflow": ("block", "drop-oldest"),
    "log_level": ("debug", "info", "warning", "error"),
    "log_format": ("text", "json"),
    "quic_retry": ("on", "off", "auto"),
}


def _env_name(dest: str) -> str:
    return "CLAWTERM_" + dest.upper()


def build_parser() -> argparse.ArgumentParser:
    """The ``clawtermd`` argument parser (subcommand ``token`` included)."""
    defaults = Config()
    parser = argparse.ArgumentParser(
        prog="clawtermd",
        description=(
            "ClawTerm node daemon: TLS 1.3 on TCP and QUIC for clients, a Unix socket per "
            "session to agents, sessions that outlive every connection. Every option can "
            "also be set as CLAWTERM_<OPTION> in the environment (e.g. CLAWTERM_SOCKET_DIR); "
            "the flag wins."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for flags, dest, kind, text in _OPTIONS:
        default = getattr(defaults, dest)
        parser.add_argument(
            *flags,
            dest=dest,
            type=kind,  # type: ignore[arg-type]
            default=default,
            choices=_CHOICES.get(dest),
            help=f"{text} [env {_env_name(dest)}]",
        )
    parser.add_argument(
        "--allow-legacy-resume",
        action="store_true",
        default=False,
        help="accept the 4-byte RESUME of published clients, which carries no proof "
        "(SPEC §6) [env CLAWTERM_ALLOW_LEGACY_RESUME=1]",
    )
    sub = parser.add_subparsers(dest="command")
    token = sub.add_parser("token", help="manage client tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    new = token_sub.add_parser("new", help="create a token; prints it once, stores only its hash")
    new.add_argument("--tenant", type=_positive_int, required=True)
    new.add_argument("--agents", default="*", help="comma-separated agent ids, or * for all")
    new.add_argument("--label", default="", help="a note for operators")
    token_sub.add_parser("list", help="list token entries (hashes, never tokens)")
    return parser


def config_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Config:
    """Merge parsed flags with ``CLAWTERM_*`` variables (flags win)."""
    env = dict(os.environ if environ is None else environ)
    parser = build_parser()
    config = Config()
    for flags, dest, kind, _ in _OPTIONS:
        value = getattr(args, dest)
        given = value != getattr(config, dest)
        name = _env_name(dest)
        if not given and name in env and env[name] != "":
            try:
                value = kind(env[name])  # type: ignore[operator]
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"{name}={env[name]!r}: {exc}")
            choices = _CHOICES.get(dest)
            if choices and value not in choices:
                parser.error(f"{name}={env[name]!r}: choose from {', '.join(choices)}")
        setattr(config, dest, value)
        del flags
    legacy = env.get("CLAWTERM_ALLOW_LEGACY_RESUME", "").lower() in ("1", "true", "yes", "on")
    config.allow_legacy_resume = bool(args.allow_legacy_resume) or legacy
    if (config.cert is None) != (config.key is None):
        parser.error("--cert and --key go together")
    return config
