"""``python -m bench.profile``: where clawtermd's CPU goes, sampled with py-spy.

Two loads, each on a fresh daemon pinned to its core as in the suite, and
sampled only inside the load generator's measurement window:

* ``throughput``: 64 B frames echoed by 64 sessions (the suite's row);
* ``tokens``: the AI-agent load, ``--sessions`` sessions each receiving a
  40-byte token 10 times a second and acknowledging it (SPEC §4).

py-spy samples the daemon's stacks, native frames included (``--native``:
uvloop, libuv, the ``_ssl`` module, OpenSSL and libc's system-call wrappers
show by name and file), and samples where the loop waits in ``epoll_wait``
are left out. Each sample at work is charged twice: by its innermost frame
to one *layer* (a system call, OpenSSL, CPython's ``ssl`` module, uvloop,
ClawTerm's Python, …), and to every ClawTerm function on its stack
(inclusive time). py-spy folds the interpreter's own C frames into the
Python frame they run, so "ClawTerm Python" includes the bytecode
interpreter's work for our code. Time inside a system call includes the
kernel's work for it, which on loopback includes the receiving side's TCP
stack.

py-spy pauses the daemon for each sample; the load's rate with and without
sampling is printed so the cost of looking is visible.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.suite import MODES, ai_spec, drive, log, start_env_daemon_only, stop_env, window_for

#: Samples per second. py-spy pauses the daemon to unwind its native stack
#: for each sample: at 200/s that halved the 64 B row here, at 50/s it
#: costs within the run-to-run noise (measured 2026-11-24).
RATE = 50

#: Innermost frames that mean the loop is waiting for events, not working.
IDLE = re.compile(r"^(epoll_pwait|epoll_wait|__GI_epoll|poll|select) ")

#: ClawTerm frames under which every sample sits (the daemon's entry point).
ROOTS = {"daemon.__main__.<module>", "daemon.cli.main", "daemon.server.run_daemon"}

#: (layer, pattern matched against a frame's "function (full path)" label).
#: The first match wins. Python frames carry the interpreter's work for
#: them (py-spy folds CPython's own C frames into the Python frame).
LAYERS: list[tuple[str, re.Pattern[str]]] = [
    (
        "system call: write/send",
        re.compile(r"^(__)?(libc_)?(write|writev|send|sendto|sendmsg)\w* \(.*/libc\.so"),
    ),
    (
        "system call: read/recv",
        re.compile(r"^(__)?(libc_)?(read|readv|recv|recvfrom|recvmsg)\w* \(.*/libc\.so"),
    ),
    ("libc: other", re.compile(r"/libc\.so")),
    ("OpenSSL", re.compile(r"/(libssl|libcrypto)\.so")),
    ("CPython ssl module", re.compile(r"/_ssl\.c|/_ssl\.cpython|/ssl\.py\)")),
    ("uvloop and libuv", re.compile(r"uvloop|libuv")),
    ("ClawTerm Python", re.compile(r"/clawterm/.*\.py\)")),
    ("fastcrc (CRC-16)", re.compile(r"fastcrc")),
    ("struct (CPython)", re.compile(r"_struct")),
    ("other Python", re.compile(r"\.py\)")),
]

#: Inline helpers from C headers (Py_DECREF …): charged to their caller.
_HEADER = re.compile(r"\.h\)$")

_COUNT = re.compile(r"^(.*) (\d+)$")
_OURS = re.compile(r"^(\S+) \(.*/clawterm/([\w/]+)\.py\)")


def layer(frame: str) -> str:
    for name, pattern in LAYERS:
        if pattern.search(frame):
            return name
    return "other"


@dataclass
class Profile:
    """What one py-spy raw (collapsed-stack) file says."""

    samples: int = 0
    idle: int = 0
    layers: Counter[str] = field(default_factory=Counter)
    leaves: Counter[str] = field(default_factory=Counter)
    ours: Counter[str] = field(default_factory=Counter)

    @classmethod
    def parse(cls, text: str) -> Profile:
        p = cls()
        for line in text.splitlines():
            m = _COUNT.match(line.strip())
            if not m:
                continue
            frames = m.group(1).split(";")
            n = int(m.group(2))
            k = len(frames) - 1
            while k > 0 and _HEADER.search(frames[k]):
                k -= 1
            leaf = frames[k]
            if IDLE.match(leaf):
                p.idle += n
                continue
            p.samples += n
            p.layers[layer(leaf)] += n
            p.leaves[_short(leaf)] += n
            seen = set()
            for f in frames:
                o = _OURS.match(f)
                if o:
                    name = f"{o.group(2).replace('/', '.')}.{o.group(1)}"
                    if name not in ROOTS:
                        seen.add(name)
            for name in seen:
                p.ours[name] += n
        return p


def _short(frame: str) -> str:
    """``func (/path/to/file.py)`` → ``func (file.py)``."""
    m = re.match(r"^(.*) \((.*)\)$", frame)
    if not m:
        return frame
    return f"{m.group(1)} ({Path(m.group(2)).name})"


def record(pid: int, out: Path) -> subprocess.Popen[bytes]:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    argv = [pyspy, "record", "-p", str(pid), "-r", str(RATE), "--native", "-f", "raw"]
    return subprocess.Popen(
        [*argv, "-o", str(out), "--nolineno", "--full-filenames"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def profile_load(tmp: Path, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``spec`` twice on a fresh daemon: plain, then sampled in its window."""
    env = start_env_daemon_only(tmp / name)
    try:
        time.sleep(0.3)
        plain = drive(env, "clawtermd", spec, timeout=300)
        out = tmp / f"{name}.txt"
        spy: list[subprocess.Popen[bytes]] = []

        def on_event(event: str) -> None:
            if event == "start" and not spy:
                spy.append(record(env.daemon.pid, out))
            elif event == "stop" and spy:
                spy[0].send_signal(signal.SIGINT)

        sampled = drive(env, "clawtermd", spec, timeout=300, on_event=on_event)
        if not spy:
            raise RuntimeError(f"{name}: the load generator never opened its window")
        _, err = spy[0].communicate(timeout=60)
        if not out.exists():
            raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')}")
    finally:
        stop_env(env)
    prof = Profile.parse(out.read_text())
    return {
        "name": name,
        "plain": plain,
        "sampled": sampled,
        "profile": prof,
        "seconds": sampled["seconds"],
    }


def rate_of(r: dict[str, Any]) -> float:
    return float(r.get("relayed_fps", 0.0))


def markdown(results: list[dict[str, Any]], top: int = 12) -> str:
    lines = []
    for r in results:
        p: Profile = r["profile"]
        lines += [
            f"### {r['title']}",
            "",
            f"{rate_of(r['plain']):,.0f} relayed frames/s without sampling, "
            f"{rate_of(r['sampled']):,.0f} while sampled. {p.samples:,} samples of the "
            f"daemon at work (waits in epoll left out) in {r['seconds']:.1f} s at {RATE}/s; "
            f"its CPU in that window: {r['sampled'].get('server_cpu', 0):.0%} of a core "
            "(/proc).",
            "",
            "| layer (innermost frame) | share of busy samples |",
            "|---|---:|",
        ]
        for name, n in p.layers.most_common():
            lines.append(f"| {name} | {n / p.samples:.1%} |")
        lines += ["", "| innermost frame | share |", "|---|---:|"]
        for name, n in p.leaves.most_common(top):
            lines.append(f"| `{name}` | {n / p.samples:.1%} |")
        lines += ["", "| ClawTerm function on the stack (inclusive) | share |", "|---|---:|"]
        for name, n in p.ours.most_common(top):
            lines.append(f"| `{name}` | {n / p.samples:.1%} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--sessions", type=int, default=3000, help="token-load sessions")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds sampled per load")
    parser.add_argument("--out", type=Path, help="also write the tables (markdown) here")
    args = parser.parse_args(argv)

    loads = [
        (
            "throughput",
            "Throughput: 64 B frames, 64 sessions, windowed echo",
            {
                "sessions": 64,
                "size": 64,
                "window": window_for(64, 64),
                "warmup": 1.0,
                "duration": args.duration,
                "concurrency": 32,
            },
        ),
        (
            "tokens",
            f"AI-agent load: {args.sessions:,} sessions × 10 tokens/s",
            {
                **ai_spec(MODES["full"]),
                "sessions": args.sessions,
                "steps": [args.sessions],
                "duration": args.duration,
            },
        ),
    ]
    results = []
    with tempfile.TemporaryDirectory(prefix="clawterm-profile-") as d:
        for name, title, spec in loads:
            log(f"profiling {name} ...")
            r = profile_load(Path(d), name, spec)
            r["title"] = title
            results.append(r)
    text = markdown(results)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
