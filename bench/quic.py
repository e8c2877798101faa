"""QUIC rows for the benchmarks (issue 9): handshake, migration, throughput.

Run: python -m bench.quic [--seconds S]

Through a real clawtermd with QUIC on and the test echo agent, on loopback:

* handshake — from opening the UDP socket to ACCEPT (QUIC handshake, stream
  open, CONNECT/ACCEPT), against the same over TLS 1.3/TCP;
* migration — ``conn.migrate()`` to a new UDP socket until the new path is
  validated and a PING is acknowledged on it;
* throughput — a closed-loop echo of 4 KiB DATA frames, 64 in flight, over
  QUIC against TLS/TCP.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.helpers import DaemonProcess, EchoAgent, WireClient, free_port, wait_for

from clawterm.quic.client import open_quic_stream


async def _quic_client(d: DaemonProcess) -> tuple[WireClient, Any]:
    reader, writer, conn = await open_quic_stream("127.0.0.1", d.quic_port)
    return WireClient(reader, writer), conn  # type: ignore[arg-type]


async def _echo_rate(c: WireClient, seconds: float, size: int = 4096, window: int = 64) -> float:
    payload = os.urandom(size)
    for _ in range(window):
        c.send_data(payload)
    done = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        got = await c.data(timeout=10)
        assert got == payload
        done += 1
        c.send_data(payload)
    rate = done / (time.perf_counter() - t0)
    for _ in range(window):
        await c.data(timeout=10)
    return rate


async def measure(d: DaemonProcess, seconds: float) -> dict[str, Any]:
    agent = await EchoAgent(d.socket_dir).start()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, wait_for, lambda: d.metric("clawterm_agents_registered") >= 1)
    out: dict[str, Any] = {}
    for name, opener in (("tls", None), ("quic", _quic_client)):
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            if opener is None:
                c = await WireClient.open(d.port)
            else:
                c, conn = await opener(d)
            await c.connect(d.token)
            times.append((time.perf_counter() - t0) * 1000)
            c.send(0x40)  # DISCONNECT: free the session
            await asyncio.sleep(0)
            if opener is not None:
                conn.close()
            else:
                c.abort()
        out[f"{name}_handshake_ms"] = statistics.median(times)
    c, conn = await _quic_client(d)
    await c.connect(d.token)
    mig = []
    for _ in range(10):
        t0 = time.perf_counter()
        await conn.migrate()
        mig.append((time.perf_counter() - t0) * 1000)
        c.send_data(b"after migration")
        assert await c.data() == b"after migration"
    out["migration_ms"] = statistics.median(mig)
    out["migration_max_ms"] = max(mig)
    out["quic_rtps"] = await _echo_rate(c, seconds)
    conn.close()
    t = await WireClient.open(d.port)
    await t.connect(d.token)
    out["tls_rtps"] = await _echo_rate(t, seconds)
    t.abort()
    out["resumes"] = d.metric("clawterm_resumes_total", result="ok")
    await agent.stop()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        d = DaemonProcess(Path(tmp), "--max-handshakes-per-ip", "1000")
        d.quic_port = free_port(socket.SOCK_DGRAM)
        d.start()
        try:
            r = asyncio.run(measure(d, args.seconds))
        finally:
            d.stop()
    mb = 4096 * 2 / 1e6
    print("# QUIC vs TLS/TCP through clawtermd (loopback, echo agent)")
    print(f"{'':28} {'TLS/TCP':>12} {'QUIC':>12}")
    tls_hs, quic_hs = r["tls_handshake_ms"], r["quic_handshake_ms"]
    print(f"{'handshake to ACCEPT, ms':28} {tls_hs:>12.1f} {quic_hs:>12.1f}")
    print(f"{'4 KiB echo, round trips/s':28} {r['tls_rtps']:>12,.0f} {r['quic_rtps']:>12,.0f}")
    print(f"{'  = MB/s relayed':28} {r['tls_rtps'] * mb:>12.1f} {r['quic_rtps'] * mb:>12.1f}")
    print(
        f"migration to a new UDP socket: median {r['migration_ms']:.1f} ms, "
        f"max {r['migration_max_ms']:.1f} ms; RESUMEs during the run: {r['resumes']:.0f}"
    )
    return r


if __name__ == "__main__":
    main()
