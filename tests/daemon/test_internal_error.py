"""An internal fault answers ERROR INTERNAL with no internal text (SPEC §12, STYLE §7).

Nothing outside the daemon can make it fail on purpose, so this drives the
real ClientProtocol adapter with a session whose relay raises.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from clawterm.constants import ErrorCode, FrameType
from clawterm.daemon.legs import ClientProtocol
from clawterm.frame import FrameDecoder, encode_frame
from clawterm.payloads import Error
from tests.helpers import RecordingTransport


class BrokenSession:
    session_id = 77
    client: Any = None

    def client_run(self, data: Any, max_payload: int) -> int:
        raise RuntimeError("secret internal detail /etc/passwd")

    def client_frame(self, frame: Any) -> None:
        raise RuntimeError("secret internal detail /etc/passwd")

    def detach(self, *args: Any) -> None:
        self.client = None

    def flush(self) -> None:
        pass


def test_internal_error_sends_internal_without_details(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> RecordingTransport:
        errors: list[ErrorCode] = []
        daemon = SimpleNamespace(
            config=SimpleNamespace(max_payload=65535, max_buffer=1 << 20),
            loop=asyncio.get_running_loop(),
            client_connected=lambda proto: None,
            count_error=errors.append,
            log_event=lambda *a, **k: None,
            after_burst=lambda session: session.flush(),
        )
        proto = ClientProtocol(daemon)  # type: ignore[arg-type]
        transport = RecordingTransport()
        proto.connection_made(transport)  # type: ignore[arg-type]
        session = BrokenSession()
        session.client = proto
        proto.session = session  # type: ignore[assignment]
        proto.handshaking = False
        proto.data_received(encode_frame(FrameType.DATA, 77, 1, b"boom"))
        assert errors == [ErrorCode.INTERNAL]
        return transport

    with caplog.at_level(logging.ERROR, logger="clawterm.daemon"):
        transport = asyncio.run(main())
    (frame,) = FrameDecoder().feed(b"".join(transport.writes))
    assert frame.type == FrameType.ERROR and frame.session_id == 77
    err = Error.decode(frame.payload)
    assert err.code == ErrorCode.INTERNAL and err.message == "internal error"
    assert b"secret" not in b"".join(transport.writes)
    assert transport.closed
    # The detail goes to the local log, with its traceback, not the wire.
    assert "secret internal detail" in caplog.text
