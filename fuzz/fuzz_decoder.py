"""atheris fuzz target for the frame decoder and the payload decoders.

Run: ./dev fuzz [SECONDS]   (or: python fuzz/fuzz_decoder.py -max_total_time=60)

The decoder must only ever raise its own RemoteProtocolError subclasses, never
hold more than max_payload + 15 bytes, and every frame it yields must
re-encode to the bytes it came from.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from clawterm import payloads
    from clawterm.constants import OVERHEAD
    from clawterm.errors import RemoteProtocolError
    from clawterm.frame import FrameDecoder, encode_frame


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    max_payload = fdp.ConsumeIntInRange(0, 65535)
    decoder = FrameDecoder(max_payload)
    try:
        while fdp.remaining_bytes():
            chunk = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 512))
            for frame in decoder.feed(chunk):
                again = encode_frame(
                    frame.type, frame.session_id, frame.seq, frame.payload, frame.flags
                )
                assert again == bytes(frame.raw)
                cls = payloads.PAYLOAD_TYPES.get(frame.type)
                if cls is not None:
                    try:
                        cls.decode(frame.payload)
                    except RemoteProtocolError:
                        pass
            assert decoder.buffered < max_payload + OVERHEAD
    except RemoteProtocolError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
