"""Smoke run of the benchmark suite: every scenario once, at minimal size.

Real clawtermd, real peer relays, real TLS; the load generator checks the
CRC and content of every echo. Writes nothing under docs/.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from bench.report import print_tables, targets, write
from bench.suite import MODES, SYSTEMS, drive_procs, run_suite, start_env_daemon_only, stop_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_suite(MODES["smoke"], tmp_path_factory.mktemp("bench"))


def test_throughput_every_system_intact(results: dict[str, Any]) -> None:
    rows = results["throughput"]
    assert {r["system"] for r in rows} == set(SYSTEMS)
    for r in rows:
        assert r["frames"] > 0, r
        assert r["bad"] == 0, r
        assert r["errors"] == [], r
        assert r["failures"] == 0, r
        assert r["server_cpu"] >= 0
        assert 0 <= r["server_core_busy"] <= 1 and 0 <= r["lg_core_busy"] <= 1, r
    # /proc/stat counts in 10 ms ticks and a smoke window is 0.1 s: one row
    # can read 0 for a core that was barely busy, but not every row.
    assert sum(r["server_core_busy"] for r in rows) > 0
    assert sum(r["lg_core_busy"] for r in rows) > 0


def test_latency_no_loss(results: dict[str, Any]) -> None:
    for r in results["latency"]:
        assert r["late"] == 0 and r["bad"] == 0, r
        assert r["rtt_ms"]["p50"] > 0, r


def check_ai_load(r: dict[str, Any]) -> None:
    """Every step's tokens all arrived, in order, undamaged, with a latency."""
    mode = MODES["smoke"]
    assert r["ramp"]["sessions"] == mode.scale_sessions
    assert [s["sessions"] for s in r["steps"]] == mode.ai_steps
    for step in r["steps"]:
        assert step["late"] == 0 and step["bad"] == 0 and step["errors"] == [], step
        assert step["sent"] == step["sessions"] * round(10 * mode.ai_duration), step
        assert step["frames"] > 0 and step["latency_ms"]["p50"] > 0, step
    assert r["final"] == {"lost": 0, "bad": 0, "errors": []}
    assert r["rss_held"] > 0


def test_scale_and_ai_load(results: dict[str, Any]) -> None:
    check_ai_load(results["scale"])
    gc = results["scale"]["gc"]
    assert gc["collections"] > 0 and set(gc["over"]) >= {"1 ms", "10 ms", "100 ms"}, gc


def test_ai_load_through_every_peer(results: dict[str, Any]) -> None:
    peers = results["ai_peers"]
    assert [r["system"] for r in peers] == SYSTEMS[1:]
    for r in peers:
        check_ai_load(r)


def test_several_load_generator_processes(tmp_path: Path) -> None:
    env = start_env_daemon_only(tmp_path)
    try:
        spec = {"sessions": 4, "size": 64, "window": 4, "warmup": 0.2, "duration": 0.5}
        r = drive_procs(env, "clawtermd", {**spec, "verify": True}, 2)
    finally:
        stop_env(env)
    assert r["lg_procs"] == 2 and r["sessions"] == 4 and r["failures"] == 0
    assert r["fps"] > 0 and r["bad"] == 0 and r["lost"] == 0 and r["errors"] == [], r
    assert r["server_cpu"] > 0 and r["cpu_us_per_frame"] > 0


def test_busy_memory_rows(results: dict[str, Any]) -> None:
    rows = results["busy"]
    assert [(r["size"], r["window"]) for r in rows] == [(4096, 4), (65535, 1)]
    for r in rows:
        assert r["sessions"] == MODES["smoke"].busy_sessions and r["failures"] == 0, r
        assert r["bad"] == 0 and r["lost"] == 0 and r["errors"] == [], r
        assert r["echoed_per_session"] > 0 and r["rss_after"] > 0 and r["rss_held"] > 0, r


def test_resume_replays_full_ring(results: dict[str, Any]) -> None:
    rz = results["resume"]
    assert rz["ring_bytes"] == 256 * 1024
    assert rz["total_ms"]["p50"] > 0


def test_report_keeps_hand_written_sections(results: dict[str, Any], tmp_path: Path) -> None:
    print_tables(results)
    out = tmp_path / "benchmarks.md"
    write(results, out, "smoke")
    first = out.read_text()
    assert first.index("## Codec (bench/codec.py)") < first.index("## Targets")
    assert "| 64 | decode | 2,029,110 | 160 | 4,043,059 | 1.99 |" in first
    assert len(targets(results)) == 9
    assert (tmp_path / "img" / "bench-throughput.png").stat().st_size > 1000
    assert (tmp_path / "img" / "bench-ai-load.png").stat().st_size > 1000
    assert "The same load through every peer" in first
    codec = "## Codec (bench/codec.py)\n\nedited by hand\n"
    note = "## Analysis (hand-written)\n\nkept\n"
    out.write_text(first.replace("## Codec (bench/codec.py)", codec + "\n## Old codec") + note)
    write(results, out, "smoke")
    second = out.read_text()
    assert "edited by hand" in second and second.count("## Codec") == 1
    assert second.rstrip().endswith("kept")
