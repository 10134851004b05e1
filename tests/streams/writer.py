"""A writer process for the multi-process tests: `python -m tests.streams.writer DB NAME TAG BATCHES`.

Creates the stream (4 shards; another writer may be doing the same at once), prints `ready`, waits
for a line on stdin, then puts BATCHES batches of 500 records `TAG-<n>` and prints `done`.
"""

from __future__ import annotations

import asyncio
import sys

from processor.streams.base import PutRecord
from processor.streams.embedded import EmbeddedStream


async def main(db: str, name: str, tag: str, batches: int) -> None:
    async with EmbeddedStream(db, name) as stream:
        await stream.create(4)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        for b in range(batches):
            records = [PutRecord(f"{tag}-{b * 500 + i}".encode(), f"{tag}-{i}") for i in range(500)]
            results = await stream.put_records(records)
            assert all(r.ok for r in results)
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
