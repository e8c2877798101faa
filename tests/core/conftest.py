from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

# The reference vectors live beside the checkout (../shared), never in the repo.
VECTORS = Path(
    os.environ.get(
        "CLAWTERM_VECTORS",
        Path(__file__).resolve().parents[2].parent / "shared" / "vectors" / "frames.json",
    )
)


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    with open(VECTORS) as f:
        data: dict[str, Any] = json.load(f)
    return data


def load_vectors() -> dict[str, Any]:
    with open(VECTORS) as f:
        data: dict[str, Any] = json.load(f)
    return data
