#!/usr/bin/env python3
"""Rebuild the container image's Python environment outside Docker and size it.

The final stage of the ``Dockerfile`` is ``python:3.11-slim`` plus one thing:
the venv ``/opt/clawterm`` that the builder stage makes. This script makes the
same venv in a scratch folder with the same two pip commands, from the local
checkout, and reports what it holds on disk: the total, the share that is
compiled bytecode, and each installed distribution, largest first. It ends
with one line that the deployment and benchmark docs can quote.

What it runs (``PY`` is the interpreter running this script)::

    PY -m pip wheel --wheel-dir WORK/wheels REPO
    PY -m venv --without-pip WORK/opt/clawterm
    PY -m pip --python WORK/opt/clawterm/bin/python install \\
        --no-index --find-links WORK/wheels WORK/wheels/clawterm-*.whl
    find WORK/opt/clawterm -name '*.so' -type f -exec strip --strip-debug {} +

The first command reaches the package index (runtime dependencies and the
build backend); the rest is offline. No extras are installed: no test, bench
or dev tools. Bytecode is compiled, as pip does by default and as the image
must (its root filesystem is read-only in Kubernetes, so Python could never
write its bytecode cache there). Without binutils' ``strip`` the last step is
skipped with a warning and the report says so.

Usage::

    python3 deploy/image_env.py [--repo .] [--workdir DIR] [--keep] [--json]

Standard library only, so that it runs on any machine with Python and pip.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "INSTALL_FLAGS",
    "STRIP_CMD",
    "VENV_PATH",
    "DistSize",
    "EnvReport",
    "build_env",
    "main",
    "measure",
    "quote_line",
    "strip_env",
]

#: Where the Dockerfile puts the venv; the scratch copy mirrors the path.
VENV_PATH = "opt/clawterm"
#: The flags of the Dockerfile's install command (checked by tests/deploy).
INSTALL_FLAGS = ("--no-index", "--find-links")
#: How the Dockerfile strips extension modules (checked by tests/deploy).
STRIP_CMD = ("strip", "--strip-debug")
#: The Python minor version of the image (python:3.11-slim).
IMAGE_PYTHON = (3, 11)

MIB = 1024 * 1024


@dataclass
class DistSize:
    """Size of one installed distribution (or of the venv's own files)."""

    #: Distribution name as in its METADATA (or a bracketed group name).
    name: str
    #: Its version ("" for groups).
    version: str
    #: Top-level import names it installs.
    top_level: list[str]
    #: Bytes allocated on disk (st_blocks * 512), hard links counted once.
    disk: int = 0
    #: Sum of file sizes (what a tar layer holds before compression).
    apparent: int = 0
    #: Number of files.
    files: int = 0


@dataclass
class EnvReport:
    """What :func:`measure` found in a venv."""

    #: The venv measured.
    root: str
    #: Bytes allocated on disk, hard links counted once.
    disk: int = 0
    #: Sum of file sizes.
    apparent: int = 0
    #: Number of files (symbolic links included).
    files: int = 0
    #: Bytes on disk taken by compiled bytecode (.pyc).
    bytecode_disk: int = 0
    #: Whether debug symbols were stripped from extension modules, as in the image.
    stripped: bool = True
    #: Per distribution, largest on disk first.
    dists: list[DistSize] = field(default_factory=list)


def _files(root: Path) -> Iterator[Path]:
    """Every non-directory entry under ``root``; symbolic links are not followed."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in filenames:
            yield base / name
        # os.walk lists symbolic links to directories among dirnames: count
        # them as entries, never descend into them.
        for name in dirnames:
            if (base / name).is_symlink():
                yield base / name


def _metadata(dist_info: Path) -> tuple[str, str]:
    name, version = dist_info.name.removesuffix(".dist-info"), ""
    meta = dist_info / "METADATA"
    if meta.is_file():
        for line in meta.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line:
                break  # end of the headers
            key, _, value = line.partition(":")
            if key == "Name":
                name = value.strip()
            elif key == "Version":
                version = value.strip()
    return name, version


def _record(dist_info: Path, site: Path) -> list[Path]:
    record = dist_info / "RECORD"
    if not record.is_file():
        return []
    with record.open(newline="", encoding="utf-8") as f:
        return [Path(os.path.normpath(site / row[0])) for row in csv.reader(f) if row]


def _top_level(dist_info: Path, owned: list[Path], site: Path) -> list[str]:
    top = dist_info / "top_level.txt"
    if top.is_file():
        names = [n.strip() for n in top.read_text(encoding="utf-8").splitlines() if n.strip()]
        if names:
            return sorted(names)
    found: set[str] = set()
    for path in owned:
        try:
            first = path.relative_to(site).parts[0]
        except ValueError:
            continue  # outside site-packages, e.g. bin/ scripts
        if first.endswith((".dist-info", ".libs")) or first == "__pycache__":
            continue
        found.add(first.split(".")[0])
    return sorted(found)


def measure(venv: Path) -> EnvReport:
    """Measure the venv at ``venv``: totals, bytecode, and each distribution.

    Files are attributed to distributions through their ``RECORD`` files;
    whatever no RECORD lists (the interpreter links, ``pyvenv.cfg``, stray
    caches) is reported as ``[venv]``.
    """
    venv = venv.absolute()
    report = EnvReport(root=str(venv))
    owner: dict[Path, DistSize] = {}
    dists: list[DistSize] = []
    for site in sorted(venv.glob("lib/python3*/site-packages")):
        for dist_info in sorted(site.glob("*.dist-info")):
            name, version = _metadata(dist_info)
            owned = _record(dist_info, site)
            # Everything inside the .dist-info belongs to it even if RECORD
            # omits it (INSTALLER, REQUESTED, direct_url.json).
            owned += [p for p in dist_info.rglob("*") if not p.is_dir()]
            dist = DistSize(name, version, _top_level(dist_info, owned, site))
            dists.append(dist)
            for path in owned:
                owner.setdefault(path, dist)
    rest = DistSize("[venv]", "", [])

    seen: set[tuple[int, int]] = set()
    for path in _files(venv):
        st = path.lstat()
        report.files += 1
        dist = owner.get(Path(os.path.normpath(path)), rest)
        dist.files += 1
        if (st.st_dev, st.st_ino) in seen:
            continue  # a hard link to a file already counted
        seen.add((st.st_dev, st.st_ino))
        disk = st.st_blocks * 512
        report.disk += disk
        report.apparent += st.st_size
        dist.disk += disk
        dist.apparent += st.st_size
        if path.suffix == ".pyc":
            report.bytecode_disk += disk

    report.dists = sorted(
        (d for d in [*dists, rest] if d.files), key=lambda d: (-d.disk, d.name.lower())
    )
    return report


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


def quote_line(report: EnvReport) -> str:
    """The one-line summary the docs quote."""
    n = sum(1 for d in report.dists if d.name != "[venv]")
    return (
        f"clawterm image venv (/{VENV_PATH}): {_mib(report.disk)} on disk, "
        f"{_mib(report.apparent)} apparent, {report.files} files, {n} distributions, "
        f"bytecode {_mib(report.bytecode_disk)}"
        f"{'' if report.stripped else ', NOT stripped (the image is)'}; "
        f"python {platform.python_version()} {sys.platform}-{platform.machine()}"
    )


def format_report(report: EnvReport) -> str:
    """A table of the distributions, largest first, then the quotable line."""
    rows = [f"{'distribution':<28} {'version':<16} {'on disk':>11} {'share':>6} {'files':>6}"]
    for d in report.dists:
        share = 100 * d.disk / report.disk if report.disk else 0.0
        label = d.name
        if d.top_level and d.top_level != [d.name.lower().replace("-", "_")]:
            label += f" ({', '.join(d.top_level)})"
        rows.append(
            f"{label[:28]:<28} {d.version[:16]:<16} {_mib(d.disk):>11} {share:>5.1f}% {d.files:>6}"
        )
    rows.append(f"{'total':<28} {'':<16} {_mib(report.disk):>11} {100.0:>5.1f}% {report.files:>6}")
    rows.append("")
    rows.append(quote_line(report))
    return "\n".join(rows)


def _run(cmd: Sequence[str | os.PathLike[str]], quiet: bool) -> None:
    shown = " ".join(str(c) for c in cmd)
    print(f"+ {shown}", file=sys.stderr)
    out = subprocess.DEVNULL if quiet else None
    subprocess.run([str(c) for c in cmd], check=True, stdout=out)


def build_env(repo: Path, work: Path, python: str = sys.executable, quiet: bool = True) -> Path:
    """Build the image's venv from ``repo`` under ``work``; return the venv path.

    The same commands as the Dockerfile's builder stage (see the module
    docstring). Raises :class:`subprocess.CalledProcessError` if one fails.
    """
    wheels = work / "wheels"
    venv = work / VENV_PATH
    if venv.exists():
        shutil.rmtree(venv)
    pip = [python, "-m", "pip", *(["--quiet"] if quiet else [])]
    _run([*pip, "wheel", "--wheel-dir", wheels, repo], quiet)
    project = sorted(wheels.glob("clawterm-*.whl"))
    if len(project) != 1:
        raise SystemExit(f"expected one clawterm wheel in {wheels}, found {project}")
    _run([python, "-m", "venv", "--without-pip", venv], quiet)
    _run(
        [*pip, "--python", venv / "bin" / "python", "install", *INSTALL_FLAGS, wheels, project[0]],
        quiet,
    )
    return venv


def strip_env(venv: Path) -> bool:
    """Strip debug symbols from the venv's extension modules, as the image does.

    Returns False (and changes nothing) if ``strip`` is not installed.
    """
    if shutil.which(STRIP_CMD[0]) is None:
        print(
            "warning: strip (binutils) not found: extension modules left unstripped",
            file=sys.stderr,
        )
        return False
    objects = sorted(p for p in venv.rglob("*.so") if p.is_file() and not p.is_symlink())
    if objects:
        _run([*STRIP_CMD, *objects], quiet=True)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repo",
        type=Path,
        default=Path(__file__).resolve().parent.parent,
        help="project checkout to build (default: this script's repository)",
    )
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs pip")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--verbose", action="store_true", help="show pip's output")
    parser.add_argument(
        "--no-strip", action="store_true", help="keep debug symbols (the image strips them)"
    )
    parser.add_argument(
        "--measure-only",
        type=Path,
        metavar="VENV",
        help="measure an existing venv instead of building one",
    )
    args = parser.parse_args(argv)

    started = time.monotonic()
    work: Path | None = None
    stripped = True
    try:
        if args.measure_only is not None:
            venv = args.measure_only
        else:
            if sys.version_info[:2] != IMAGE_PYTHON:
                print(
                    f"warning: the image runs Python {IMAGE_PYTHON[0]}.{IMAGE_PYTHON[1]}, "
                    f"this is {platform.python_version()}: sizes will differ",
                    file=sys.stderr,
                )
            work = args.workdir or Path(tempfile.mkdtemp(prefix="clawterm-image-env-"))
            work.mkdir(parents=True, exist_ok=True)
            venv = build_env(args.repo.resolve(), work.resolve(), args.python, not args.verbose)
            stripped = not args.no_strip and strip_env(venv)
        report = measure(venv)
        report.stripped = stripped
    finally:
        if work is not None and not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        elif work is not None:
            print(f"scratch folder kept: {work}", file=sys.stderr)

    if args.json:
        print(json.dumps({**asdict(report), "summary": quote_line(report)}, indent=2))
    else:
        print(format_report(report))
    print(f"(measured in {time.monotonic() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
