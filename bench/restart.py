"""Daemon restart: time from starting clawtermd to every session resumed (issue 10).

Run: python -m bench.restart [--sessions 1000]

Opens N sessions through a real clawtermd to an echo agent, SIGKILLs the
daemon, starts it again and measures, from the moment the new process is
spawned: the daemon ready (its agent legs re-resumed, /readyz 200) and every
client having RESUMEd and echoed one byte.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
import time
from pathlib import Path

from tests.helpers import DaemonProcess, EchoAgent, WireClient, wait_for


async def measure(sessions: int, tmp: Path) -> dict[str, float]:
    d = DaemonProcess(tmp, "--max-handshakes-per-ip", "100000", "--resume-failures", "100000")
    d.start()
    try:
        agent = await EchoAgent(d.socket_dir).start()
        await asyncio.get_running_loop().run_in_executor(
            None, wait_for, lambda: d.metric("clawterm_agents_registered") >= 1
        )
        sem = asyncio.Semaphore(100)

        async def open_one() -> WireClient:
            async with sem:
                c = await WireClient.open(d.port)
                await c.connect(d.token)
                return c

        clients = await asyncio.gather(*(open_one() for _ in range(sessions)))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, d.kill, signal.SIGKILL)
        for c in clients:
            c.abort()
        t0 = time.perf_counter()
        await loop.run_in_executor(None, d.start)
        ready = time.perf_counter() - t0

        async def resume_one(old: WireClient) -> None:
            async with sem:
                c = await WireClient.open(d.port)
                c.tx, c.rx = old.tx, old.rx
                await c.resume(old.session_id, old.resume_token)
            c.send_data(b".")
            assert await c.data(timeout=30) == b"."
            c.abort()

        await asyncio.gather(*(resume_one(c) for c in clients))
        done = time.perf_counter() - t0
        await agent.stop()
        return {"sessions": sessions, "ready_s": ready, "all_resumed_s": done}
    finally:
        d.stop()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(measure(args.sessions, Path(tmp)))
    print("# daemon restart (SIGKILL, then start)")
    print(f"{'sessions':>9} {'daemon ready s':>15} {'all resumed s':>14}")
    print(f"{result['sessions']:>9.0f} {result['ready_s']:>15.2f} {result['all_resumed_s']:>14.2f}")
    return result


if __name__ == "__main__":
    main()
