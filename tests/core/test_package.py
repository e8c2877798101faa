from __future__ import annotations

import pytest

import clawterm


def test_client_api_reexported_lazily() -> None:
    from clawterm import client

    assert clawterm.connect is client.connect
    assert clawterm.resume is client.resume
    with pytest.raises(AttributeError):
        _ = clawterm.no_such_thing  # type: ignore[attr-defined]
