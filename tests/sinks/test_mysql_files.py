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
