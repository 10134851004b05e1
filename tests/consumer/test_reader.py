"""The shard reader on a real embedded stream: checkpoint resume, shard end, expired iterators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from processor.errors import ExpiredIterator
from processor.streams.base import GetRecordsResult
from processor.streams.embedded import EmbeddedStream
from shard_consumer.reader import ShardReader
from tests.consumer.support import event_records, put_all


class ExpiringEvery:
    """Delegates to a stream; every `n`th GetRecords raises ExpiredIterator instead.

    A fake, because a real iterator takes five minutes to expire.
    """

    def __init__(self, inner: EmbeddedStream, n: int) -> None:
        self._inner = inner
        self._n = n
        self._calls = 0
        self.expired = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def get_records(self, iterator: str, limit: int = 10_000) -> GetRecordsResult:
        self._calls += 1
        if self._calls % self._n == 0:
            self.expired += 1
            raise ExpiredIterator("iterator expired")
        return await self._inner.get_records(iterator, limit)


async def _read_all(reader: ShardReader) -> list[str]:
    seen: list[str] = []
    while True:
        batch = await reader.read()
        seen.extend(r.sequence_number for r in batch.records)
        if batch.shard_end:
            return seen


async def test_reads_after_checkpoint_through_expiry_to_shard_end(tmp_path: Path) -> None:
    stream = EmbeddedStream.from_uri(f"sqlite:///{tmp_path}/stream.db")
    try:
        await stream.create(1)
        await put_all(stream, event_records(1000, "r"))
        shard = (await stream.describe()).shards[0].shard_id
        await stream.split_shard(shard)  # closes the shard: reading it ends
        flaky = ExpiringEvery(stream, 3)
        everything = await _read_all(
            ShardReader(stream, shard, checkpoint=None, initial_position="TRIM_HORIZON", batch_records=100)
        )
        assert len(everything) == 1000
        resumed = await _read_all(
            ShardReader(
                flaky,  # type: ignore[arg-type]
                shard,
                checkpoint=everything[399],
                initial_position="LATEST",
                batch_records=50,
            )
        )
        assert flaky.expired >= 3
        assert resumed == everything[400:], "after the checkpoint, in order, nothing twice or skipped"
    finally:
        await stream.close()
