"""``python -m bench``: the benchmark suite (bounded: < 10 min; ``--quick`` ~1 min).

Runs every scenario of :mod:`bench.suite` through a real clawtermd and the
peer relays, prints the tables, and rewrites docs/benchmarks.md (keeping its
hand-written codec section) with plots in docs/img/. The codec benchmark
itself stays ``python -m bench.codec``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.common import ROOT
from bench.report import print_tables, write
from bench.suite import AGENT, MODES, run_suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about one minute, smaller sizes")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "benchmarks.md", help="report to write"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--json", type=Path, help="also save the raw results here")
    parser.add_argument(
        "--agent",
        choices=["lean", "sdk"],
        default="lean",
        help="echo agent: bench/agent.py (default) or clawterm-agent echo",
    )
    args = parser.parse_args(argv)
    mode = MODES["quick" if args.quick else "full"]
    AGENT[0] = args.agent
    results = run_suite(mode)
    print_tables(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if not args.no_write:
        command = "python -m bench" + (" --quick" if args.quick else "")
        command += " --agent sdk" if args.agent == "sdk" else ""
        write(results, args.out, command)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
