"""Short garbage-collector pauses however many sessions the daemon holds.

CPython's cyclic collector stops the loop while it walks every tracked
object of the generation it collects. A session is a few dozen tracked
objects (session, legs, TLS objects, decoders, queues), so with thousands
of sessions a full collection takes 100 ms or more (measured: ~0.4 µs per
tracked object, ~130 ms at 9,900 sessions), and CPython starts one each
time the long-lived objects have grown by a quarter, which is what a ramp
of new sessions or a mass reconnect does.

:class:`GcPolicy` makes long-lived objects permanent instead: once a
second (the daemon's housekeeping tick) :func:`gc.freeze` moves everything
alive into the permanent generation, which collections never walk, so each
collection only sees what was allocated since the last tick. Objects that
die without a reference cycle are still freed at once by reference
counting (the ring's data is released explicitly when a session ends); the
cycles among ended sessions' objects wait for the next full collection,
which runs every ``full_interval`` seconds (``--gc-full-interval``, default
600): unfreeze, collect everything, freeze again. That one pause is the
only long one, at a known rate. ``full_interval`` 0 leaves Python's own
collector untouched.

Every collection's duration is reported to ``observe`` (the daemon's
``clawterm_gc_pause_seconds`` histogram).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

__all__ = ["GcPolicy"]


class GcPolicy:
    """Freeze survivors every tick; a full collection every ``full_interval`` s."""

    def __init__(
        self,
        full_interval: float,
        now: float,
        observe: Callable[[float], None] | None = None,
    ) -> None:
        self.full_interval = full_interval
        self.last_full = now
        self.observe = observe
        self._started = 0.0
        self.full_collections = 0

    def start(self) -> None:
        if self.observe is not None:
            gc.callbacks.append(self._callback)
        if self.full_interval > 0:
            gc.freeze()

    def tick(self, now: float) -> None:
        """Called once a second: freeze what survived; a full collection when due."""
        if self.full_interval <= 0:
            return
        if now - self.last_full >= self.full_interval:
            self.last_full = now
            self.full_collections += 1
            gc.unfreeze()
            gc.collect()
        gc.freeze()

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
        if self.full_interval > 0:
            gc.unfreeze()

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self.observe is not None:
            self.observe(time.perf_counter() - self._started)
