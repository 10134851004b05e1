"""SIGKILL of a real `shardflow ingest` process under load, then a restart: every event that got
a 202 reaches the warehouse (filled by a real `shardflow consume`) exactly once."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.e2e.harness import Shardflow

pytestmark = pytest.mark.slow


async def send_until_killed(ingest: Shardflow, kill_after: float) -> list[str]:
    """Four senders post 50-event NDJSON batches; the process is SIGKILLed mid-stream."""
    acked: list[str] = []
    counter = 0
    stop = asyncio.Event()

    async def sender(session: aiohttp.ClientSession, lane: int) -> None:
        nonlocal counter
        while not stop.is_set():
            counter += 1
            ids = [f"kill-{lane}-{counter}-{j}" for j in range(50)]
            body = b"\n".join(
                orjson.dumps({"event_id": i, "anonymous_id": f"v{j % 9}"}) for j, i in enumerate(ids)
            )
            try:
                async with session.post(
                    f"{ingest.url}/v1/events", data=body, headers={"Content-Type": "application/x-ndjson"}
                ) as r:
                    if r.status == 202:
                        acked.extend(ids)
            except aiohttp.ClientError:
                return

    async def killer() -> None:
        await asyncio.sleep(kill_after)
        stop.set()
        assert ingest.proc is not None
        ingest.proc.kill()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        await asyncio.gather(killer(), *(sender(session, lane) for lane in range(4)))
    return acked


def warehouse_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return [row[0] for row in db.execute("select event_id from page_views")]
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def test_sigkill_under_load_loses_and_doubles_nothing_acknowledged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ingest = Shardflow(data, role="ingest", extra=("--fsync", "never"))
    consume = Shardflow(data, role="consume")
    try:
        ingest.start()
        acked = asyncio.run(send_until_killed(ingest, kill_after=1.5))
        ingest.wait(10)
        assert len(acked) > 500, "the load never got going"
        print(f"{len(acked)} events acknowledged before SIGKILL")
        ingest.start()  # the restart sends whatever the spool still holds
        consume.start()
        wanted = set(acked)
        deadline = time.monotonic() + 90
        while True:
            ids = warehouse_ids(consume.warehouse)
            if wanted <= set(ids) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        missing = wanted - set(ids)
        assert not missing, f"{len(missing)} acknowledged events never arrived, e.g. {sorted(missing)[:3]}"
        assert len(ids) == len(set(ids)), "duplicate rows in page_views"
        assert ingest.stop() == 0
        assert consume.stop() == 0
    finally:
        ingest.kill()
        consume.kill()
