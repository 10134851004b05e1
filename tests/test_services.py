"""The throwaway databases the other tests rely on."""

from __future__ import annotations

from urllib.parse import urlsplit

import asyncpg
import pymysql


async def test_postgres_database_is_fresh(postgres_url: str) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        tables = await conn.fetchval("select count(*) from pg_tables where schemaname = 'public'")
    finally:
        await conn.close()
    assert tables == 0


def test_mysql_database_is_fresh(mysql_url: str) -> None:
    parts = urlsplit(mysql_url)
    conn = pymysql.connect(host=parts.hostname, port=parts.port, user=parts.username, database=parts.path[1:])
    try:
        with conn.cursor() as cur:
            cur.execute("show tables")
            assert cur.fetchall() == ()
    finally:
        conn.close()
