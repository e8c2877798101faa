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
from bench.suite import MODES, SYSTEMS, run_suite

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


def test_latency_no_loss(results: dict[str, Any]) -> None:
    for r in results["latency"]:
        assert r["late"] == 0 and r["bad"] == 0, r
        assert r["rtt_ms"]["p50"] > 0, r


def test_scale_and_ai_load(results: dict[str, Any]) -> None:
    sc = results["scale"]
    assert sc["ramp"]["sessions"] == MODES["smoke"].scale_sessions
    assert [s["sessions"] for s in sc["steps"]] == MODES["smoke"].ai_steps
    for step in sc["steps"]:
        assert step["late"] == 0 and step["bad"] == 0 and step["errors"] == [], step
    assert sc["final"] == {"lost": 0, "bad": 0, "errors": []}
    assert sc["rss_held"] > 0


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
    codec = "## Codec (bench/codec.py)\n\nedited by hand\n"
    note = "## Analysis (hand-written)\n\nkept\n"
    out.write_text(first.replace("## Codec (bench/codec.py)", codec + "\n## Old codec") + note)
    write(results, out, "smoke")
    second = out.read_text()
    assert "edited by hand" in second and second.count("## Codec") == 1
    assert second.rstrip().endswith("kept")
