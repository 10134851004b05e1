"""`shardflow query` cannot change the warehouse, whatever SQL it is given, on all three backends.

Each statement runs through the real CLI (`processor.cli.main`) against a real database; the test
then reads the warehouse with the database's own driver and finds it exactly as it was.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from processor.cli import main

COMMON = [
    "INSERT INTO shardflow_dead_letters (stage, reason, payload) VALUES ('x', 'x', 'x')",
    "DELETE FROM page_views",
    "UPDATE page_views SET url = 'pwned'",
    "DROP TABLE page_views",
    "CREATE TABLE pwned (x integer)",
    "ALTER TABLE page_views ADD COLUMN pwned integer",
    "TRUNCATE TABLE page_views",
    "SELECT 1; DELETE FROM page_views",
    "SELECT 1; COMMIT; DELETE FROM page_views",
    "COMMIT; UPDATE page_views SET url = 'pwned'",
]
BY_DIALECT = {
    "sqlite": [
        "PRAGMA query_only = 0; DELETE FROM page_views",
        "REPLACE INTO page_views (event_id, type, received_at, is_bot, shard_id, sequence_number) "
        "VALUES ('e1', 'pwned', 'x', 0, 's', '1')",
    ],
    "postgresql": [
        "WITH gone AS (DELETE FROM page_views RETURNING *) SELECT count(*) FROM gone",
        "SELECT set_config('transaction_read_only', 'off', false)",
        "SET TRANSACTION READ WRITE",
        "SELECT 1; SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE; DELETE FROM page_views",
        "CREATE TEMP TABLE t AS SELECT 1",
    ],
    "mysql": [
        "SELECT 1; COMMIT; SET SESSION TRANSACTION READ WRITE; DELETE FROM page_views",
        "SET SESSION TRANSACTION READ WRITE",
        "REPLACE INTO page_views (event_id, type, received_at, is_bot, shard_id, sequence_number) "
        "VALUES ('e1', 'pwned', NOW(), 0, 's', '1')",
    ],
}
SEED = (
    "INSERT INTO page_views (event_id, type, received_at, url, is_bot, shard_id, sequence_number) "
    "VALUES ('e1', 'page', {now}, 'https://shop.example/', {false}, 'shardId-0', '1')"
)


def _sql(dialect: str, statement: str) -> object:
    """Run one statement with the database's own driver; the first row of its result, if any."""
    return asyncio.run(_run(dialect, statement))


async def _run(dialect: str, statement: str) -> object:
    url = _URL[dialect]
    if dialect == "postgresql":
        import asyncpg

        conn = await asyncpg.connect(url, timeout=10)
        try:
            return (
                await conn.fetchrow(statement)
                if statement.lstrip().upper().startswith("SELECT")
                else await conn.execute(statement)
            )
        finally:
            await conn.close()
    if dialect == "mysql":
        import pymysql

        parts = urlsplit(url)
        conn = pymysql.connect(
            host=parts.hostname, port=parts.port or 3306, user=parts.username or "root",
            password=parts.password or "", database=parts.path.lstrip("/"), autocommit=True,
        )  # fmt: skip
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
                return cur.fetchone()
        finally:
            conn.close()
    db = sqlite3.connect(urlsplit(url).path[1:] if url.startswith("sqlite:////") else url[10:])
    try:
        row = db.execute(statement).fetchone()
        db.commit()
        return row
    finally:
        db.close()


_URL: dict[str, str] = {}


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    dialect = str(request.param)
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path}/warehouse.db"
    else:
        url = str(request.getfixturevalue("postgres_url" if dialect == "postgresql" else "mysql_url"))
    _URL[dialect] = url
    assert (
        main(["query", "SELECT count(*) FROM page_views", "--warehouse", url, "--data-dir", str(tmp_path)])
        == 0
    )
    now = {"sqlite": "'2026-01-01T00:00:00Z'", "postgresql": "now()", "mysql": "NOW(6)"}[dialect]
    false = "false" if dialect == "postgresql" else "0"
    _sql(dialect, SEED.format(now=now, false=false))
    return dialect


def _state(dialect: str) -> tuple[object, ...]:
    rows = _sql(dialect, "SELECT count(*), min(url), min(type) FROM page_views")
    dead = _sql(dialect, "SELECT count(*) FROM shardflow_dead_letters")
    tables = {
        "sqlite": "SELECT count(*) FROM sqlite_master WHERE name = 'pwned'",
        "postgresql": "SELECT count(*) FROM information_schema.tables WHERE table_name = 'pwned'",
        "mysql": "SELECT count(*) FROM information_schema.tables WHERE table_name = 'pwned' "
        "AND table_schema = DATABASE()",
    }[dialect]
    columns = {
        "sqlite": "SELECT count(*) FROM pragma_table_info('page_views') WHERE name = 'pwned'",
        "postgresql": "SELECT count(*) FROM information_schema.columns WHERE column_name = 'pwned'",
        "mysql": "SELECT count(*) FROM information_schema.columns WHERE column_name = 'pwned' "
        "AND table_schema = DATABASE()",
    }[dialect]
    return (tuple(rows), tuple(dead), tuple(_sql(dialect, tables)), tuple(_sql(dialect, columns)))  # type: ignore[arg-type]


def test_query_cannot_change_the_warehouse(
    warehouse: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dialect = warehouse
    before = _state(dialect)
    assert before[0] == (1, "https://shop.example/", "page")
    url = _URL[dialect]
    for statement in COMMON + BY_DIALECT[dialect]:
        code = main(["query", statement, "--warehouse", url, "--data-dir", str(tmp_path)])
        _, err = capsys.readouterr()
        assert _state(dialect) == before, f"{dialect}: {statement!r} changed the warehouse ({code}: {err})"
        assert "Traceback" not in err, err


def test_mysql_query_cannot_write_files_on_the_server(mysql_url: str, tmp_path: Path) -> None:
    import uuid

    target = Path(f"/tmp/shardflow-outfile-{uuid.uuid4().hex}.txt")
    try:
        main(["query", "SELECT 1", "--warehouse", mysql_url, "--data-dir", str(tmp_path)])
        main(["query", f"SELECT 'x' INTO OUTFILE '{target}'", "--warehouse", mysql_url,
              "--data-dir", str(tmp_path)])  # fmt: skip
        assert not target.exists(), f"`shardflow query` wrote {target} on the database server"
    finally:
        target.unlink(missing_ok=True)
