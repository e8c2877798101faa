"""Serial-number arithmetic for SEQ (SPEC §4, RFC 1982 with 32 bits).

SEQ counts DATA frames per direction: the first is 1, and after 0xFFFFFFFF
comes 1 again. 0 never numbers a DATA frame; it means "nothing yet", so every
non-zero SEQ is newer than 0. Between two non-zero values the RFC 1982 rule
applies: ``a`` is newer than ``b`` when it is ahead by less than 2**31.
(At exactly 2**31 apart RFC 1982 leaves the order undefined; we call it
"not newer", so a receiver never accepts a frame it cannot place.)
"""

from __future__ import annotations

__all__ = ["SEQ_MAX", "is_newer", "next_seq", "seq_max"]

SEQ_MAX = 0xFFFFFFFF
_HALF = 1 << 31


def is_newer(a: int, b: int) -> bool:
    """True if SEQ ``a`` comes after SEQ ``b``."""
    if b == 0:
        return a != 0
    if a == 0:
        return False
    d = (a - b) & SEQ_MAX
    return 0 < d < _HALF


def next_seq(seq: int) -> int:
    """The SEQ after ``seq``: 0 → 1, …, 0xFFFFFFFF → 1 (0 is never used)."""
    return 1 if seq >= SEQ_MAX else seq + 1


def seq_max(a: int, b: int) -> int:
    """The newer of two SEQs."""
    return a if is_newer(a, b) or a == b else b
