"""Frame codec throughput beside the floor any Python codec must pay.

Run: ./dev bench codec   (or: python -m bench.codec [--seconds S])

The floor, measured in the same run on the same buffers: per frame one
``struct.pack`` (encode) or ``struct.unpack_from`` (decode) of the bare
13-byte header plus one CRC-16 call over the frame — the least work a codec
written in Python can do. Targets (issue 2, one core): decode >= 500,000
frames/s at 64 B, >= 2 GB/s at 64 KiB, codec within 2x of the floor.
"""

from __future__ import annotations

import argparse
import platform
import struct
import time
from collections.abc import Callable

from clawterm.constants import FrameType
from clawterm.crc import crc16
from clawterm.frame import FrameDecoder, encode_frame

SIZES = [64, 1024, 65535]
HEADER = struct.Struct(">BIIBBH")


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Frames per second of ``fn`` (which returns how many frames it did)."""
    fn()  # warm up
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        n = fn()
        best = max(best, n / (time.perf_counter() - t0))
    return best


def measure(size: int, seconds: float) -> dict[str, float]:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    count = max(8, min(2000, (4 << 20) // (size + 15)))
    stream = b"".join(encode_frame(FrameType.DATA, 1, i + 1, payload) for i in range(count))
    frame_len = size + 15
    pack = HEADER.pack
    unpack = HEADER.unpack_from

    def encode() -> int:
        for i in range(count):
            encode_frame(FrameType.DATA, 1, i + 1, payload)
        return count

    def encode_floor() -> int:
        for i in range(count):
            crc16(payload, crc16(pack(0x7E, 1, i + 1, 0x10, 0, size)))
        return count

    def decode() -> int:
        n = 0
        for _ in FrameDecoder().feed(stream):
            n += 1
        return n

    def decode_floor() -> int:
        mv = memoryview(stream)
        for off in range(0, len(stream), frame_len):
            unpack(mv, off)
            crc16(mv[off : off + frame_len])
        return count

    return {
        "encode": rate(encode, seconds),
        "encode_floor": rate(encode_floor, seconds),
        "decode": rate(decode, seconds),
        "decode_floor": rate(decode_floor, seconds),
    }


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="time per measurement")
    args = parser.parse_args(argv)
    print(f"# codec — {platform.python_implementation()} {platform.python_version()}, one core")
    print(
        f"{'payload':>8} {'op':>6} {'frames/s':>12} {'MB/s':>9} "
        f"{'floor frames/s':>15} {'x floor':>8}"
    )
    rows: list[dict[str, object]] = []
    for size in SIZES:
        r = measure(size, args.seconds)
        for op in ("encode", "decode"):
            fps, floor = r[op], r[op + "_floor"]
            mbs = fps * (size + 15) / 1e6
            row = {"payload": size, "op": op, "fps": fps, "mbs": mbs, "floor": floor}
            rows.append(row)
            print(
                f"{size:>8} {op:>6} {fps:>12,.0f} {mbs:>9,.0f} {floor:>15,.0f} {floor / fps:>8.2f}"
            )
    return rows


if __name__ == "__main__":
    main()
