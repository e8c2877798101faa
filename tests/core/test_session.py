"""Session state table (SPEC §11)."""

from __future__ import annotations

import itertools

import pytest

from clawterm.errors import LocalProtocolError
from clawterm.session import TRANSITIONS, SessionInput, SessionState, SessionStateMachine

S, Ev = SessionState, SessionInput


def test_life_of_a_session() -> None:
    sm = SessionStateMachine()
    assert sm.state is S.CONNECTING
    for event, state in [
        (Ev.ACCEPTED, S.ACTIVE),
        (Ev.TRANSPORT_LOST, S.SUSPENDED),
        (Ev.RESUME, S.ACTIVE),
        (Ev.RESUME, S.ACTIVE),  # takeover
        (Ev.SUSPEND, S.SUSPENDED),
        (Ev.EXPIRED, S.CLOSED),
    ]:
        assert sm.handle(event) is state


def test_closed_is_final() -> None:
    for event in Ev:
        assert not SessionStateMachine(S.CLOSED).can(event)


def test_every_pair_follows_the_table() -> None:
    for state, event in itertools.product(S, Ev):
        sm = SessionStateMachine(state)
        if (state, event) in TRANSITIONS:
            assert sm.handle(event) is TRANSITIONS[state, event]
        else:
            with pytest.raises(LocalProtocolError):
                sm.handle(event)
            assert sm.state is state


def test_only_suspended_sessions_expire() -> None:
    assert [s for s in S if (s, Ev.EXPIRED) in TRANSITIONS] == [S.SUSPENDED]
