"""The issue's promise: 20,000 events through a warehouse outage, exactly 20,000 rows.

A real Consumer reads a pre-filled embedded stream into the real PostgreSQL (and MariaDB)
through the TCP proxy; the test resets every connection mid-load (twice) and then refuses connections for a
while, and the consumer must ride it out: pause, retry, resume from its checkpoints.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

from processor.streams.embedded import EmbeddedStream
from shard_consumer.consumer import Consumer
from sinks import open_warehouse
from tests.consumer.support import event_records, fast_config, put_all, row_counts
from tests.sinks.test_outages import through
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import eventually

EVENTS = 20_000


async def test_twenty_thousand_events_through_an_outage(server_url: str, tmp_path: Path) -> None:
    stream = EmbeddedStream.from_uri(f"sqlite:///{tmp_path}/stream.db")
    await stream.create(2)
    records = event_records(EVENTS)
    await put_all(stream, records)
    await put_all(stream, records[:300])  # producer retries: the same events again
    parts = urlsplit(server_url)
    direct = open_warehouse(server_url)
    await direct.start()
    async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 0) as proxy:
        warehouse = open_warehouse(through(server_url, proxy.port))
        # 500-row commits, so the load is still under way when each fault is armed
        config = fast_config(lease_timeout=3.0, renew_interval=0.5, batch_records=500, max_commit_rows=500)
        try:
            async with Consumer(config, stream, warehouse) as consumer:

                async def loaded_at_least(n: int) -> bool:
                    return (await row_counts(direct))[0] >= n

                await eventually(lambda: loaded_at_least(2000), what="first rows", timeout=60)
                proxy.cut()
                await eventually(lambda: loaded_at_least(6000), what="rows after a cut", timeout=60)
                proxy.cut_after(20_000)  # the next load in flight dies mid-COPY / mid-LOAD DATA

                async def cut_mid_load() -> bool:
                    return proxy.cuts >= 2

                await eventually(cut_mid_load, what="the mid-COPY cut", timeout=60)
                cut_at = (await row_counts(direct))[0]
                await eventually(
                    lambda: loaded_at_least(min(cut_at + 2000, EVENTS - 2000)),
                    what="rows after a mid-COPY cut",
                    timeout=60,
                )
                proxy.block()

                async def warehouse_down() -> bool:
                    return not consumer.warehouse_up

                await eventually(warehouse_down, what="the consumer to see the outage", timeout=30)
                during = (await row_counts(direct))[0]
                await asyncio.sleep(1.0)  # the outage lasts a while; nothing can load meanwhile
                assert (await row_counts(direct))[0] == during
                proxy.restore()

                async def all_loaded() -> bool:
                    return await row_counts(direct) == (EVENTS, EVENTS)

                await eventually(all_loaded, what=f"{EVENTS} rows", timeout=90)
                assert consumer.warehouse_up
            assert proxy.cuts >= 3
            assert await row_counts(direct) == (EVENTS, EVENTS)
            checkpoints = await direct.checkpoints(stream.name)
            assert len(checkpoints) == 2
        finally:
            await warehouse.close()
            await direct.close()
            await stream.close()
