"""The quick start brings up a daemon and the demo agent a client can talk to."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from tests.daemon.test_handshake import run
from tests.helpers import WireClient, free_port


def test_quickstart_start_talk_stop(tmp_path: Path) -> None:
    state = tmp_path / "state"
    port, metrics = free_port(), free_port()
    base = [sys.executable, "-m", "clawterm.quickstart", "--state-dir", str(state), "-p", str(port)]
    subprocess.run([*base, "--metrics", f"127.0.0.1:{metrics}", "start"], check=True, timeout=60)
    try:
        token = bytes.fromhex((state / "dev-token").read_text().strip())

        async def main() -> bytes:
            c = await WireClient.open(port)
            await c.connect(token)
            out = bytearray()
            c.send_data(b"hello agent\r")
            while b"hello" not in out or len(out) < 40:
                out += await c.data(timeout=10)
            await c.close()
            return bytes(out)

        assert len(run(main())) >= 40
        # A second start reuses what is running.
        subprocess.run([*base, "start"], check=True, timeout=30)
        assert (state / "clawtermd.pid").exists()
    finally:
        subprocess.run([*base, "stop"], check=True, timeout=30)
    assert not (state / "clawtermd.pid").exists()
    asyncio.run(asyncio.sleep(0))
