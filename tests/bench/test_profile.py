"""bench.profile: py-spy's collapsed stacks charged to layers and functions.

The parser is fed stacks in the exact shape py-spy 0.4 writes with
``--native --full-filenames --nolineno -f raw`` (taken from a real run
against clawtermd); one test samples a real daemon under load.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from bench.profile import Profile, markdown, profile_load
from bench.suite import window_for

LOOP = "/project/uvloop/loop.c"
OBJ = "/opt/_internal/cpython-3.11.15/include/python3.11/object.h"
SRC = "/work/main/src/clawterm"
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
ROOT = ";".join(
    [
        f"0x7f9c4c7ee24a ({LIBC})",
        "_run_module_as_main (<frozen runpy>)",
        f"<module> ({SRC}/daemon/__main__.py)",
        f"main ({SRC}/daemon/cli.py)",
        f"run_daemon ({SRC}/daemon/server.py)",
        f"run_forever ({LOOP})",
        "uv_run (/project/build/libuv-x86_64/src/unix/core.c)",
        f"loop_run_in_context1 ({LOOP})",
        f"Py_DECREF ({OBJ})",
    ]
)
TLS = f"TLSLayer.data_received ({SRC}/daemon/tlslayer.py)"
LEG = f"ClientProtocol.data_received ({SRC}/daemon/legs.py)"
RAW = "\n".join(
    [
        f"{ROOT};{TLS};{LEG};write ({LOOP});UVStream__try_write ({LOOP});write ({LIBC}) 40",
        f"{ROOT};{TLS};{LEG};FrameDecoder._decode ({SRC}/frame.py) 30",
        f"{ROOT};{TLS};SSLObject.read (/usr/lib/python3.11/ssl.py);"
        "0x7f09754dcd0d (/usr/lib/x86_64-linux-gnu/libcrypto.so.3) 10",
        # An inline helper from a header is charged to its caller (uvloop here).
        f"{ROOT};__Pyx_PyList_Append ({LOOP});Py_SIZE ({OBJ}) 5",
        # Recursion: one function twice on a stack counts once.
        f"{ROOT};{LEG};{LEG};read ({LIBC}) 15",
        # The loop waiting for events is not work.
        f"{ROOT};uv__io_poll (/project/build/libuv-x86_64/src/unix/linux.c);"
        f"epoll_pwait ({LIBC}) 100",
        "",
        "not a stack line",
    ]
)


def test_layers_leaves_and_inclusive_time() -> None:
    p = Profile.parse(RAW)
    assert p.samples == 100 and p.idle == 100
    assert p.layers == {
        "system call: write/send": 40,
        "ClawTerm Python": 30,
        "OpenSSL": 10,
        "uvloop and libuv": 5,
        "system call: read/recv": 15,
    }
    assert p.leaves["write (libc.so.6)"] == 40
    assert p.leaves["FrameDecoder._decode (frame.py)"] == 30
    assert p.leaves["__Pyx_PyList_Append (loop.c)"] == 5
    assert p.ours["daemon.tlslayer.TLSLayer.data_received"] == 80
    assert p.ours["daemon.legs.ClientProtocol.data_received"] == 85
    assert p.ours["frame.FrameDecoder._decode"] == 30
    # The entry point sits under every sample: it says nothing.
    assert "daemon.cli.main" not in p.ours


def test_markdown_tables() -> None:
    p = Profile.parse(RAW)
    load = {"relayed_fps": 1000.0, "server_cpu": 0.5}
    text = markdown([{"title": "T", "plain": load, "sampled": load, "profile": p, "seconds": 4.0}])
    assert "| system call: write/send | 40.0% |" in text
    assert "| `daemon.legs.ClientProtocol.data_received` | 85.0% |" in text
    assert "100 samples of the daemon at work" in text and "50% of a core" in text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_samples_a_real_daemon(tmp_path: Path) -> None:
    pyspy = shutil.which("py-spy") or Path(sys.executable).with_name("py-spy")
    assert Path(pyspy).exists(), "py-spy is a test dependency"
    if Path("/proc/sys/kernel/yama/ptrace_scope").exists():
        scope = Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip()
        if scope == "3":
            pytest.skip("the kernel forbids ptrace (yama ptrace_scope 3)")
    spec = {"sessions": 8, "size": 64, "window": window_for(64, 8), "warmup": 0.3}
    try:
        r = profile_load(tmp_path, "t", {**spec, "duration": 1.5, "verify": True})
    except RuntimeError as e:
        if "not permitted" in str(e) or "Permission denied" in str(e):
            pytest.skip(f"py-spy may not attach here: {e}")
        raise
    p = r["profile"]
    assert r["sampled"]["bad"] == 0 and r["sampled"]["frames"] > 0
    assert p.samples > 10, p
    # Shares seen at 64 B: ~55 % ClawTerm Python, ~23 % write(2); each of
    # these functions is on 35-55 % of stacks.
    assert p.layers["ClawTerm Python"] > 0 and p.layers["system call: write/send"] > 0, p
    assert p.ours["daemon.tlslayer.TLSLayer.data_received"] > 0, p
    assert p.ours["daemon.legs.AgentProtocol.data_received"] > 0, p
