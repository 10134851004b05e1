"""MySQL specifics: batches split into several LOAD DATA files stay one transaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from sinks import Batch
from sinks import mysql as mysql_sink
from sinks.mysql import MysqlWarehouse, load_data_files
from tests.sinks.conftest import make_row
from tests.sinks.test_warehouse import SHARD, STREAM, count, take


def test_files_split_below_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mysql_sink, "MAX_LOAD_FILE_CHARS", 4000)
    rows = [make_row(i, title="🎉\t\n\\N" * 20) for i in range(100)]
    paths = load_data_files(rows, str(tmp_path))
    assert len(paths) > 5
    sizes = [Path(p).stat().st_size for p in paths]
    assert max(sizes) <= 4 * 4000
    lines = b"".join(Path(p).read_bytes() for p in paths).decode().splitlines()
    assert len(lines) == 100
    assert lines[0].split("\t")[6] == "🎉\\t\\n\\\\N" * 20


async def test_split_batch_loads_in_one_transaction(mysql_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mysql_sink, "MAX_LOAD_FILE_CHARS", 20_000)
    wh = MysqlWarehouse.from_uri(mysql_url)
    await wh.start()
    try:
        fence = await take(wh)
        rows = [make_row(i) for i in range(400)]
        assert await wh.write_batch(Batch(STREAM, SHARD, rows, [], "400", fence)) == 400
        assert await count(wh) == 400
        assert await wh.write_batch(Batch(STREAM, SHARD, rows, [], "401", fence)) == 0
    finally:
        await wh.close()


async def test_falls_back_to_insert_ignore_when_load_data_is_refused(mysql_url: str) -> None:
    """A client without the LOCAL_FILES capability gets LOAD DATA LOCAL refused by the real server,
    as a MySQL 8 with local_infile=OFF does: the batch still loads, once, by INSERT IGNORE."""
    wh = MysqlWarehouse.from_uri(mysql_url)
    wh._connect["local_infile"] = False
    await wh.start()
    try:
        fence = await take(wh)
        rows = [make_row(i, title="🎉 tab\there") for i in range(300)]
        assert await wh.write_batch(Batch(STREAM, SHARD, rows, [], "300", fence)) == 300
        assert wh.load_data is False
        assert await wh.write_batch(Batch(STREAM, SHARD, rows[250:], [], "301", fence)) == 0
        assert await count(wh) == 300
        result = await wh.query("SELECT title FROM page_views LIMIT 1")
        assert result.rows[0][0] == "🎉 tab\there"
        assert await wh.get_checkpoint(STREAM, SHARD) == "301"
    finally:
        await wh.close()


def test_file_clauses_are_found_outside_quotes_and_comments_only() -> None:
    from sinks.mysql import writes_server_file

    assert writes_server_file("SELECT 1 INTO OUTFILE '/tmp/x'")
    assert writes_server_file("select * from page_views into\n dumpfile '/tmp/x'")
    assert writes_server_file("SELECT 'a' /* c */ INTO  OUTFILE '/tmp/x'")
    assert not writes_server_file("SELECT 'INTO OUTFILE' AS s")
    assert not writes_server_file('SELECT "x into outfile y"')
    assert not writes_server_file("SELECT 1 -- into outfile\n")
    assert not writes_server_file("SELECT 1 INTO @v")
