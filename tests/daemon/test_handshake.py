"""Handshake and every ERROR path of SPEC §5 and §12, against a real clawtermd."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from clawterm.constants import Capability, ErrorCode, FrameType, KeepaliveFlag
from clawterm.frame import encode_frame
from clawterm.payloads import Connect, WinSize
from tests.helpers import DaemonProcess, EchoAgent, WireClient, daemon, wait_for


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with daemon(
        tmp_path_factory.mktemp("hs"),
        "--max-payload",
        "1024",
        "--handshake-timeout",
        "0.6",
        "--agent-timeout",
        "0.6",
        "--resume-failures",
        "1000",
        "--max-handshakes-per-ip",
        "1000",
    ) as proc:
        yield proc


def with_agent(d: DaemonProcess, body: Callable[[EchoAgent], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        agent = await EchoAgent(d.socket_dir, **kw).start()
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, wait_for, lambda: agent_registered(d, kw.get("tenant", 0), kw.get("agent", 1))
            )
            await body(agent)
        finally:
            await agent.stop()

    run(main())


def agent_registered(d: DaemonProcess, tenant: int, agent: int) -> bool:
    return d.metric("clawterm_agents_registered") >= 1


@pytest.mark.parametrize("size", [58, 59, 61])
def test_connect_accept_and_echo(d: DaemonProcess, size: int) -> None:
    async def body(agent: EchoAgent) -> None:
        c = await WireClient.open(d.port)
        accept = await c.connect(d.token, size=size)
        assert accept.session_id != 0 and len(accept.resume_token or b"") == 16
        assert accept.capabilities == Capability.ACK | Capability.RESUME2 | Capability.WINSIZE
        assert accept.keepalive == 30
        c.send_data(b"hello")
        assert await c.data() == b"hello"
        c.send(FrameType.WINSIZE, WinSize(40, 100).encode())
        c.send(FrameType.KEEPALIVE, flags=KeepaliveFlag.PING)
        pong = await c.expect(FrameType.KEEPALIVE)
        assert pong.flags == KeepaliveFlag.PONG
        await c.close()

    with_agent(d, body)


def test_output_sent_with_accept_reaches_the_new_client(d: DaemonProcess) -> None:
    async def body(agent: EchoAgent) -> None:
        c = await WireClient.open(d.port)
        await c.connect(d.token)
        assert await c.data() == b"welcome> "
        frame_seq = c.rx.last_rx
        assert frame_seq == 1
        await c.close()

    with_agent(d, body, prompt=b"welcome> ")


def test_accept_prefix_is_what_published_clients_read(d: DaemonProcess) -> None:
    async def body(agent: EchoAgent) -> None:
        c = await WireClient.open(d.port)
        c.send(FrameType.CONNECT, Connect(1, 0, 0, 1, d.token, os.urandom(16)).encode(), sid=0)
        frame = await c.expect(FrameType.ACCEPT)
        assert len(frame.payload) == 24
        assert int.from_bytes(frame.payload[:4], "big") == frame.session_id
        assert frame.payload[4] == 1
        await c.close()

    with_agent(d, body)


async def _refused(d: DaemonProcess, data: bytes, code: ErrorCode) -> str:
    c = await WireClient.open(d.port)
    c.send_raw(data)
    return await c.expect_error(code)


@pytest.mark.parametrize(
    ("name", "data", "code"),
    [
        ("bad-flag", b"\x7f" + bytes(20), ErrorCode.BAD_FRAME),
        ("garbage", b"GET / HTTP/1.1\r\n\r\n", ErrorCode.BAD_FRAME),
        (
            "bad-crc",
            encode_frame(FrameType.CONNECT, 0, 0, bytes(58))[:-1] + b"\x00",
            ErrorCode.BAD_CRC,
        ),
        ("oversize", encode_frame(FrameType.DATA, 0, 1, bytes(1025))[:13], ErrorCode.TOO_LARGE),
        (
            "version-2",
            encode_frame(FrameType.CONNECT, 0, 0, b"\x02" + bytes(57)),
            ErrorCode.UNSUPPORTED_VERSION,
        ),
        (
            "connect-57",
            encode_frame(FrameType.CONNECT, 0, 0, b"\x01" + bytes(56)),
            ErrorCode.BAD_PAYLOAD,
        ),
        ("data-first", encode_frame(FrameType.DATA, 0, 1, b"x"), ErrorCode.PROTOCOL),
    ],
)
def test_malformed_input_gets_its_error(
    d: DaemonProcess, name: str, data: bytes, code: ErrorCode
) -> None:
    run(_refused(d, data, code))


def test_auth_failures_share_one_error(d: DaemonProcess) -> None:
    async def body(agent: EchoAgent) -> None:
        bad = bytes(32)
        for tenant, agent_id, token in [(0, 1, bad), (5, 1, d.token)]:
            c = await WireClient.open(d.port)
            c.send(
                FrameType.CONNECT,
                Connect(1, 7, tenant, agent_id, token, os.urandom(16)).encode(),
                sid=0,
            )
            assert await c.expect_error(ErrorCode.AUTH_FAILED) == "authentication failed"

    with_agent(d, body)


def test_replayed_nonce_is_refused(d: DaemonProcess) -> None:
    async def body(agent: EchoAgent) -> None:
        nonce = os.urandom(16)
        c = await WireClient.open(d.port)
        await c.connect(d.token, nonce=nonce)
        c2 = await WireClient.open(d.port)
        c2.send(FrameType.CONNECT, Connect(1, 7, 0, 1, d.token, nonce).encode(), sid=0)
        await c2.expect_error(ErrorCode.AUTH_FAILED)
        await c.close()

    with_agent(d, body)


def test_unregistered_agent(d: DaemonProcess) -> None:
    async def main() -> None:
        c = await WireClient.open(d.port)
        c.send(FrameType.CONNECT, Connect(1, 7, 0, 999, d.token, os.urandom(16)).encode(), sid=0)
        await c.expect_error(ErrorCode.NO_SUCH_AGENT)

    run(main())


def test_agent_refuses_or_stays_silent(d: DaemonProcess) -> None:
    async def body(agent: EchoAgent) -> None:
        c = await WireClient.open(d.port)
        c.send(FrameType.CONNECT, Connect(1, 7, 0, 1, d.token, os.urandom(16)).encode(), sid=0)
        await c.expect_error(ErrorCode.AGENT_REFUSED)

    with_agent(d, body, refuse=True)
    with_agent(d, body, silent=True)


@pytest.mark.parametrize("flag", ["--max-sessions-per-tenant", "--max-sessions"])
def test_session_limits(tmp_path: Path, flag: str) -> None:
    with daemon(tmp_path, flag, "3") as d:
        _session_limit(d)


def _session_limit(d: DaemonProcess) -> None:
    async def body(agent: EchoAgent) -> None:
        clients = []
        for _ in range(3):
            c = await WireClient.open(d.port)
            await c.connect(d.token)
            clients.append(c)
        c = await WireClient.open(d.port)
        c.send(FrameType.CONNECT, Connect(1, 7, 0, 1, d.token, os.urandom(16)).encode(), sid=0)
        await c.expect_error(ErrorCode.LIMIT)
        for c in clients:  # DISCONNECT frees the sessions for the next tests
            c.send(FrameType.DISCONNECT)
            await c.expect_closed()

    with_agent(d, body)


def test_wrong_session_id_after_accept(d: DaemonProcess) -> None:
    async def body(agent: EchoAgent) -> None:
        c = await WireClient.open(d.port)
        await c.connect(d.token)
        c.send(FrameType.DATA, b"x", seq=1, sid=c.session_id ^ 1)
        await c.expect_error(ErrorCode.PROTOCOL)

    with_agent(d, body)


def test_handshake_timeout(d: DaemonProcess) -> None:
    async def main() -> None:
        c = await WireClient.open(d.port)
        await c.expect_error(ErrorCode.TIMEOUT, timeout=5)

    run(main())


def test_tls12_refused(d: DaemonProcess) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection((d.host, d.port), timeout=5) as raw:
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(raw, server_hostname="localhost")


def test_one_bad_client_disturbs_no_other_session(d: DaemonProcess) -> None:
    async def body(agent: EchoAgent) -> None:
        good = await WireClient.open(d.port)
        await good.connect(d.token)
        for data, code in (
            (b"\x00" * 100, ErrorCode.BAD_FRAME),
            (encode_frame(FrameType.DATA, 0, 1, bytes(1025)), ErrorCode.TOO_LARGE),
        ):
            bad = await WireClient.open(d.port)
            bad.send_raw(data)
            await bad.expect_error(code)
        good.send_data(b"still here")
        assert await good.data() == b"still here"
        await good.close()

    with_agent(d, body)


def test_token_file_reload_on_sighup(tmp_path: Path) -> None:
    with daemon(tmp_path) as d:
        result = d.dir / "new-token"
        import subprocess
        import sys

        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "clawterm.daemon",
                "--state-dir",
                str(d.state_dir),
                "token",
                "new",
                "--tenant",
                "7",
                "--agents",
                "3",
                "--label",
                "reload",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        token = bytes.fromhex(out.stdout.strip())
        result.write_text(out.stdout)

        async def attempt() -> ErrorCode | None:
            agent = await EchoAgent(d.socket_dir, tenant=7, agent=3).start()
            try:
                await asyncio.sleep(0.3)
                c = await WireClient.open(d.port)
                c.send(
                    FrameType.CONNECT, Connect(1, 7, 7, 3, token, os.urandom(16)).encode(), sid=0
                )
                frame = await c.read_frame()
                await c.close()
                return None if frame.type == FrameType.ACCEPT else ErrorCode.AUTH_FAILED
            finally:
                await agent.stop()

        assert run(attempt()) is ErrorCode.AUTH_FAILED  # not loaded yet
        d.kill(signal.SIGHUP) if False else os.kill(d.pid, signal.SIGHUP)
        wait_for(lambda: "token file reloaded" in d.log())
        assert run(attempt()) is None


def test_handshakes_per_ip_limit(tmp_path: Path) -> None:
    with daemon(tmp_path, "--max-handshakes-per-ip", "2") as d:

        async def main() -> None:
            held = [await WireClient.open(d.port) for _ in range(2)]
            extra = await WireClient.open(d.port)
            await extra.expect_error(ErrorCode.LIMIT)
            for c in held:
                await c.close()

        run(main())
