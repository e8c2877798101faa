"""Reconnect schedule: exponential backoff with jitter, bounded.

Attempt ``n`` (0 for the first reconnect after a drop) waits
``min(maximum, initial * factor**n)`` seconds, less a random share of up to
``jitter`` of it, so clients dropped together by one daemon restart do not
come back in lockstep. The attempt count starts again at 0 after every
successful RESUMED. ``give_up_after`` bounds the time spent without a
transport (None: keep trying; the daemon keeps the session warm for its
detached TTL, SPEC §11).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Backoff"]

# 2**64 times any sane initial delay is far above any sane maximum.
_MAX_EXPONENT = 64


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before each reconnect attempt."""

    #: Delay before the first attempt, seconds (before jitter).
    initial: float = 0.25
    #: Growth per attempt.
    factor: float = 2.0
    #: Longest delay, seconds (before jitter).
    maximum: float = 30.0
    #: Share of each delay taken away at random, 0..1 (0: no jitter).
    jitter: float = 0.5
    #: Stop after this many seconds without a transport; None: never.
    give_up_after: float | None = None

    def __post_init__(self) -> None:
        for name in ("initial", "factor", "maximum", "jitter"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"Backoff.{name} must be a finite number >= 0, not {value!r}")
        if self.factor < 1:
            raise ValueError("Backoff.factor must be at least 1")
        if self.jitter > 1:
            raise ValueError("Backoff.jitter must be between 0 and 1")
        if self.maximum < self.initial:
            raise ValueError("Backoff.maximum must not be below Backoff.initial")
        if self.give_up_after is not None and not self.give_up_after >= 0:
            raise ValueError("Backoff.give_up_after must be None or >= 0")

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait before attempt ``attempt``; ``rand`` is uniform in [0, 1)."""
        base = min(self.maximum, self.initial * self.factor ** min(attempt, _MAX_EXPONENT))
        return base * (1.0 - self.jitter * rand)
