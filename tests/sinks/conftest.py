"""One warehouse suite for every backend: `warehouse_url` is parametrised over sqlite, postgres, mysql."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from sinks import Warehouse, open_warehouse
from sinks.base import PageView

BACKENDS = ("sqlite", "postgres", "mysql")


@pytest.fixture(params=BACKENDS)
def warehouse_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture(params=("postgres", "mysql"))
def server_url(request: pytest.FixtureRequest) -> str:
    """A throwaway database on each real server (for fault tests through the TCP proxy)."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
async def warehouse(warehouse_url: str) -> AsyncIterator[Warehouse]:
    wh = open_warehouse(warehouse_url)
    await wh.start()
    try:
        yield wh
    finally:
        await wh.close()


def make_row(i: int, *, shard_id: str = "shardId-000000000000", **changes: object) -> PageView:
    """A fully populated row; `changes` override fields."""
    row = PageView(
        event_id=f"ev-{i:08d}",
        type="page",
        ts=datetime(2026, 11, 28, 12, 0, 0, (i % 1000) * 1000, tzinfo=UTC),
        received_at=datetime(2026, 11, 28, 12, 0, 1, tzinfo=UTC),
        url=f"https://example.com/p/{i}?utm_source=news",
        referrer="https://google.com/",
        title=f"Page {i}",
        user_id=f"u{i % 97}",
        anonymous_id=f"a{i % 89}",
        session_id=f"s{i % 13}",
        user_agent="Mozilla/5.0",
        ip="203.0.113.7",
        name=None,
        properties='{"plan": "pro", "n": 1}',
        context='{"locale": "en-GB"}',
        traits=None,
        host="example.com",
        path=f"/p/{i}",
        utm_source="news",
        utm_medium=None,
        utm_campaign=None,
        referrer_host="google.com",
        browser="Chrome",
        os="Windows",
        device="desktop",
        is_bot=False,
        shard_id=shard_id,
        sequence_number=str(10**55 + i),
    )
    return row._replace(**changes)  # type: ignore[arg-type]
