"""Waiting for a shard's write capacity is not the stream failing to answer.

Real parts: kinesalite, a `KinesisStream` pacing its writes at 1,000 records/s per shard, a real
spool and the real flusher with a put deadline shorter than the pacing takes. The flusher must
not time those puts out (which would mark the stream unreachable, flip /readyz and re-send).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from processor.buffer import Buffer
from processor.flusher import Flusher
from processor.spool import Spool
from processor.streams.kinesis import KinesisStream
from tests.kinesis.test_aggregated_put import read_all

RECORDS = 3_000


async def test_a_put_waiting_for_shard_capacity_is_not_a_timeout(
    tmp_path: Path, kinesalite_endpoint: str, stream_name: str
) -> None:
    uri = (
        f"kinesis://{stream_name}?region=us-east-1&endpoint={kinesalite_endpoint}&idle_wait=0"
        "&shard_write_records=1000&shard_write_bytes=off&shard_read_calls=off&shard_read_bytes=off"
    )
    async with KinesisStream.from_uri(uri) as stream:
        await stream.create(1)
        spool = Spool(tmp_path / "spool")
        buffer = Buffer(64 * 1024 * 1024)
        spool.on_written = buffer.offer
        # 3,000 records at 1,000/s take about 3 s of pacing: far past a 0.5 s put deadline
        flusher = Flusher(stream, spool, buffer, put_timeout=0.5)
        errors: list[str] = []

        async def watch() -> None:
            while True:
                if (
                    flusher.stream_error is not None
                    and flusher.stream_error != "the stream has not answered yet"
                ):
                    errors.append(flusher.stream_error)
                await asyncio.sleep(0.01)

        await spool.open()
        watcher = asyncio.create_task(watch())
        try:
            await flusher.start()
            await spool.append(
                [(f"visitor-{i}", orjson.dumps({"event_id": f"e{i}"})) for i in range(RECORDS)]
            )
            assert await flusher.drain(30.0)
        finally:
            watcher.cancel()
            await flusher.stop()
            await spool.close()
        assert errors == []
        stored = [orjson.loads(data)["event_id"] for records in (await read_all(stream)).values()
                  for _, data, _ in records]  # fmt: skip
    assert sorted(stored) == sorted(f"e{i}" for i in range(RECORDS))
