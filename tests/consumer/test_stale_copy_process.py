"""A real writer process SIGSTOPped in the middle of its COPY never stalls the shard's new owner.

The old owner runs in a subprocess and writes one large batch; the test stops it while the
server is inside that COPY (some rows in, their event_ids locked, the rest not sent), lets its
lease expire, takes the lease and writes a batch with some of the same event_ids. Issue 5: the
new owner goes on, and the old one, resumed, commits nothing.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from sinks import Batch, Fence
from sinks.postgres import PostgresWarehouse, _mark
from tests.sinks.conftest import make_row
from tests.sinks.test_warehouse import SHARD, STREAM, count, take
from tests.support.wait import eventually

pytestmark = pytest.mark.slow

ROWS = 100_000
"""The old owner's batch: its COPY takes seconds, so the stop lands inside it."""
TTL = 1.0
REPO = Path(__file__).resolve().parents[2]
WRITER = """
import asyncio, sys
from processor.errors import ShardflowError
from sinks import Batch, Fence
from sinks.postgres import PostgresWarehouse
from tests.sinks.conftest import make_row
from tests.sinks.test_warehouse import SHARD, STREAM

async def main(url: str, counter: int, rows: int) -> None:
    wh = PostgresWarehouse(url)
    batch = Batch(STREAM, SHARD, [make_row(i) for i in range(rows)], [], str(rows), Fence("old", counter))
    print("writing", flush=True)
    for _ in range(2):  # a consumer tries a batch again after a connection error
        try:
            await wh.write_batch(batch)
            print("committed", flush=True)
            break
        except ShardflowError as exc:
            print(type(exc).__name__, exc, flush=True)
    await wh.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


async def test_writer_stopped_mid_copy_never_stalls_the_new_owner(
    wh: PostgresWarehouse, tmp_path: Path
) -> None:
    old = await take(wh, owner="old")
    log = (tmp_path / "old.log").open("w+")
    argv = [sys.executable, "-c", WRITER, wh.dsn, str(old.lease_counter), str(ROWS)]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    observer = await asyncpg.connect(wh.dsn)
    try:

        async def copying() -> tuple[int, str] | None:
            row = await observer.fetchrow(
                "SELECT a.pid, a.application_name FROM pg_stat_progress_copy p "
                "JOIN pg_stat_activity a USING (pid) "
                "WHERE a.datname = current_database() AND p.tuples_processed >= 2000"
            )
            return None if row is None else (row[0], row[1])

        found = await eventually(copying, timeout=60, interval=0.02, what="the old owner inside its COPY")
        assert found is not None
        pid, shown = found
        renewed = await wh.renew_leases(STREAM, "old", {SHARD: old.lease_counter}, TTL)
        proc.send_signal(signal.SIGSTOP)
        assert shown == _mark(STREAM, SHARD, old.lease_counter)

        async def expired() -> bool:
            return await wh.now() > renewed[SHARD].expires_at

        await eventually(expired, timeout=10, what="the old owner's lease expired")
        taken = await wh.take_lease(STREAM, SHARD, "new", old.lease_counter, 10.0)
        assert taken is not None
        replay = [make_row(i) for i in range(100)] + [make_row(i) for i in range(ROWS, ROWS + 100)]
        batch = Batch(STREAM, SHARD, replay, [], "200", Fence("new", taken.lease_counter))
        assert await asyncio.wait_for(wh.write_batch(batch), 20) == 200
        assert await count(wh) == 200

        proc.send_signal(signal.SIGCONT)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
        await observer.close()
    log.seek(0)
    outcome = log.read()
    log.close()
    assert "committed" not in outcome
    assert outcome.strip().splitlines()[-1].startswith("LeaseLost"), outcome
    assert await count(wh) == 200
    assert await count(wh, "event_id >= 'ev-00000100' AND event_id < 'ev-00100000'") == 0
    assert await wh.get_checkpoint(STREAM, SHARD) == "200"
    gone = await wh.query(f"SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = {pid}")
    assert gone.rows == [(True,)], "the old owner's stopped session was ended"
