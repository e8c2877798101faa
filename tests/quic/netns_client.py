"""A QUIC client for the network-namespace test, run with ``ip netns exec``.

Usage: python -m tests.quic.netns_client HOST PORT TOKEN_HEX

CONNECTs and echoes, prints ``READY <session_id>``, then for every line
``GO`` on stdin echoes a fresh payload and prints ``OK <local address>``;
any failure prints ``FAIL …`` and exits 1.
"""

from __future__ import annotations

import asyncio
import os
import sys

from clawterm.quic.client import open_quic_stream
from tests.helpers import WireClient


async def main(host: str, port: int, token: bytes) -> None:
    reader, writer, conn = await open_quic_stream(host, port)
    c = WireClient(reader, writer)  # type: ignore[arg-type]
    await c.connect(token)
    payload = os.urandom(20_000)
    c.send_data(payload)
    assert await c.read_exactly(len(payload)) == payload
    print("READY", c.session_id, flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.strip() != "GO":
            break
        payload = os.urandom(30_000)
        c.send_data(payload)
        got = await c.read_exactly(len(payload), timeout=15)
        assert got == payload
        print("OK", conn.local_address, flush=True)
    await c.close()


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])))
    except Exception as exc:
        print("FAIL", type(exc).__name__, exc, flush=True)
        sys.exit(1)
