"""deploy/clawtermd.service and deploy/clawtermd.env against the contract."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .kube import REPO, contract, option_values

UNIT = REPO / "deploy" / "clawtermd.service"
ENV_FILE = REPO / "deploy" / "clawtermd.env"


def directives() -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (systemd allows a key more than once)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key, []).append(value)
    return out


def one(key: str) -> str:
    values = directives()["Service"][key]
    assert len(values) == 1, key
    return values[0]


def test_required_directives() -> None:
    expected = {
        "StateDirectory": "clawterm",
        "RuntimeDirectory": "claw/sockets",
        "RuntimeDirectoryPreserve": "yes",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "Restart": "on-failure",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "User": "clawterm",
    }
    for key, value in expected.items():
        assert one(key) == value, key
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert set(one("RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert directives()["Install"]["WantedBy"] == ["multi-user.target"]


def test_exec_start_uses_contract_options() -> None:
    argv = shlex.split(one("ExecStart"))
    assert argv[0].endswith("/bin/clawtermd")
    opts = option_values(argv[1:])
    known = {n for o in contract().daemon for n in o.names}
    assert set(opts) <= known
    # The socket dir is the runtime directory the unit creates (%t is /run).
    socket_dir = opts.get("-s") or opts.get("--socket-dir")
    assert socket_dir == "%t/" + one("RuntimeDirectory")
    assert socket_dir.replace("%t", "/run") == contract().daemon_option("-s").default


def test_environment_names_are_in_contract() -> None:
    names = {v.split("=", 1)[0] for v in directives()["Service"].get("Environment", [])}
    assert names == {"CLAWTERM_STATE_DIR"}
    assert one("Environment") == "CLAWTERM_STATE_DIR=%S/" + one("StateDirectory")
    env_names = set(re.findall(r"^#?(CLAWTERM_[A-Z_]+)=", ENV_FILE.read_text(), re.M))
    assert env_names and env_names <= contract().daemon_env
    assert one("EnvironmentFile") == "-/etc/clawterm/clawtermd.env"


def test_stop_timeout_covers_shutdown() -> None:
    assert int(one("TimeoutStopSec").rstrip("s")) > 5


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own parser accepts the unit (ExecStart pointed at a real file)."""
    clawtermd = Path(sys.executable).parent / "clawtermd"
    if not clawtermd.exists():
        pytest.skip("no clawtermd console script in this environment")
    unit = tmp_path / "clawtermd.service"
    unit.write_text(UNIT.read_text().replace("/opt/clawterm/bin/clawtermd", str(clawtermd)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = [ln for ln in (result.stdout + result.stderr).splitlines() if "clawtermd" in ln]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
