from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.services import fresh_mysql, fresh_postgres


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throwaway database on the real PostgreSQL (skips, or fails in CI, when it is down)."""
    with fresh_postgres() as url:
        yield url


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A throwaway database on the real MariaDB (skips, or fails in CI, when it is down)."""
    with fresh_mysql() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    return f"sqlite:///{tmp_path}/warehouse.db"
