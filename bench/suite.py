"""The benchmark suite behind ``python -m bench``: scenarios, targets, report data.

Layout of a run (loopback only, TLS 1.3 everywhere):

* core 0: the system under test — ``clawtermd`` (started as ``python -m
  clawterm.daemon`` with its defaults) and the three peer relays of
  :mod:`bench.relays` (each idle while another is measured);
* core 1: the load generator (:mod:`bench.loadgen`, one process per
  measurement) and the echo agent (:mod:`bench.agent`) that every system
  relays to over a Unix socket.

CPU time of each process comes from ``/proc/PID/stat`` (utime + stime)
read when the load generator announces the start and the end of its
measurement window.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    Daemon,
    cores,
    cpu_seconds,
    free_port,
    rss_bytes,
    spawn,
    stop,
    wait_port,
)

SYSTEMS = ["clawtermd", "passthrough", "websockets", "picows"]
PROTO = {"clawtermd": "ct", "passthrough": "ct", "websockets": "ws", "picows": "ws"}


@dataclass
class Mode:
    """Sizes and durations of one run of the suite."""

    name: str
    sizes: list[int]
    sessions: list[int]
    warmup: float
    duration: float
    latency_duration: float
    scale_sessions: int
    ai_duration: float
    resume_reps: int
    verify: bool = False
    big_sessions_max_size: int = 4096


MODES = {
    "full": Mode("full", [64, 4096, 65535], [1, 64, 1000], 1.0, 3.0, 4.0, 9900, 6.0, 20),
    "quick": Mode("quick", [64, 4096], [1, 64], 0.5, 1.0, 1.5, 1000, 2.0, 5),
    "smoke": Mode("smoke", [64], [1, 4], 0.1, 0.3, 0.3, 20, 0.5, 1, verify=True),
}


def window_for(size: int, sessions: int) -> int:
    """Frames in flight per session: enough to fill the pipe, bounded in bytes."""
    budget = 2 << 20  # about 2 MiB in flight in total
    per = max(1, budget // (size + 15) // sessions)
    return max(1, min(per, 128 if sessions == 1 else 16))


@dataclass
class Env:
    tmp: Path
    server_cpus: set[int]
    lg_cpus: set[int]
    daemon: Daemon
    agent: subprocess.Popen[bytes]
    relays: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def pid(self, system: str) -> int:
        if system == "clawtermd":
            return self.daemon.pid
        return self.relays[system].pid


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def start_env(tmp: Path) -> Env:
    server, lg = cores()
    with contextlib.suppress(OSError):
        import os

        os.sched_setaffinity(0, lg)
    daemon = Daemon(tmp / "clawtermd", server).start()
    agent = spawn(
        [sys.executable, "-m", "bench.agent", "--socket-dir", str(daemon.socket_dir)],
        lg,
        tmp / "agent.log",
    )
    daemon.wait_agent()
    env = Env(tmp, server, lg, daemon, agent)
    env.ports["clawtermd"] = daemon.port
    sock = str(daemon.socket_dir / "0" / "1.sock")
    for kind in SYSTEMS[1:]:
        port = free_port()
        proc = spawn(
            [
                sys.executable,
                "-m",
                "bench.relays",
                kind,
                "--port",
                str(port),
                "--cert",
                str(daemon.cert),
                "--key",
                str(daemon.key),
                "--agent-sock",
                sock,
            ],
            server,
            tmp / f"{kind}.log",
        )
        env.relays[kind] = proc
        env.ports[kind] = port
    for kind, proc in env.relays.items():
        wait_port(env.ports[kind], proc)
    return env


def stop_env(env: Env) -> None:
    for proc in env.relays.values():
        stop(proc)
    env.daemon.stop()
    stop(env.agent)


def drive(env: Env, system: str, spec: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """Run one load generator against ``system``; its result plus CPU readings."""
    spec = {"host": "127.0.0.1", "port": env.ports[system], "proto": PROTO[system], **spec}
    spec.setdefault("token", env.daemon.token)
    proc = spawn(
        [sys.executable, "-m", "bench.loadgen", json.dumps(spec)],
        env.lg_cpus,
        env.tmp / "loadgen.log",
        stdout_pipe=True,
    )
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    pid = env.pid(system)
    agent_pid = env.agent.pid
    out: dict[str, Any] = {}
    marks: dict[str, tuple[float, float, float, int]] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            msg = json.loads(line)
            event = msg.pop("event")
            if event in ("start", "stop"):
                marks[event] = (
                    time.perf_counter(),
                    cpu_seconds(pid),
                    cpu_seconds(agent_pid),
                    rss_bytes(pid),
                )
            elif event == "ramping":
                marks[event] = (time.perf_counter(), cpu_seconds(pid), cpu_seconds(agent_pid), 0)
            elif event == "ramped":
                t0, s0, a0, _ = marks["ramping"]
                wall = time.perf_counter() - t0
                msg["server_cpu"] = (cpu_seconds(pid) - s0) / wall
                msg["agent_cpu"] = (cpu_seconds(agent_pid) - a0) / wall
                out["ramp"] = msg
                out["rss_ramped"] = rss_bytes(pid)
            elif event == "held":
                out["rss_held"] = rss_bytes(pid)
            elif event == "result":
                out.update(msg)
        proc.wait(10)
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed on {system}: see {env.tmp / 'loadgen.log'}")
    if "start" in marks and "stop" in marks:
        t0, s0, a0, _ = marks["start"]
        t1, s1, a1, _ = marks["stop"]
        wall = t1 - t0
        out["server_cpu"] = (s1 - s0) / wall
        out["agent_cpu"] = (a1 - a0) / wall
        relayed = 2 * out.get("frames", 0)
        out["relayed_fps"] = relayed / out["seconds"] if out.get("seconds") else 0.0
        out["cpu_us_per_frame"] = (s1 - s0) / relayed * 1e6 if relayed else 0.0
        out["bottleneck"] = bottleneck(out)
    return out


def bottleneck(r: dict[str, Any]) -> str:
    if r.get("server_cpu", 0) >= 0.85:
        return "server"
    if r.get("loadgen_cpu", 0) + r.get("agent_cpu", 0) >= 0.85:
        return "load generator"
    return "neither (window-bound)"


def throughput(env: Env, mode: Mode) -> list[dict[str, Any]]:
    rows = []
    for size in mode.sizes:
        for sessions in mode.sessions:
            if sessions > 64 and size > mode.big_sessions_max_size:
                continue
            for system in SYSTEMS:
                spec = {
                    "sessions": sessions,
                    "size": size,
                    "window": window_for(size, sessions),
                    "warmup": mode.warmup,
                    "duration": mode.duration,
                    "verify": mode.verify,
                    "concurrency": 32,
                }
                r = drive(env, system, spec)
                r.update(system=system, size=size, window=spec["window"])
                rows.append(r)
                log(
                    f"throughput {system:>11} {size:>6} B x{sessions:<5} "
                    f"{r['relayed_fps']:>10,.0f} frames/s {r['server_cpu']:.0%} server CPU"
                )
    return rows


def latency(env: Env, mode: Mode, peaks: dict[str, float]) -> list[dict[str, Any]]:
    """Round trips at about half of each system's measured peak (64 B, 64 sessions)."""
    rows = []
    sessions = max(mode.sessions[: 2 if len(mode.sessions) > 1 else 1])
    for system in SYSTEMS:
        rate = 0.5 * peaks[system]
        r = drive(
            env,
            system,
            {
                "sessions": sessions,
                "size": 64,
                "rate": rate,
                "warmup": 0.5,
                "duration": mode.latency_duration,
                "verify": mode.verify,
            },
        )
        r.update(system=system, rate=rate)
        rows.append(r)
        log(f"latency {system:>11} at {rate:,.0f}/s: {r['rtt_ms']}")
    return rows


def scale(tmp: Path, mode: Mode) -> dict[str, Any]:
    """A fresh daemon: ramp idle sessions, hold them, then the AI-agent load on them."""
    env = start_env_daemon_only(tmp)
    try:
        time.sleep(0.5)
        rss0 = rss_bytes(env.daemon.pid)
        n = mode.scale_sessions
        r = drive(
            env,
            "clawtermd",
            {
                "sessions": n,
                "size": 40,
                "rate": 10.0 * n,
                "hold": 2.0,
                "warmup": 1.0,
                "duration": mode.ai_duration,
                "concurrency": 32,
                "verify": mode.verify,
            },
            timeout=300,
        )
        r["rss_before"] = rss0
        held = r.get("ramp", {}).get("sessions", 0)
        r["rss_per_session"] = (r.get("rss_held", rss0) - rss0) / held if held else 0.0
        log(
            f"scale: {held} sessions, {r['ramp']['per_second']:,.0f}/s, "
            f"{r['rss_per_session'] / 1024:.1f} KiB each; AI load rtt {r.get('rtt_ms')}"
        )
        return r
    finally:
        stop_env(env)


def start_env_daemon_only(tmp: Path) -> Env:
    server, lg = cores()
    daemon = Daemon(tmp, server).start()
    agent = spawn(
        [sys.executable, "-m", "bench.agent", "--socket-dir", str(daemon.socket_dir)],
        lg,
        tmp / "agent.log",
    )
    daemon.wait_agent()
    env = Env(tmp, server, lg, daemon, agent)
    env.ports["clawtermd"] = daemon.port
    return env


def resume(env: Env, mode: Mode) -> dict[str, Any]:
    """A full 256 KiB ring: 64 frames of 4,081 B payload = 64 × 4,096 B encoded."""
    r = drive(
        env,
        "clawtermd",
        {
            "kind": "resume",
            "metrics_port": env.daemon.metrics_port,
            "size": 4081,
            "frames": 64,
            "reps": mode.resume_reps,
        },
    )
    log(f"resume: {r['total_ms']}")
    return r


def overhead() -> list[dict[str, Any]]:
    """Wire bytes per payload byte, computed from the framing rules (not measured)."""
    rows = []
    for size in [1, 4, 16, 40, 64, 256, 1024, 4096]:
        ws_s2c = 2 if size < 126 else 4 if size < 65536 else 10
        chunk = len(f"{size:x}") + 4
        rows.append(
            {
                "size": size,
                "clawterm": (size + 15) / size,
                "ws_s2c": (size + ws_s2c) / size,
                "ws_c2s": (size + ws_s2c + 4) / size,
                "http_chunked": (size + chunk) / size,
                "overhead": {"clawterm": 15, "ws_s2c": ws_s2c, "ws_c2s": ws_s2c + 4},
                "chunk": chunk,
            }
        )
    return rows


def run_suite(mode: Mode, workdir: Path | None = None) -> dict[str, Any]:
    """Run every scenario; the collected numbers (see :mod:`bench.report`)."""
    tmp = workdir or Path(tempfile.mkdtemp(prefix="clawterm-bench-"))
    started = time.monotonic()
    results: dict[str, Any] = {"mode": mode.name, "haproxy": shutil.which("haproxy")}
    env = start_env(tmp / "main")
    try:
        results["throughput"] = throughput(env, mode)
        peaks = {
            s: max(
                r["fps"]
                for r in results["throughput"]
                if r["system"] == s and r["size"] == 64 and r["sessions"] > 1
            )
            for s in SYSTEMS
        }
        results["latency"] = latency(env, mode, peaks)
        results["resume"] = resume(env, mode)
    finally:
        stop_env(env)
    results["scale"] = scale(tmp / "scale", mode)
    results["overhead"] = overhead()
    results["seconds"] = time.monotonic() - started
    if workdir is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return results
