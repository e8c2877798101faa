"""CRC-16 of ClawTerm frames (SPEC §2).

The protocol's CRC is CRC-16/UMTS (alias CRC-16/BUYPASS): polynomial 0x8005,
init 0, no reflection, no final XOR; the check value of ``b"123456789"`` is
0xFEE8. Published clients call it "CRC-16/IBM", a name that elsewhere usually
means the *reflected* CRC-16/ARC (check 0xBB3D) — which is not this CRC.

The work is done by ``fastcrc`` (a compiled extension); a pure-Python table
would cost ~100x more on a hot path that runs once per frame.

Because the CRC is unreflected with no final XOR, the CRC of a whole frame
*including* its big-endian CRC field is zero. The decoder uses that to check a
frame with one call over one slice.
"""

from __future__ import annotations

from fastcrc import crc16 as _crc16

__all__ = ["crc16"]

#: ``crc16(data, initial=None) -> int`` over any bytes-like object.
crc16 = _crc16.umts
