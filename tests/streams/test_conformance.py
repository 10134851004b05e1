"""What every `Stream` backend guarantees, checked on each (see conftest: embedded, kinesalite).

Kinesis semantics that consumers and front ends rely on: MD5 routing, per-shard order, every
iterator type, limits refused before anything is written, and reshard lineage.
"""

from __future__ import annotations

import hashlib
import time

import pytest

from processor.errors import ExpiredIterator, InvalidRequest, StreamNotFound
from processor.streams.base import (
    MAX_HASH_KEY,
    GetRecordsResult,
    IteratorType,
    PutRecord,
    Record,
    Stream,
)
from tests.streams.conftest import MakeStream, embedded_only
from tests.support.wait import wait_until


def shard_id(index: int) -> str:
    return f"shardId-{index:012d}"


def md5_shard(partition_key: str, shard_count: int) -> str:
    """The shard Kinesis picks among `shard_count` uniform shards, computed here from MD5."""
    key = int.from_bytes(hashlib.md5(partition_key.encode()).digest(), "big")
    return shard_id(key // ((MAX_HASH_KEY + 1) // shard_count))


async def read_shard(
    stream: Stream, shard: str, kind: IteratorType = IteratorType.TRIM_HORIZON, **position: object
) -> tuple[list[Record], GetRecordsResult]:
    """Every record from the iterator on: until a batch comes back empty or the shard ends."""
    iterator: str | None = await stream.get_shard_iterator(shard, kind, **position)  # type: ignore[arg-type]
    records: list[Record] = []
    while True:
        assert iterator is not None
        result = await stream.get_records(iterator)
        records.extend(result.records)
        iterator = result.next_iterator
        if not result.records or iterator is None:
            return records, result


async def put(stream: Stream, keys: list[str], tag: str = "r") -> list[tuple[str, str]]:
    results = await stream.put_records([PutRecord(f"{tag}-{i}".encode(), k) for i, k in enumerate(keys)])
    assert all(r.ok for r in results), results
    return [(r.shard_id or "", r.sequence_number or "") for r in results]


async def test_create_is_idempotent_and_shards_cover_the_hash_space(make_stream: MakeStream) -> None:
    stream = await make_stream(4)
    await stream.create(4)
    await stream.create(2)
    desc = await stream.describe()
    assert desc.status == "ACTIVE"
    assert [s.shard_id for s in desc.shards] == [shard_id(i) for i in range(4)]
    assert desc.shards[0].starting_hash_key == 0
    assert desc.shards[-1].ending_hash_key == MAX_HASH_KEY
    for left, right in zip(desc.shards, desc.shards[1:], strict=False):
        assert right.starting_hash_key == left.ending_hash_key + 1
    assert [s.starting_hash_key for s in desc.shards] == [i * 2**126 for i in range(4)]
    assert all(s.is_open and s.parent_shard_ids == () for s in desc.shards)


async def test_missing_stream_is_not_found(make_stream: MakeStream) -> None:
    stream = await make_stream(None)
    with pytest.raises(StreamNotFound):
        await stream.describe()
    with pytest.raises(StreamNotFound):
        await stream.put_records([PutRecord(b"x", "k")])


async def test_partition_keys_route_by_md5(make_stream: MakeStream) -> None:
    stream = await make_stream(4)
    # MD5 high bits: "a" 0x0cc1.., "alice" 0x6384.., "b" 0x92eb.., "user-1" 0xd6d7..
    known = {"a": 0, "alice": 1, "b": 2, "user-1": 3}
    keys = [*known, *(f"user-{i}" for i in range(100))]
    placed = await put(stream, keys)
    for key, (shard, _) in zip(keys, placed, strict=True):
        assert shard == md5_shard(key, 4), key
    for key, index in known.items():
        assert md5_shard(key, 4) == shard_id(index)
    for index in range(4):
        records, _ = await read_shard(stream, shard_id(index))
        assert sorted(r.partition_key for r in records) == sorted(
            k for k in keys if md5_shard(k, 4) == shard_id(index)
        )


async def test_explicit_hash_key_overrides_the_partition_key(make_stream: MakeStream) -> None:
    stream = await make_stream(4)
    results = await stream.put_records(
        [PutRecord(b"x", "a", explicit_hash_key=MAX_HASH_KEY), PutRecord(b"y", "a", explicit_hash_key=2**126)]
    )
    assert [r.shard_id for r in results] == [shard_id(3), shard_id(1)]


async def test_sequence_numbers_increase_within_a_shard_and_reads_keep_put_order(
    make_stream: MakeStream,
) -> None:
    stream = await make_stream(2)
    put_order: dict[str, list[tuple[str, bytes]]] = {}
    for batch in range(5):
        keys = [f"k{i % 7}" for i in range(50)]
        batch_records = [PutRecord(f"{batch}-{i}".encode(), k) for i, k in enumerate(keys)]
        for record, result in zip(batch_records, await stream.put_records(batch_records), strict=True):
            assert result.shard_id is not None and result.sequence_number is not None
            put_order.setdefault(result.shard_id, []).append((result.sequence_number, record.data))
    assert sum(len(v) for v in put_order.values()) == 250
    for shard, expected in put_order.items():
        sequences = [int(s) for s, _ in expected]
        assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
        records, _ = await read_shard(stream, shard)
        assert [(r.sequence_number, r.data) for r in records] == expected


async def test_get_records_honours_the_limit_and_continues(make_stream: MakeStream) -> None:
    stream = await make_stream(1)
    await put(stream, ["k"] * 25)
    iterator = await stream.get_shard_iterator(shard_id(0), IteratorType.TRIM_HORIZON)
    seen: list[bytes] = []
    for _ in range(3):
        result = await stream.get_records(iterator, limit=10)
        seen.extend(r.data for r in result.records)
        assert result.next_iterator is not None
        iterator = result.next_iterator
    assert seen == [f"r-{i}".encode() for i in range(25)]
    empty = await stream.get_records(iterator, limit=10)
    assert empty.records == () and empty.millis_behind_latest == 0 and empty.next_iterator is not None


async def test_iterator_positions(make_stream: MakeStream) -> None:
    stream = await make_stream(1)
    shard = shard_id(0)
    first = await put(stream, ["k"] * 5, tag="first")
    latest = await stream.get_shard_iterator(shard, IteratorType.LATEST)
    second = await put(stream, ["k"] * 3, tag="second")

    everything, _ = await read_shard(stream, shard)
    assert [r.data for r in everything] == [f"first-{i}".encode() for i in range(5)] + [
        f"second-{i}".encode() for i in range(3)
    ]
    result = await stream.get_records(latest)
    assert [r.sequence_number for r in result.records] == [s for _, s in second]

    at, _ = await read_shard(stream, shard, IteratorType.AT_SEQUENCE_NUMBER, sequence_number=first[2][1])
    assert [r.sequence_number for r in at] == [s for _, s in first[2:] + second]
    after, _ = await read_shard(
        stream, shard, IteratorType.AFTER_SEQUENCE_NUMBER, sequence_number=first[2][1]
    )
    assert [r.sequence_number for r in after] == [s for _, s in first[3:] + second]


async def test_at_timestamp_starts_at_the_first_record_that_arrived_then(make_stream: MakeStream) -> None:
    stream = await make_stream(1)
    shard = shard_id(0)
    await put(stream, ["k"] * 3, tag="before")
    records, _ = await read_shard(stream, shard)
    arrived = records[-1].approximate_arrival
    wait_until(lambda: time.time() > arrived + 0.05, what="the clock to move past the first put")
    boundary = time.time()
    wait_until(lambda: time.time() > boundary + 0.05, what="the clock to move past the boundary")
    await put(stream, ["k"] * 2, tag="after")
    later, _ = await read_shard(stream, shard, IteratorType.AT_TIMESTAMP, timestamp=boundary)
    assert [r.data for r in later] == [b"after-0", b"after-1"]
    with pytest.raises(InvalidRequest, match="timestamp"):
        await stream.get_shard_iterator(shard, IteratorType.AT_TIMESTAMP, timestamp=time.time() + 60)


async def test_caught_up_reader_is_zero_millis_behind(make_stream: MakeStream) -> None:
    stream = await make_stream(1)
    await put(stream, ["k"] * 4)
    iterator = await stream.get_shard_iterator(shard_id(0), IteratorType.TRIM_HORIZON)
    result = await stream.get_records(iterator)
    assert len(result.records) == 4
    assert result.millis_behind_latest == 0
    assert result.records[0].approximate_arrival == pytest.approx(time.time(), abs=60)


@embedded_only("emulators keep iterators for the fixed five minutes; the test needs a 0.2 s TTL")
async def test_an_iterator_expires(make_stream: MakeStream) -> None:
    stream = await make_stream(1, iterator_ttl=0.2)
    await put(stream, ["k"] * 2)
    iterator = await stream.get_shard_iterator(shard_id(0), IteratorType.TRIM_HORIZON)
    issued = time.time()
    wait_until(lambda: time.time() > issued + 0.3, what="the iterator TTL to pass")
    with pytest.raises(ExpiredIterator, match="expired"):
        await stream.get_records(iterator)
    fresh = await stream.get_shard_iterator(shard_id(0), IteratorType.TRIM_HORIZON)
    assert len((await stream.get_records(fresh)).records) == 2


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([PutRecord(b"x", "k")] * 501, "500"),
        ([PutRecord(b"x" * (1024 * 1024), "k")], "1 MiB"),
        ([PutRecord(b"x" * 1_000_000, f"k{i}") for i in range(6)], "5 MiB"),
        ([PutRecord(b"x", "")], "partition key"),
        ([PutRecord(b"x", "k" * 257)], "partition key"),
        ([PutRecord(b"x", "k", explicit_hash_key=2**128)], "hash key"),
    ],
    ids=["501-records", "record-over-1MiB", "put-over-5MiB", "empty-key", "key-257", "hash-key"],
)
async def test_limits_are_refused_before_anything_is_written(
    make_stream: MakeStream, records: list[PutRecord], message: str
) -> None:
    stream = await make_stream(1)
    with pytest.raises(InvalidRequest, match=message):
        await stream.put_records(records)
    written, _ = await read_shard(stream, shard_id(0))
    assert written == []


async def test_an_empty_put_writes_nothing(make_stream: MakeStream) -> None:
    stream = await make_stream(1)
    assert await stream.put_records([]) == []


async def test_largest_allowed_records_are_accepted(make_stream: MakeStream, backend: str) -> None:
    stream = await make_stream(1)
    key = "k" * 256
    record = PutRecord(b"x" * (1024 * 1024 - 256), key)
    count = 5 if backend == "embedded" else 1  # 5 MiB through kinesalite takes seconds
    results = await stream.put_records([record] * count)
    assert all(r.ok for r in results)
    records, _ = await read_shard(stream, shard_id(0))
    assert [len(r.data) for r in records] == [len(record.data)] * count


async def test_get_limit_over_10000_is_refused(make_stream: MakeStream) -> None:
    stream = await make_stream(1)
    iterator = await stream.get_shard_iterator(shard_id(0), IteratorType.TRIM_HORIZON)
    with pytest.raises(InvalidRequest):
        await stream.get_records(iterator, limit=10_001)


async def test_unknown_shard_is_an_invalid_request(make_stream: MakeStream) -> None:
    stream = await make_stream(2)
    with pytest.raises(InvalidRequest):
        await stream.get_shard_iterator(shard_id(99), IteratorType.TRIM_HORIZON)
    with pytest.raises(InvalidRequest):
        await stream.split_shard(shard_id(99))


async def test_split_closes_the_parent_and_opens_two_children(make_stream: MakeStream, backend: str) -> None:
    stream = await make_stream(1)
    parent = shard_id(0)
    before = await put(stream, [f"u{i}" for i in range(20)], tag="before")
    await stream.split_shard(parent)

    desc = await stream.describe()
    shards = {s.shard_id: s for s in desc.shards}
    assert not shards[parent].is_open
    ending = shards[parent].ending_sequence
    assert ending is not None and int(ending) >= int(before[-1][1])
    children = [s for s in desc.shards if s.parent_shard_ids == (parent,)]
    assert len(children) == 2 and all(c.is_open for c in children)
    low, high = sorted(children, key=lambda s: s.starting_hash_key)
    assert (low.starting_hash_key, low.ending_hash_key) == (0, 2**127 - 1)
    assert (high.starting_hash_key, high.ending_hash_key) == (2**127, MAX_HASH_KEY)
    assert {s.shard_id for s in desc.open_shards} == {low.shard_id, high.shard_id}

    after = await put(stream, [f"u{i}" for i in range(20)], tag="after")
    assert {shard for shard, _ in after} <= {low.shard_id, high.shard_id}
    for (shard, _), i in zip(after, range(20), strict=True):
        key = int.from_bytes(hashlib.md5(f"u{i}".encode()).digest(), "big")
        assert shard == (low.shard_id if key < 2**127 else high.shard_id)

    records, last = await read_shard(stream, parent)
    assert [r.sequence_number for r in records] == [s for _, s in before]
    assert last.next_iterator is None
    if backend == "embedded":  # kinesalite leaves ChildShards out of GetRecords
        assert set(last.child_shard_ids) == {low.shard_id, high.shard_id}


async def test_split_at_a_chosen_hash_key(make_stream: MakeStream) -> None:
    stream = await make_stream(1)
    await stream.split_shard(shard_id(0), 2**100)
    children = sorted((await stream.describe()).open_shards, key=lambda s: s.starting_hash_key)
    assert [(c.starting_hash_key, c.ending_hash_key) for c in children] == [
        (0, 2**100 - 1),
        (2**100, MAX_HASH_KEY),
    ]


async def test_merge_closes_both_parents_and_opens_one_child(make_stream: MakeStream, backend: str) -> None:
    stream = await make_stream(2)
    a, b = shard_id(0), shard_id(1)
    before = await put(stream, [f"m{i}" for i in range(30)])
    await stream.merge_shards(a, b)

    desc = await stream.describe()
    shards = {s.shard_id: s for s in desc.shards}
    assert not shards[a].is_open and not shards[b].is_open
    (child,) = desc.open_shards
    assert set(child.parent_shard_ids) == {a, b}
    assert (child.starting_hash_key, child.ending_hash_key) == (0, MAX_HASH_KEY)

    after = await put(stream, ["m0", "m1"])
    assert {shard for shard, _ in after} == {child.shard_id}
    for parent in (a, b):
        records, last = await read_shard(stream, parent)
        assert [r.sequence_number for r in records] == [s for shard, s in before if shard == parent]
        assert last.next_iterator is None
        if backend == "embedded":  # kinesalite leaves ChildShards out of GetRecords
            assert last.child_shard_ids == (child.shard_id,)


@embedded_only("kinesalite splits a closed shard again where Kinesis refuses")
async def test_a_closed_shard_cannot_be_split_again(make_stream: MakeStream) -> None:
    stream = await make_stream(1)
    await stream.split_shard(shard_id(0))
    with pytest.raises(InvalidRequest):
        await stream.split_shard(shard_id(0))


async def test_latest_on_a_closed_shard_is_already_at_its_end(make_stream: MakeStream) -> None:
    stream = await make_stream(1)
    await put(stream, ["k"] * 3)
    await stream.split_shard(shard_id(0))
    iterator = await stream.get_shard_iterator(shard_id(0), IteratorType.LATEST)
    result = await stream.get_records(iterator)
    assert result.records == () and result.next_iterator is None


@embedded_only("kinesalite has no UpdateShardCount")
async def test_update_shard_count_reshapes_uniformly(make_stream: MakeStream) -> None:
    stream = await make_stream(2)
    await stream.update_shard_count(4)
    desc = await stream.describe()
    opened = sorted(desc.open_shards, key=lambda s: s.starting_hash_key)
    assert [s.starting_hash_key for s in opened] == [i * 2**126 for i in range(4)]
    assert [s.parent_shard_ids for s in opened] == [(shard_id(0),)] * 2 + [(shard_id(1),)] * 2
    assert all(not s.is_open for s in desc.shards if s.shard_id in (shard_id(0), shard_id(1)))

    await stream.update_shard_count(4)
    assert len((await stream.describe()).shards) == 6

    await stream.update_shard_count(1)
    (single,) = (await stream.describe()).open_shards
    assert set(single.parent_shard_ids) == {s.shard_id for s in opened}
