from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from sinks.postgres import PostgresWarehouse
from tests.support.services import fresh_mysql, fresh_postgres


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throwaway database on the real PostgreSQL (skips, or fails in CI, when it is down)."""
    with fresh_postgres() as url:
        yield url


@pytest.fixture
async def wh(postgres_url: str) -> AsyncIterator[PostgresWarehouse]:
    """A started PostgreSQL warehouse on a throwaway database."""
    warehouse = PostgresWarehouse(postgres_url)
    await warehouse.start()
    try:
        yield warehouse
    finally:
        await warehouse.close()


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A throwaway database on the real MariaDB (skips, or fails in CI, when it is down)."""
    with fresh_mysql() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    return f"sqlite:///{tmp_path}/warehouse.db"
