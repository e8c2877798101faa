from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from clawterm.serial import SEQ_MAX, is_newer, next_seq, seq_max

nonzero = st.integers(1, SEQ_MAX)


def test_zero_means_nothing_yet() -> None:
    assert is_newer(1, 0) and is_newer(SEQ_MAX, 0) and is_newer(1 << 31, 0)
    assert not is_newer(0, 0) and not is_newer(0, 5)


def test_next_skips_zero() -> None:
    assert next_seq(0) == 1 and next_seq(5) == 6 and next_seq(SEQ_MAX) == 1


@given(nonzero, st.integers(1, (1 << 31) - 1))
def test_ahead_by_less_than_half_is_newer(a: int, d: int) -> None:
    b = (a + d) & SEQ_MAX or 1
    if b != a:
        assert is_newer(b, a) != is_newer(a, b) or (b - a) & SEQ_MAX == 1 << 31


@given(nonzero, nonzero)
def test_antisymmetric(a: int, b: int) -> None:
    assert not (is_newer(a, b) and is_newer(b, a))
    assert seq_max(a, b) in (a, b)
    if a != b and (a - b) & SEQ_MAX != 1 << 31:
        assert is_newer(a, b) or is_newer(b, a)


def test_exactly_half_apart_is_not_newer() -> None:
    assert not is_newer(1 + (1 << 31), 1) and not is_newer(1, 1 + (1 << 31))
