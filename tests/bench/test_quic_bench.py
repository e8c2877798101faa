"""Smoke run of bench/quic.py: every QUIC row measures, data intact, no RESUME."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from bench.quic import measure

from tests.helpers import DaemonProcess, free_port


def test_quic_rows_smoke(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, "--max-handshakes-per-ip", "1000")
    d.quic_port = free_port(socket.SOCK_DGRAM)
    d.start()
    try:
        r = asyncio.run(measure(d, 0.3))
    finally:
        d.stop()
    assert r["quic_rtps"] > 0 and r["tls_rtps"] > 0
    assert 0 < r["migration_ms"] < 1000
    assert r["resumes"] == 0  # migration kept the session without RESUME
