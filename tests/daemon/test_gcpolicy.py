"""GcPolicy with the real collector: survivors frozen, cycles freed at the full collection."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from clawterm.daemon.gcpolicy import GcPolicy


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    """A two-object reference cycle nobody refers to: only the collector frees it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.collect()
    yield
    gc.unfreeze()
    gc.collect()


def test_frozen_cycles_wait_for_the_full_collection() -> None:
    pauses: list[float] = []
    policy = GcPolicy(600.0, now=0.0, observe=pauses.append)
    policy.start()
    try:
        dead = cycle()
        policy.tick(1.0)  # freezes what is alive now, the cycle included
        assert gc.get_freeze_count() > 0
        gc.collect()
        assert dead() is not None  # frozen objects are never walked
        policy.tick(599.0)
        gc.collect()
        assert dead() is not None and policy.full_collections == 0
        policy.tick(600.0)  # due: unfreeze, collect everything, freeze again
        assert dead() is None and policy.full_collections == 1
        assert gc.get_freeze_count() > 0
        assert pauses and all(p >= 0 for p in pauses)
    finally:
        policy.stop()
    assert gc.get_freeze_count() == 0
    assert policy._callback not in gc.callbacks


def test_zero_interval_leaves_the_collector_alone() -> None:
    policy = GcPolicy(0.0, now=0.0)
    policy.start()
    dead = cycle()
    policy.tick(10_000.0)
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert dead() is None
    policy.stop()
