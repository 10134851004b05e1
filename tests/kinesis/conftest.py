from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.kinesalite import kinesalite


@pytest.fixture(scope="session")
def kinesalite_endpoint() -> Iterator[str]:
    """One kinesalite for the whole session; each test makes streams of its own (`stream_name`)."""
    with kinesalite() as endpoint:
        yield endpoint


@pytest.fixture
def stream_name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"
