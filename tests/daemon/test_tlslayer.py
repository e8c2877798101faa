"""TLSLayer: TLS 1.3 over a plain uvloop TCP transport, real sockets end to end."""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from clawterm.daemon.tls import ALPN, ensure_certificate, server_context
from clawterm.daemon.tlslayer import CHUNK, TLSLayer


class App(asyncio.Protocol):
    """Records what the layer tells it; echoes unless told not to."""

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self.transport: Any = None
        self.received = bytearray()
        self.events: list[str] = []
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.paused = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("made")
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data
        if self.echo:
            self.transport.write(data)

    def eof_received(self) -> bool | None:
        self.events.append("eof")
        return None

    def pause_writing(self) -> None:
        self.paused += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    state = tmp_path_factory.mktemp("tls")
    state.chmod(0o700)
    cert, key, _ = ensure_certificate(state)
    return server_context(cert, key)


def client_context(**kw: Any) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([ALPN])
    for name, value in kw.items():
        setattr(ctx, name, value)
    return ctx


def on_uvloop(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run the test body on uvloop, the daemon's loop."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        uvloop.run(asyncio.wait_for(test(*args, **kwargs), 30))

    return run


async def serve(
    context: ssl.SSLContext, apps: list[App], timeout: float = 5.0, echo: bool = True
) -> tuple[asyncio.AbstractServer, int]:
    def factory() -> TLSLayer:
        app = App(echo)
        apps.append(app)
        return TLSLayer(app, context, timeout)

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@on_uvloop
async def test_echo_small_and_large_intact(context: ssl.SSLContext) -> None:
    apps: list[App] = []
    server, port = await serve(context, apps)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_context(), server_hostname="localhost"
    )
    tls = writer.get_extra_info("ssl_object")
    assert tls.version() == "TLSv1.3" and tls.selected_alpn_protocol() == ALPN
    writer.write(b"hello")
    assert await reader.readexactly(5) == b"hello"
    # Bigger than a read, a record and a CHUNK: split and joined correctly.
    big = os.urandom(3 * 1024 * 1024 + 7)
    writer.write(big)
    assert await reader.readexactly(len(big)) == big
    app = apps[0]
    assert app.events == ["made"] and bytes(app.received) == b"hello" + big
    layer = app.transport
    assert layer.get_extra_info("ssl_object").version() == "TLSv1.3"
    assert layer.get_extra_info("peername")[0] == "127.0.0.1"
    assert layer.get_extra_info("cipher")[1] == "TLSv1.3"
    assert not layer.is_closing() and layer.get_write_buffer_size() == 0
    writer.close()
    await app.lost
    server.close()


@on_uvloop
async def test_tls12_refused_app_never_sees_it(context: ssl.SSLContext) -> None:
    apps: list[App] = []
    server, port = await serve(context, apps)
    ctx = client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
    await asyncio.sleep(0.05)
    assert apps and apps[0].events == []
    server.close()


@on_uvloop
async def test_handshake_timeout_and_garbage_close_without_app(context: ssl.SSLContext) -> None:
    apps: list[App] = []
    server, port = await serve(context, apps, timeout=0.3)
    loop = asyncio.get_running_loop()
    silent = socket.create_connection(("127.0.0.1", port))
    garbage = socket.create_connection(("127.0.0.1", port))
    garbage.sendall(b"GET / HTTP/1.1\r\n\r\n" * 10)
    for sock in (garbage, silent):
        sock.setblocking(False)
        started = loop.time()
        # The server closes: EOF (or a reset) within the handshake timeout.
        try:
            while await loop.sock_recv(sock, 4096):
                pass
        except ConnectionResetError:
            pass
        assert loop.time() - started < 2.0
        sock.close()
    assert len(apps) == 2 and all(a.events == [] for a in apps)
    server.close()


@on_uvloop
async def test_close_sends_close_notify_and_client_close_notify_is_eof(
    context: ssl.SSLContext,
) -> None:
    apps: list[App] = []
    server, port = await serve(context, apps)
    loop = asyncio.get_running_loop()
    # A blocking client that treats an EOF without close_notify as an error.
    raw = socket.create_connection(("127.0.0.1", port))
    tls = await loop.run_in_executor(
        None,
        lambda: client_context().wrap_socket(
            raw, server_hostname="localhost", suppress_ragged_eofs=False
        ),
    )
    tls.sendall(b"x")
    assert await loop.run_in_executor(None, tls.recv, 1) == b"x"
    apps[0].transport.write(b"last words")
    apps[0].transport.close()
    assert apps[0].transport.is_closing()

    def read_all() -> bytes:
        data = b""
        while chunk := tls.recv(4096):  # SSLEOFError here if close_notify is missing
            data += chunk
        return data

    # Queued data first, then a clean TLS EOF (close_notify), not a bare FIN.
    assert await loop.run_in_executor(None, read_all) == b"last words"
    assert await apps[0].lost is None
    tls.close()

    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_context(), server_hostname="localhost"
    )
    writer.write(b"y")
    await reader.readexactly(1)
    writer.close()  # close_notify from the client
    await asyncio.wait_for(apps[1].lost, 5)
    assert apps[1].events == ["made", "eof", "lost"]
    server.close()


@on_uvloop
async def test_stalled_reader_pauses_the_app_and_abort_ends_it(context: ssl.SSLContext) -> None:
    apps: list[App] = []
    server, port = await serve(context, apps, echo=False)
    _reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_context(), server_hostname="localhost"
    )
    writer.write(b"hi")
    await writer.drain()
    for _ in range(500):
        if apps and apps[0].received:
            break
        await asyncio.sleep(0.01)
    app = apps[0]
    app.transport.set_write_buffer_limits(high=64 * 1024)
    # The client never reads: the kernel buffers fill, then the TCP write
    # queue crosses its high-water mark and the application is paused.
    for _ in range(400):
        app.transport.write(bytes(CHUNK))
        if app.paused:
            break
        await asyncio.sleep(0)
    assert app.paused == 1
    assert app.transport.get_write_buffer_size() >= 64 * 1024
    app.transport.abort()
    assert await app.lost is None or isinstance(await app.lost, Exception)
    writer.close()
    server.close()


def test_layer_is_a_transport(context: ssl.SSLContext) -> None:
    async def body() -> None:
        layer = TLSLayer(App(), context, 1.0)
        assert isinstance(layer, asyncio.Transport)
        assert layer.is_closing()  # nothing is open before the handshake

    uvloop.run(body())
