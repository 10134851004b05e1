"""One SQLite warehouse file written by two processes at once: no lock errors, nothing lost."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from sinks import Batch, Fence
from sinks.sqlite import SqliteWarehouse
from tests.sinks.conftest import make_row
from tests.sinks.test_warehouse import SHARDS, STREAM

ROOT = Path(__file__).resolve().parents[2]
BATCHES, ROWS = 30, 200

WRITER = """
import asyncio, sys
from pathlib import Path
from tests.sinks.test_sqlite_processes import write

asyncio.run(write(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), "child"))
"""


async def write(path: Path, shard: str, offset: int, owner: str = "parent") -> None:
    wh = SqliteWarehouse(path)
    await wh.start()
    await wh.create_leases(STREAM, SHARDS)
    lease = next(le for le in await wh.list_leases(STREAM) if le.shard_id == shard)
    taken = await wh.take_lease(STREAM, shard, owner, lease.lease_counter, 60)
    assert taken is not None
    fence = Fence(owner, taken.lease_counter)
    for b in range(BATCHES):
        rows = [make_row(offset + b * ROWS + i, shard_id=shard) for i in range(ROWS)]
        assert await wh.write_batch(Batch(STREAM, shard, rows, [], str(b), fence)) == ROWS
    await wh.close()


async def test_two_processes_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.db"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(path), SHARDS[1].shard_id, "1000000", cwd=ROOT
    )
    try:
        await write(path, SHARDS[0].shard_id, 0)
        assert await asyncio.wait_for(child.wait(), 60) == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    wh = SqliteWarehouse(path)
    try:
        result = await wh.query("SELECT shard_id, count(*) FROM page_views GROUP BY shard_id ORDER BY 1")
        assert result.rows == [(SHARDS[0].shard_id, BATCHES * ROWS), (SHARDS[1].shard_id, BATCHES * ROWS)]
        assert [c.sequence_number for c in await wh.checkpoints(STREAM)] == [str(BATCHES - 1)] * 2
    finally:
        await wh.close()
