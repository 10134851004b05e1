"""Throwaway databases on the machine's PostgreSQL and MariaDB, one per test.

Each test gets a database of its own (`sf_<random>`), dropped afterwards, so tests and
developers running at once never see each other's rows. Where a server is unreachable the test
skips with the reason, unless SHARDFLOW_REQUIRE_SERVICES=1 (CI), where it fails.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import pytest

POSTGRES_DSN = os.environ.get("SHARDFLOW_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_DSN = os.environ.get("SHARDFLOW_TEST_MYSQL_DSN", "mysql://root@127.0.0.1:3306/test")


def unavailable(reason: str) -> None:
    if os.environ.get("SHARDFLOW_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason)


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def _pg_admin(sql: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def _mysql_admin(sql: str) -> None:
    import pymysql

    parts = urlsplit(MYSQL_DSN)
    conn = pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        connect_timeout=5,
    )
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
        conn.commit()
    finally:
        conn.close()


@contextmanager
def fresh_postgres() -> Iterator[str]:
    name = "sf_" + secrets.token_hex(6)
    try:
        _pg_admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # any failure to reach the server means: no PostgreSQL here
        unavailable(f"PostgreSQL at {POSTGRES_DSN} unreachable: {exc}")
    try:
        yield with_database(POSTGRES_DSN, name)
    finally:
        try:
            _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception:
            pass


@contextmanager
def fresh_mysql() -> Iterator[str]:
    name = "sf_" + secrets.token_hex(6)
    try:
        _mysql_admin(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    except Exception as exc:
        unavailable(f"MariaDB at {MYSQL_DSN} unreachable: {exc}")
    try:
        yield with_database(MYSQL_DSN, name)
    finally:
        try:
            _mysql_admin(f"DROP DATABASE IF EXISTS `{name}`")
        except Exception:
            pass
