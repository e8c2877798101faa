"""deploy/image_env.py: stdlib only, and its size accounting on a made-up venv.

Building the real environment needs the package index, so the tests only
measure a small venv-shaped tree whose sizes they know.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

from .kube import REPO

SCRIPT = REPO / "deploy" / "image_env.py"


@cache
def image_env() -> ModuleType:
    spec = importlib.util.spec_from_file_location("clawterm_image_env", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_standard_library_only() -> None:
    tree = ast.parse(SCRIPT.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names or top == "__future__", name


def test_help_runs_without_site_packages() -> None:
    # -I -S: no site-packages at all, so a third-party import would fail.
    out = subprocess.run(
        [sys.executable, "-I", "-S", str(SCRIPT), "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert "--workdir" in out.stdout and "--json" in out.stdout


def write(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


def fake_venv(root: Path) -> Path:
    """A venv-shaped tree: two distributions, a hard link, the lib64 symlink."""
    venv = root / "opt" / "clawterm"
    site = venv / "lib" / "python3.11" / "site-packages"
    write(venv / "pyvenv.cfg", 100)
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to("/usr/local/bin/python3.11")
    (venv / "lib64").symlink_to("lib")  # must not be walked twice

    # "big": 200 KiB extension + 50 KiB bytecode + a console script in bin/.
    write(site / "big" / "__init__.py", 1000)
    write(site / "big" / "_speed.so", 200 * 1024)
    write(site / "big" / "__pycache__" / "__init__.cpython-311.pyc", 50 * 1024)
    write(venv / "bin" / "big-tool", 300)
    dist = site / "big-2.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: Big\nVersion: 2.0\n\nbody\n")
    (dist / "top_level.txt").write_text("big\n")
    (dist / "INSTALLER").write_text("pip\n")  # not listed in RECORD, still Big's
    (dist / "RECORD").write_text(
        "big/__init__.py,,\nbig/_speed.so,,\nbig/__pycache__/__init__.cpython-311.pyc,,\n"
        "../../../bin/big-tool,,\nbig-2.0.dist-info/METADATA,,\nbig-2.0.dist-info/RECORD,,\n"
    )

    # "small": one module, plus a hard link to it that must count once.
    write(site / "small.py", 5000)
    os.link(site / "small.py", site / "small_alias.py")
    dist = site / "small-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Name: small\nVersion: 1.0\n")
    (dist / "RECORD").write_text("small.py,,\nsmall_alias.py,,\nsmall-1.0.dist-info/RECORD,,\n")
    return venv


def test_measure(tmp_path: Path) -> None:
    mod = image_env()
    venv = fake_venv(tmp_path)
    report = mod.measure(venv)
    by_name = {d.name: d for d in report.dists}
    assert list(by_name) == ["Big", "small", "[venv]"], "largest first, the rest last"

    big, small, rest = by_name["Big"], by_name["small"], by_name["[venv]"]
    assert big.version == "2.0" and big.top_level == ["big"]
    assert big.files == 8  # 3 in the package, bin/big-tool, 4 in the dist-info
    assert big.apparent >= 1000 + 200 * 1024 + 50 * 1024 + 300
    assert small.top_level == ["small", "small_alias"]
    assert small.files == 4 and small.apparent < 5000 + 200  # hard link counted once
    # pyvenv.cfg, bin/python and the lib64 link: counted, not followed.
    assert rest.files == 3

    assert report.files == big.files + small.files + rest.files
    assert report.apparent == sum(d.apparent for d in report.dists)
    assert report.disk == sum(d.disk for d in report.dists)
    pyc = venv / "lib/python3.11/site-packages/big/__pycache__/__init__.cpython-311.pyc"
    assert report.bytecode_disk == pyc.stat().st_blocks * 512

    line = mod.quote_line(report)
    assert line.startswith("clawterm image venv (/opt/clawterm): ")
    assert "MiB on disk" in line and "2 distributions" in line and "python 3." in line


def test_main_measure_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mod = image_env()
    venv = fake_venv(tmp_path)
    assert mod.main(["--measure-only", str(venv)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["distribution", "version"]
    assert lines[1].startswith("Big") and lines[-1].startswith("clawterm image venv")
    assert mod.main(["--measure-only", str(venv), "--json"]) == 0
    assert '"summary": "clawterm image venv' in capsys.readouterr().out


def test_unstripped_build_is_flagged(tmp_path: Path) -> None:
    mod = image_env()
    report = mod.measure(fake_venv(tmp_path))
    report.stripped = False
    assert "NOT stripped" in mod.quote_line(report)
