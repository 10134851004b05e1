"""KinesisStream on moto's server, the second implementation, for what kinesalite lacks.

kinesalite has no UpdateShardCount, so the real call path of `update_shard_count` runs here.
moto's own faults (SPEC): it loses records under concurrent PutRecords and never ends a closed
shard, so these tests put sequentially and do not read a closed shard to its end; it also
keeps putting into closed parent shards after UpdateShardCount (seen here), so no put follows it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from processor.streams.base import IteratorType, PutRecord
from processor.streams.kinesis import KinesisStream
from tests.support.kinesalite import moto_server


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


async def test_put_read_and_update_shard_count(moto_endpoint: str, stream_name: str) -> None:
    uri = f"kinesis://{stream_name}?region=us-east-1&endpoint={moto_endpoint}&limits=off&idle_wait=0"
    async with KinesisStream.from_uri(uri) as stream:
        await stream.create(2)
        results = await stream.put_records([PutRecord(f"e{i}".encode(), f"k{i}") for i in range(20)])
        assert all(r.ok for r in results)
        seen: list[bytes] = []
        for shard in (await stream.describe()).shards:
            it = await stream.get_shard_iterator(shard.shard_id, IteratorType.TRIM_HORIZON)
            seen.extend(r.data for r in (await stream.get_records(it)).records)
        assert sorted(seen) == sorted(f"e{i}".encode() for i in range(20))
        await stream.update_shard_count(4)
        desc = await stream.describe()
        assert desc.status == "ACTIVE"
        assert len(desc.open_shards) == 4
        assert sum(s.ending_hash_key - s.starting_hash_key + 1 for s in desc.open_shards) == 2**128
