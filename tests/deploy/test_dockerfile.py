"""The Dockerfile's shape: stages, what the final images hold and run.

No image is built (no Docker engine on test machines); hadolint runs in
test_lint.py. deploy/image_env.py rebuilds the builder stage's venv and is
held to the same pip and strip commands here.
"""

from __future__ import annotations

import re

from .kube import REPO, contract, dockerfile, image_uid_gid
from .test_image_env import image_env

COMPILERS = re.compile(r"\b(gcc|g\+\+|cc|clang|make|build-essential|binutils|libc6-dev)\b")


def test_stages() -> None:
    df = dockerfile()
    assert [s.name for s in df.stages] == ["builder", "runtime", "agent", "daemon"]
    assert df.stage(None).name == "daemon", "a plain `docker build` makes the daemon image"
    assert df.targets == {"clawtermd": "", "clawterm-agent": "agent"}
    for s in df.stages:
        assert s.base.startswith(("python:3.11-slim", "runtime")), s.base


def test_final_stages_hold_no_build_tools() -> None:
    df = dockerfile()
    for s in df.stages[1:]:
        # Built from the slim base (through runtime), never from the builder.
        root = s
        while root.parent is not None:
            root = root.parent
        assert root.name == "runtime" and root.base.startswith("python:3.11-slim"), s.name
        for run in s.runs:
            assert "apt-get install" not in run and not COMPILERS.search(run), run
            assert "pip install" not in run, run
    runtime = df.stage("runtime")
    # Only the venv crosses over from the builder.
    from_builder = [c for c in runtime.copies if "--from=builder" in c]
    assert from_builder == ["--from=builder /opt/clawterm /opt/clawterm"]
    assert any("pip uninstall" in r and "setuptools" in r for r in runtime.runs)


def test_non_root_user() -> None:
    df = dockerfile()
    for name in ("runtime", "agent", "daemon"):
        uid, gid = image_uid_gid(df.stage(name))
        assert uid >= 10000 and gid >= 10000, name
    # groupadd/useradd and the directories get the same numbers as USER.
    uid, gid = image_uid_gid(df.stage("runtime"))
    setup = " ".join(df.stage("runtime").runs)
    assert f"groupadd --system --gid {gid} " in setup
    assert f"useradd --system --uid {uid} " in setup
    assert setup.count(f"install -d -o {uid} -g {gid} ") == 2


def test_daemon_entrypoint_uses_seed_defaults() -> None:
    s = dockerfile().stage("daemon")
    assert s.entrypoint == ["clawtermd"]
    assert s.cmd == ["-p", "7220", "-s", "/run/claw/sockets"]
    c = contract()
    assert s.cmd[1] == c.daemon_option("-p").default
    assert s.cmd[3] == c.daemon_option("-s").default
    assert set(s.expose) == {"7220/tcp", "7221/udp", "9720/tcp"}
    assert s.env["CLAWTERM_STATE_DIR"] == "/var/lib/clawterm"
    assert "/opt/clawterm/bin" in s.env["PATH"].split(":")


def test_agent_target_runs_demo() -> None:
    s = dockerfile().stage("agent")
    assert s.entrypoint == ["clawterm-agent"]
    assert s.cmd == ["demo"] and s.cmd[0] in contract().agent_modes


def test_image_env_mirrors_the_builder() -> None:
    """deploy/image_env.py measures what the builder stage makes."""
    mod = image_env()
    builder = " ".join(dockerfile().stage("builder").runs)
    assert "pip wheel --wheel-dir /wheels ." in builder
    assert "python -m venv --without-pip /opt/clawterm" in builder
    install = re.search(r"pip --python /opt/clawterm/bin/python install ([^&]*)", builder)
    assert install is not None
    flags = [w for w in install.group(1).split() if w.startswith("-")]
    assert tuple(flags) == mod.INSTALL_FLAGS
    assert "--no-compile" not in builder  # bytecode is compiled in both
    assert f"-exec {' '.join(mod.STRIP_CMD)} {{}} +" in builder
    assert f"/{mod.VENV_PATH}" == "/opt/clawterm"


def test_dockerignore_is_an_allow_list() -> None:
    lines = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*"
    admitted = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert {"pyproject.toml", "src"} <= admitted
    assert not admitted & {".git", ".venv", "tests", "bench", "fuzz", "k8s", "deploy"}
