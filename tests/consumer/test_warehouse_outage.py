"""The warehouse goes away mid-stream and comes back: shards pause, retry, lose nothing."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import REGISTRY

from processor.streams.embedded import EmbeddedStream
from shard_consumer.consumer import Consumer
from sinks import open_warehouse
from tests.consumer.support import event_records, fast_config, put_all, row_counts
from tests.consumer.tcp_proxy import TcpProxy
from tests.support.wait import eventually


async def test_outage_pauses_and_resumes_without_loss(tmp_path: Path, postgres_url: str) -> None:
    parts = urlsplit(postgres_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    netloc = f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username else f"127.0.0.1:{proxy.port}"
    via_proxy = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    stream = EmbeddedStream.from_uri(f"sqlite:///{tmp_path}/stream.db")
    await stream.create(2)
    direct = open_warehouse(postgres_url)
    cut_off = open_warehouse(via_proxy)
    await direct.start()
    total = 8000
    records = event_records(total, "o")
    consumer = Consumer(fast_config(lease_timeout=3.0, renew_interval=0.5), stream, cut_off)
    try:
        await consumer.start()
        await put_all(stream, records[:3000])

        async def first_part() -> bool:
            return await row_counts(direct) == (3000, 3000)

        await eventually(first_part, timeout=30, what="first part loaded")
        proxy.cut()
        await put_all(stream, records[3000:])

        async def down() -> bool:
            return not consumer.warehouse_up

        await eventually(down, timeout=30, what="warehouse_up false")
        assert REGISTRY.get_sample_value("shardflow_warehouse_up") == 0
        assert (await row_counts(direct))[0] < total
        proxy.restore()

        async def everything() -> bool:
            return await row_counts(direct) == (total, total)

        await eventually(everything, timeout=60, interval=0.2, what="all rows after the outage")
        assert consumer.warehouse_up
        assert REGISTRY.get_sample_value("shardflow_warehouse_up") == 1
    finally:
        proxy.restore()
        await consumer.stop()
        await cut_off.close()
        await direct.close()
        await stream.close()
        await proxy.close()
