"""Tables, targets, plots and docs/benchmarks.md from a suite run's results."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench.common import ROOT
from bench.suite import AI_P99_MS, meets_ai

CODEC_HEADING = "## Codec (bench/codec.py)"

DEFAULT_CODEC = """## Codec (bench/codec.py)

Hand-written; measured 2026-11-24 on this machine (2 cores, CPython 3.11.7),
one core via taskset -c 1, command `taskset -c 1 python -m bench.codec`.

| payload | op | frames/s | MB/s | floor frames/s | × floor |
|---:|---|---:|---:|---:|---:|
| 64 | encode | 2,326,972 | 184 | 4,711,758 | 2.02 |
| 64 | decode | 2,029,110 | 160 | 4,043,059 | 1.99 |
| 1024 | encode | 1,689,907 | 1,756 | 4,444,958 | 2.63 |
| 1024 | decode | 1,759,543 | 1,828 | 3,385,086 | 1.92 |
| 65535 | encode | 289,078 | 18,949 | 579,571 | 2.00 |
| 65535 | decode | 456,175 | 29,902 | 543,094 | 1.19 |

Decode meets every target (≥500k frames/s at 64 B, ≥2 GB/s at 64 KiB, within
2× of the floor); encode at 1 KiB is 2.6× the floor because the floor never
copies a payload into an output frame while an encoder must (concatenation and
join were both measured).
"""

NAMES = {
    "clawtermd": "clawtermd",
    "passthrough": "pass-through relay",
    "websockets": "websockets relay",
    "picows": "picows relay",
    "haproxy": "haproxy (TCP mode)",
}


def sections(text: str) -> list[tuple[str, str]]:
    """(heading line, whole section text) of every ``## `` section of ``text``."""
    out: list[tuple[str, str]] = []
    starts = [
        i for i in range(len(text)) if text.startswith("## ", i) and (i == 0 or text[i - 1] == "\n")
    ]
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(text)
        heading = text[start : text.find("\n", start)]
        out.append((heading, text[start:end].rstrip() + "\n"))
    return out


def kept_sections(path: Path) -> tuple[str, list[str]]:
    """The hand-written parts of ``path``, kept verbatim when it is regenerated.

    The codec section (or its default text when missing) and every section
    whose heading says "(hand-written)".
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return DEFAULT_CODEC, []
    codec = DEFAULT_CODEC
    extra: list[str] = []
    for heading, body in sections(text):
        if heading.strip() == CODEC_HEADING:
            codec = body
        elif "(hand-written)" in heading:
            extra.append(body)
    return codec, extra


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = "unknown"
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        commit = head + (" with uncommitted changes under src/" if dirty else "")
    except OSError:
        pass
    return {
        "commit": commit,
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kernel": platform.release(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def find(rows: list[dict[str, Any]], system: str, size: int, sessions: int) -> dict[str, Any]:
    for r in rows:
        if r["system"] == system and r["size"] == size and r["sessions"] == sessions:
            return r
    return {}


def verdict(value: float, target: float, higher: bool = True) -> tuple[bool, str]:
    if value <= 0:
        return False, "not measured"
    met = value >= target if higher else value <= target
    margin = (value / target - 1) * 100 if higher else (target / value - 1) * 100
    word = "met" if met else "missed"
    return met, f"{word} ({margin:+.0f} %)"


def targets(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, measured, goal, verdict) rows."""
    tp = res["throughput"]
    out: list[tuple[str, str, str, str]] = []
    big = max(r["sessions"] for r in tp if r["size"] == 64)
    s64 = 64 if find(tp, "clawtermd", 64, 64) else big
    c64 = find(tp, "clawtermd", 64, s64).get("relayed_fps", 0.0)
    c4k = find(tp, "clawtermd", 4096, s64).get("relayed_fps", 0.0)
    for label, value, goal in [
        (f"frames/s at 64 B, {s64} sessions", c64, 250_000),
        (f"frames/s at 4 KiB, {s64} sessions", c4k, 80_000),
    ]:
        out.append((label, f"{value:,.0f}", f"≥ {goal:,}", verdict(value, goal)[1]))
    for peer, goal in [("websockets", 6.0), ("picows", 2.5)]:
        p = find(tp, peer, 64, s64).get("relayed_fps", 0.0)
        ratio = c64 / p if p else 0.0
        out.append(
            (f"clawtermd ÷ {peer} at 64 B", f"{ratio:.2f}×", f"≥ {goal}×", verdict(ratio, goal)[1])
        )
    sc = res["scale"]
    p99 = sc.get("latency_ms", {}).get("p99", 0.0)
    lost = sc.get("late", 0) + sc.get("bad", 0) + sc.get("final", {}).get("lost", 0)
    n = sc.get("sessions", 0)
    text = verdict(p99, AI_P99_MS, higher=False)[1]
    if lost:
        text = f"missed ({lost} frames lost)"
    out.append(
        (
            f"AI-agent load p99 delivery ({n:,} sessions × 10 token frames/s)",
            f"{p99:.1f} ms, {lost} lost",
            f"< {AI_P99_MS:.0f} ms, 0 lost",
            text,
        )
    )
    best = ai_best(sc)
    out.append(
        (
            f"largest AI-agent load meeting p99 < {AI_P99_MS:.0f} ms, 0 lost",
            f"{best:,} sessions" if best else "none",
            "9,900 sessions",
            verdict(best, 9900)[1] if best else "missed",
        )
    )
    rss = sc.get("rss_per_session", 0.0) / 1024
    out.append(("RSS per idle session", f"{rss:.1f} KiB", "≤ 40 KiB", verdict(rss, 40, False)[1]))
    rate = sc.get("ramp", {}).get("per_second", 0.0)
    out.append(("new TLS sessions/s", f"{rate:,.0f}", "≥ 900", verdict(rate, 900)[1]))
    rz = res["resume"]["total_ms"]
    out.append(
        (
            "256 KiB ring replay (median, new connection → last byte)",
            f"{rz['p50']:.1f} ms (max {rz['max']:.1f})",
            "≤ 20 ms",
            verdict(rz["p50"], 20.0, False)[1],
        )
    )
    return out


def ai_steps(sc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(sc.get("steps") or [sc])


def gc_sentence(gc: dict[str, Any]) -> str:
    """What clawterm_gc_pause_seconds showed over the scale test and AI-agent load."""
    if not gc:
        return ""
    over = gc.get("over", {})
    longest = gc.get("longest_le_s", float("inf"))
    bound = f"every one under {longest * 1000:g} ms" if longest < float("inf") else "some ≥ 1 s"
    return (
        f"Garbage-collector pauses in clawtermd over the ramp, the idle hold and "
        f"the AI-agent load (`clawterm_gc_pause_seconds`): {gc.get('collections', 0):,} "
        f"collections, {over.get('10 ms', 0)} over 10 ms, {bound}."
    )


def cores_busy(r: dict[str, Any]) -> str:
    """Busy share of the server's core and the load generator's, softirq included."""
    return f"{r.get('server_core_busy', 0):.0%} / {r.get('lg_core_busy', 0):.0%}"


def ai_best(sc: dict[str, Any]) -> int:
    """The largest step of the AI-agent load that met its target."""
    return max((r.get("sessions", 0) for r in ai_steps(sc) if meets_ai(r)), default=0)


def ai_rows(sc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = [
        "sessions",
        "offered tokens/s",
        "delivered tokens/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "agent late p99 ms",
        "not delivered within 5 s",
        "server CPU",
        "CPU µs/token",
        "load gen CPU",
        "agent CPU",
        "cores busy (server / load gen)",
        "other CPU",
        f"p99 < {AI_P99_MS:.0f} ms, 0 lost",
    ]
    rows = []
    for r in ai_steps(sc):
        q = r.get("latency_ms", {})
        rows.append(
            [
                f"{r.get('sessions', 0):,}",
                f"{r.get('offered', 0):,.0f}",
                f"{r.get('fps', 0):,.0f}",
                f"{q.get('p50', 0):.2f}",
                f"{q.get('p99', 0):.2f}",
                f"{q.get('p999', 0):.2f}",
                f"{q.get('max', 0):.2f}",
                f"{r.get('agent_lag_ms', {}).get('p99', 0):.2f}",
                f"{r.get('late', 0):,}",
                f"{r.get('server_cpu', 0):.0%}",
                f"{r.get('cpu_us_per_frame', 0):.1f}",
                f"{r.get('loadgen_cpu', 0):.0%}",
                f"{r.get('agent_cpu', 0):.0%}",
                cores_busy(r),
                f"{r.get('other_cpu', 0):.0%}",
                "met" if meets_ai(r) else "missed",
            ]
        )
    return head, rows


def ai_systems(res: dict[str, Any]) -> list[dict[str, Any]]:
    """clawtermd's AI-agent load (from §3) and each peer's, in one list."""
    return [{**res["scale"], "system": "clawtermd"}, *res.get("ai_peers", [])]


def ai_peer_rows(res: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per step: p99 delivery latency and server CPU of every system."""
    systems = ai_systems(res)
    head = ["sessions"] + [f"{NAMES[r['system']]} p99 ms (server CPU)" for r in systems]
    steps = sorted({s.get("sessions", 0) for r in systems for s in ai_steps(r)})
    rows = []
    for n in steps:
        row = [f"{n:,}"]
        for r in systems:
            step = next((s for s in ai_steps(r) if s.get("sessions") == n), None)
            if step is None:
                row.append("—")
                continue
            mark = "" if meets_ai(step) else " ✗"
            row.append(
                f"{step.get('latency_ms', {}).get('p99', 0):.1f} "
                f"({step.get('server_cpu', 0):.0%}){mark}"
            )
        rows.append(row)
    best = ["largest meeting"] + [f"{ai_best(r):,}" if ai_best(r) else "none" for r in systems]
    per_token = ["CPU µs/token, smallest step"] + [
        f"{ai_steps(r)[0].get('cpu_us_per_frame', 0):.1f}" for r in systems
    ]
    return head, [*rows, best, per_token]


def busy_rows(res: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = [
        "payload B",
        "window",
        "sessions",
        "echoed per session in the measured second",
        "RSS per session, idle",
        "RSS per session, after traffic",
    ]
    rows = [
        [
            f"{r['size']:,}",
            str(r["window"]),
            f"{r['sessions']:,}",
            f"{r['echoed_per_session'] / 1024:,.0f} KiB",
            f"{r['idle_per_session'] / 1024:.1f} KiB",
            f"{r['busy_per_session'] / 1024:.1f} KiB",
        ]
        for r in res.get("busy", [])
    ]
    return head, rows


def scale_peer_rows(res: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["system", "sessions held", "new sessions/s", "RSS per idle session"]
    rows = []
    for r in ai_systems(res):
        ramp = r.get("ramp", {})
        rows.append(
            [
                NAMES[r["system"]],
                f"{ramp.get('sessions', 0):,}",
                f"{ramp.get('per_second', 0):,.0f}",
                f"{r.get('rss_per_session', 0) / 1024:.1f} KiB",
            ]
        )
    return head, rows


def md_table(head: list[str], rows: list[list[str]], align: str = "") -> str:
    align = align or "l" + "r" * (len(head) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def text_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), *(fmt.format(*r) for r in rows)]) + "\n"


def throughput_rows(res: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = [
        "system",
        "payload B",
        "sessions",
        "window",
        "round trips/s",
        "frames/s (relayed)",
        "MB/s (relayed)",
        "server CPU",
        "CPU µs/frame",
        "cores busy (server / load gen)",
        "other CPU",
        "clawtermd ÷ this",
        "load gen processes",
        "bound by",
    ]
    rows = []
    tp = res["throughput"]
    for r in tp:
        c = find(tp, "clawtermd", r["size"], r["sessions"]).get("relayed_fps", 0.0)
        ratio = c / r["relayed_fps"] if r["relayed_fps"] else 0.0
        rows.append(
            [
                NAMES[r["system"]],
                f"{r['size']:,}",
                f"{r['sessions']:,}",
                str(r["window"]),
                f"{r['fps']:,.0f}",
                f"{r['relayed_fps']:,.0f}",
                f"{2 * r['mbps']:,.1f}",
                f"{r['server_cpu']:.0%}",
                f"{r['cpu_us_per_frame']:.1f}",
                cores_busy(r),
                f"{r.get('other_cpu', 0):.0%}",
                "—" if r["system"] == "clawtermd" else f"{ratio:.2f}",
                str(r.get("lg_procs", 1)),
                r["bottleneck"],
            ]
        )
    return head, rows


def latency_rows(res: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = [
        "system",
        "sessions",
        "offered round trips/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "server CPU",
        "other CPU",
    ]
    rows = []
    for r in res["latency"]:
        q = r.get("rtt_ms", {})
        rows.append(
            [
                NAMES[r["system"]],
                f"{r['sessions']:,}",
                f"{r['rate']:,.0f}",
                f"{q.get('p50', 0):.2f}",
                f"{q.get('p99', 0):.2f}",
                f"{q.get('p999', 0):.2f}",
                f"{q.get('max', 0):.2f}",
                f"{r.get('server_cpu', 0):.0%}",
                f"{r.get('other_cpu', 0):.0%}",
            ]
        )
    return head, rows


def overhead_rows(res: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = [
        "payload B",
        "ClawTerm (15 B)",
        "WebSocket server→client",
        "WebSocket client→server",
        "HTTP/1.1 chunked",
    ]
    rows = []
    for r in res["overhead"]:
        o = r["overhead"]
        rows.append(
            [
                str(r["size"]),
                f"{r['clawterm']:.2f}",
                f"{r['ws_s2c']:.2f} ({o['ws_s2c']} B)",
                f"{r['ws_c2s']:.2f} ({o['ws_c2s']} B)",
                f"{r['http_chunked']:.2f} ({r['chunk']} B)",
            ]
        )
    return head, rows


def print_tables(res: dict[str, Any]) -> None:
    for title, (head, rows) in [
        ("throughput", throughput_rows(res)),
        ("latency at ~50 % of peak", latency_rows(res)),
        ("AI-agent load, clawtermd (40 B tokens, 10/s per session)", ai_rows(res["scale"])),
        ("AI-agent load, every system", ai_peer_rows(res)),
        ("scale, every system", scale_peer_rows(res)),
        ("RSS per session after traffic", busy_rows(res)),
        ("wire overhead (bytes per payload byte, computed)", overhead_rows(res)),
    ]:
        print(f"\n# {title}")
        print(text_table(head, rows))
    sc, rz = res["scale"], res["resume"]
    print(
        f"# scale: {sc['ramp']['sessions']:,} sessions at {sc['ramp']['per_second']:,.0f}/s, "
        f"{sc['rss_per_session'] / 1024:.1f} KiB RSS each; tokens never delivered: "
        f"{sc.get('final', {}).get('lost')}"
    )
    print(f"# resume (256 KiB ring): total {rz['total_ms']}")
    print("\n# targets")
    print(text_table(["target", "measured", "goal", "verdict"], [list(t) for t in targets(res)]))


def plots(res: dict[str, Any], img: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    names = []
    tp = res["throughput"]
    combos = sorted({(r["size"], r["sessions"]) for r in tp})
    systems = [s for s in NAMES if any(r.get("system") == s for r in tp)]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(systems)
    for i, s in enumerate(systems):
        ys = [find(tp, s, size, n).get("relayed_fps", 0.0) for size, n in combos]
        ax.bar([k + i * width for k in range(len(combos))], ys, width, label=NAMES[s])
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(combos))])
    ax.set_xticklabels([f"{size} B\n×{n}" for size, n in combos])
    ax.set_ylabel("DATA frames/s relayed (both directions)")
    ax.set_yscale("log")
    ax.set_title("Throughput through each relay (TLS 1.3, loopback, server on one core)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(img / "bench-throughput.png", dpi=90)
    plt.close(fig)
    names.append("bench-throughput.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    qs = [("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")]
    lat = res["latency"]
    width = 0.8 / len(qs)
    for i, (key, label) in enumerate(qs):
        ys = [r.get("rtt_ms", {}).get(key, 0.0) for r in lat]
        ax.bar([k + i * width for k in range(len(lat))], ys, width, label=label)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(lat))])
    ax.set_xticklabels([f"{NAMES[r['system']]}\n{r['rate']:,.0f}/s" for r in lat], fontsize=8)
    ax.set_ylabel("round trip, ms")
    ax.set_title("Round-trip latency at ~50 % of each system's peak (64 B)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(img / "bench-latency.png", dpi=90)
    plt.close(fig)
    names.append("bench-latency.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    for r in ai_systems(res):
        steps = ai_steps(r)
        ax.plot(
            [st.get("sessions", 0) for st in steps],
            [max(0.01, st.get("latency_ms", {}).get("p99", 0.0)) for st in steps],
            marker="o",
            label=NAMES[r["system"]],
        )
    ax.axhline(AI_P99_MS, color="grey", linestyle="--", linewidth=1, label="target p99")
    ax.set_yscale("log")
    ax.set_xlabel("sessions, each receiving 10 token frames/s (40 B)")
    ax.set_ylabel("p99 delivery latency, ms")
    ax.set_title("AI-agent load: agent write → client read (server on one core)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(img / "bench-ai-load.png", dpi=90)
    plt.close(fig)
    names.append("bench-ai-load.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    ov = res["overhead"]
    xs = [r["size"] for r in ov]
    for key, label in [
        ("clawterm", "ClawTerm (15 B/frame)"),
        ("ws_s2c", "WebSocket server→client"),
        ("ws_c2s", "WebSocket client→server"),
        ("http_chunked", "HTTP/1.1 chunked"),
    ]:
        ax.plot(xs, [r[key] for r in ov], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("payload bytes per frame/message/chunk")
    ax.set_ylabel("wire bytes per payload byte")
    ax.set_title("Framing overhead (computed; TLS records not included)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(img / "bench-overhead.png", dpi=90)
    plt.close(fig)
    names.append("bench-overhead.png")
    return names


def markdown(res: dict[str, Any], codec: str, command: str) -> str:
    m = machine()
    tp_head, tp_rows = throughput_rows(res)
    lat_head, lat_rows = latency_rows(res)
    ov_head, ov_rows = overhead_rows(res)
    sc, rz = res["scale"], res["resume"]
    n = sc["ramp"]["sessions"]
    ai_head, ai_rows_ = ai_rows(sc)
    ai_p_head, ai_p_rows = ai_peer_rows(res)
    sc_head, sc_rows = scale_peer_rows(res)
    busy_head, busy_rows_ = busy_rows(res)
    ai_dur = sc.get("seconds", 0.0)
    hap = res.get("haproxy")
    parts = [
        "# Benchmarks\n",
        "Everything below the codec section is generated by `python -m bench` "
        "(bench/__main__.py); the codec section is hand-written and kept as is "
        "when the file is regenerated.\n",
        codec,
        f"## Run\n\nCommand `{command}` ({res['mode']} mode, {res['seconds']:.0f} s), "
        f"{m['date']}. Machine: {m['nproc']} cores (`nproc`), {m['cpu']}, "
        f"{m['python']}, Linux {m['kernel']}; code at commit {m['commit']}.\n\n"
        "Method, for every system alike: loopback only, TLS 1.3 (clawtermd's own "
        "self-signed P-256 certificate, the default TLS 1.3 cipher suite); the "
        "system under test is pinned to core 0; the load generator "
        "(`bench/loadgen.py`, one uvloop process of `asyncio.Protocol` sessions) "
        + (
            "and the echo agent (`clawterm-agent echo`, the agent SDK's, run with "
            "`--agent sdk`) share core 1. "
            if res.get("agent") == "sdk"
            else "and the echo agent (`bench/agent.py`, uvloop, Unix socket) share core 1. "
            "The agent SDK's `clawterm-agent echo` works too (`python -m bench "
            "--agent sdk`), but on the shared core it costs about five times the "
            "lean agent's CPU per frame (measured at 64 B × 64 sessions through "
            "clawtermd: 0.69 of core 1 at 79,000 round trips/s against 0.22 at "
            "142,000), so it, not the system under test, would set the numbers. "
        )
        + "The agent echoes each DATA payload as one DATA frame of its own numbering "
        "and acknowledges once per chunk read (for the AI-agent load it streams "
        "token frames on request instead, §2). When a throughput row is bound "
        "by the load generator, it is measured again with two load-generator "
        "processes (on the same core: there is no third) and the faster result "
        "is kept; *load gen processes* says which. CPU time is utime + stime from "
        "`/proc/PID/stat` over the measurement window. *Cores busy* is each "
        "core's non-idle share from `/proc/stat`, softirq and irq included: "
        "loopback TCP does part of its work there and no process is charged for "
        "it, so a core can be full while its processes add up to less. *Bound "
        "by* says `server` when the server process used ≥ 85 % of its core or "
        "that core was ≥ 90 % busy, `load generator` when the load generator "
        "and agent used ≥ 85 % of core 1 or core 1 was ≥ 90 % busy, `both "
        "cores` when both held. *Other CPU* is user + system time the rest of the "
        "machine used during the window (from `/proc/stat`, minus the server, the "
        "agent and the load generator; interrupt/softirq time, where loopback TCP "
        "does part of its work, is not counted): this machine is shared with other "
        "work, so a window where others used ≥ 15 % of a core is measured again "
        "(up to 3 attempts while the run is inside its time budget) and the "
        "quietest attempt is kept; rows that still show a high value were "
        "disturbed.\n\n"
        "Counting: a *round trip* is one payload sent by the load generator and "
        "its echo received. A relay forwards two DATA frames per round trip "
        "(client→agent and agent→client), so **frames/s (relayed) = 2 × round "
        "trips/s** and MB/s counts payload bytes in both directions; the "
        "targets are read against the relayed figures. If a target is meant as "
        "round trips, halve the measured value. CPU µs/frame is the server's CPU "
        "time divided by relayed DATA frames.\n",
        "## Targets\n",
        md_table(
            ["target", "measured", "goal", "verdict"],
            [list(t) for t in targets(res)],
            "lrrl",
        ),
        "## 1. Throughput\n",
        "Closed loop: each session keeps *window* frames in flight and sends one "
        "new frame per echo; connection set-up and a warm-up are excluded. The "
        "ClawTerm load generator acknowledges (ACK u32) once per chunk it reads; "
        "clawtermd passes those ACKs to the agent and the agent's ACKs to the "
        "client, work the WebSocket relays do not have (they drop the agent's ACKs "
        "and have no replay ring).\n",
        md_table(tp_head, tp_rows, "lrrrrrrrrrrrrl"),
        "![throughput](img/bench-throughput.png)\n",
        "## 2. Latency\n",
        "Open loop at about half of each system's measured peak round-trip rate "
        "(64 B payloads, the 64-session case; a 2 ms ticker spreads sends "
        "round-robin over the sessions). Round trip = send time to echo arrival, "
        "measured in the load generator.\n",
        md_table(lat_head, lat_rows),
        "![latency](img/bench-latency.png)\n",
        "### AI-agent load\n",
        f"The sessions of the scale test (§3) below; on the first n of the {n:,} "
        "held (the target scale is 9,900"
        + ("" if n >= 9900 else f"; this run held only {n:,}")
        + "), each session asks the agent for a stream of 40-byte DATA frames, "
        f"10 per second, for {ai_dur:.0f} s, as a model streaming tokens does "
        "(the requests are spread over one 100 ms period, so the streams' "
        "phases are spread evenly; about 100,000 frames/s at 9,900 sessions). "
        "The load generator acknowledges as SPEC §4 asks of a client — within "
        "100 ms of a DATA frame, at least every 32 frames — so at 10 frames/s "
        "about one ACK per token travels back through the relay to the agent. "
        "*Latency* is delivery: from the agent's write (a `time.monotonic_ns()` "
        "stamp in the token) to the load generator's read of it, one clock, "
        "one host. *Agent late* is how far behind its schedule the agent wrote "
        "(it shares core 1 with the load generator: a high value means core 1, "
        "not the server, was short of CPU). *Not delivered within 5 s* counts "
        "tokens still missing 5 s after a step's last was due; after the last "
        f"step the load generator waited 10 s more: "
        f"{sc.get('final', {}).get('lost', 0)} tokens never arrived, "
        f"{sc.get('final', {}).get('bad', 0)} arrived damaged or out of order. "
        "CPU µs/token is the server's CPU time per token delivered (the token "
        "and its share of ACKs).\n",
        md_table(ai_head, ai_rows_, "rrrrrrrrrrrrrrrl"),
        "The same load through every peer (the same load generator, the same "
        "agent, the same steps on a relay holding the same number of idle "
        "sessions). The WebSocket clients send no ACKs (WebSocket has none; the "
        "WebSocket relays acknowledge the agent themselves), so each token costs "
        "them one frame less than it costs clawtermd and the raw relays. ✗ marks "
        "a step that missed the target.\n",
        md_table(ai_p_head, ai_p_rows, "l" + "r" * (len(ai_p_head) - 1)),
        "![AI-agent load](img/bench-ai-load.png)\n",
        "## 3. Scale\n",
        f"A fresh clawtermd; {n:,} sessions opened (TCP + TLS 1.3 + CONNECT/ACCEPT, "
        f"{sc['ramp']['failures']} failures) by one load generator, 48 handshakes "
        f"in flight (the daemon's default limit is 64 per source address): "
        f"**{sc['ramp']['per_second']:,.0f} new sessions/s** "
        f"({sc['ramp']['seconds']:.1f} s; during the ramp the daemon used "
        f"{sc['ramp'].get('server_cpu', 0):.0%} of its core, the load generator "
        f"{sc['ramp'].get('loadgen_cpu', 0):.0%} and the agent "
        f"{sc['ramp'].get('agent_cpu', 0):.0%} of theirs). Daemon RSS (VmRSS) "
        f"{sc['rss_before'] / 2**20:.1f} MiB before, "
        f"{sc.get('rss_held', 0) / 2**20:.1f} MiB with the sessions idle for 2 s: "
        f"**{sc['rss_per_session'] / 1024:.1f} KiB per idle session**. File "
        "descriptors: the daemon holds 2 per session, the load generator and the "
        "agent 1 each (limit 20,000 per process). "
        + gc_sentence(sc.get("gc", {}))
        + " The peers, ramped the same way "
        "before their AI-agent load (their RSS growth over the ramp, after the "
        "throughput scenarios had already run in them):\n",
        md_table(sc_head, sc_rows, "lrrr"),
        "**Busy sessions.** Idle RSS is not the whole cost: a session that has "
        "carried traffic keeps its replay ring's scrollback (up to 256 KiB, by "
        "design: it is what a RESUME from a new device replays) and whatever its "
        "TLS buffers grew to. For each payload size a fresh daemon held the "
        "sessions idle (RSS read), every session echoed frames for a second, then "
        "all sat idle for 2 s (RSS read again):\n",
        md_table(busy_head, busy_rows_, "rrrrrr"),
        "## 4. Resume\n",
        f"A session's ring filled to exactly 256 KiB ({rz['frames']} DATA frames of "
        f"4,081 B payload = {rz['ring_bytes']:,} B encoded) while suspended: the "
        "client sends the 64 frames and SUSPEND in one write without reading, the "
        "agent's echoes land in the ring (checked on `clawterm_frames_total`), "
        "then a new TCP + TLS connection sends RESUME with last_rx_seq 0. Time "
        f"from opening that connection to the last replayed byte, {rz['reps']} "
        f"repetitions: median {rz['total_ms']['p50']:.2f} ms, max "
        f"{rz['total_ms']['max']:.2f} ms; of which TCP + TLS handshake median "
        f"{rz['handshake_ms']['p50']:.2f} ms and RESUME → last byte median "
        f"{rz['replay_ms']['p50']:.2f} ms. Every replayed frame is CRC-checked and "
        "compared.\n",
        "## 5. Wire overhead\n",
        "Computed from the framing rules, not measured: ClawTerm 15 B per frame; "
        "WebSocket 2 B header up to 125 B payload, 4 B up to 65,535 B, plus the "
        "4 B mask client→server; HTTP/1.1 chunked: hex length + CRLF + payload + "
        "CRLF. TLS record overhead (about 22 B per record in TLS 1.3) comes on "
        "top of all three and depends on how writes are batched.\n",
        md_table(ov_head, ov_rows),
        "![overhead](img/bench-overhead.png)\n",
        "## Peers\n",
        "- **pass-through relay** (`bench/relays.py passthrough`): TLS terminate "
        "and copy bytes to and from the agent's Unix socket, no parsing — the "
        "Python floor for any relay on this stack. The load generator speaks "
        "ClawTerm frames through it.\n"
        "- **websockets relay** (`websockets` asyncio server): one binary message "
        "↔ one ClawTerm DATA frame to and from the same agent (the relay sends "
        "CONNECT and waits for ACCEPT per connection); no ring, no SEQ checks, "
        "agent ACKs dropped.\n"
        "- **picows relay**: the same on `picows` callbacks.\n"
        "- For the WebSocket peers the load generator sends masked binary messages "
        "with mask key 0 (legal on the wire; saves the client the XOR, the server "
        "still unmasks) carrying the same payloads.\n"
        + (
            f"- **haproxy** ({hap}): TCP mode, one thread, TLS 1.3 terminated with "
            "the daemon's certificate, bytes spliced to the agent's Unix socket — an "
            "epoll relay in C with no protocol: the limit a relay can approach here. "
            "The load generator speaks ClawTerm frames through it.\n"
            if hap
            else "- **haproxy**: not measured — not installed (`./dev bench` installs "
            "it with apt when run as root).\n"
        ),
    ]
    return "\n".join(parts)


def write(res: dict[str, Any], out: Path, command: str) -> None:
    codec, extra = kept_sections(out)
    img = out.parent / "img"
    plots(res, img)
    out.write_text(markdown(res, codec, command) + "".join("\n" + e for e in extra))


__all__ = ["ROOT", "print_tables", "write"]
