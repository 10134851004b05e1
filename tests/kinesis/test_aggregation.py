"""KPL aggregation: our format checked against aws-kinesis-agg (AWS's library) in both directions."""

from __future__ import annotations

import base64
from typing import Any

import aws_kinesis_agg.aggregator as agg_lib
import aws_kinesis_agg.deaggregator as deagg_lib
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.streams.base import MAX_RECORD_BYTES, IteratorType, PutRecord
from processor.streams.kinesis import KinesisStream
from processor.streams.kpl import AggregateBuilder, SubRecord, aggregate, deaggregate, pack


def lambda_event(data: bytes) -> dict[str, Any]:
    """The record shape aws_kinesis_agg's deaggregator takes (a Lambda Kinesis event record)."""
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "sequenceNumber": "1",
            "approximateArrivalTimestamp": 0,
            "partitionKey": "outer",
            "data": base64.b64encode(data),
        }
    }


def theirs_read(data: bytes) -> list[tuple[str, bytes]]:
    out = deagg_lib.deaggregate_records([lambda_event(data)])
    return [(r["kinesis"]["partitionKey"], base64.b64decode(r["kinesis"]["data"])) for r in out]


def theirs_write(records: list[SubRecord]) -> bytes:
    aggregator = agg_lib.RecordAggregator()
    for r in records:
        assert aggregator.add_user_record(r.partition_key, r.data, r.explicit_hash_key) is None
    _, _, data = aggregator.clear_and_get().get_contents()
    return bytes(data)


sub_records = st.lists(
    st.builds(
        SubRecord,
        st.text(min_size=1, max_size=20).filter(lambda s: "\x00" not in s),
        st.binary(max_size=300),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=25, deadline=None)
@given(sub_records)
def test_ours_read_by_aws_kinesis_agg_and_back(records: list[SubRecord]) -> None:
    ours = aggregate(records)
    assert theirs_read(ours) == [(r.partition_key, r.data) for r in records]
    assert deaggregate(theirs_write(records)) == records


def test_explicit_hash_keys_both_ways() -> None:
    records = [SubRecord(f"k{i}", f"v{i}".encode(), str(i * 10**30)) for i in range(5)]
    assert deaggregate(theirs_write(records)) == records
    out = deagg_lib.deaggregate_records([lambda_event(aggregate(records))])
    assert [r["kinesis"]["explicitHashKey"] for r in out] == [r.explicit_hash_key for r in records]


def test_builder_size_is_exact_and_plain_data_is_not_aggregated() -> None:
    builder = AggregateBuilder()
    for i in range(50):
        record = SubRecord(f"key-{i % 9}", bytes(i * 37 % 251) * i, str(i % 4) if i % 3 else None)
        before = builder.size
        assert not builder.try_add(record, before), "a record that does not fit changes nothing"
        assert builder.size == before
        assert builder.try_add(record, 10**9)
        assert builder.size == len(builder.build()) + len(b"key-0")
    limit = builder.size + 40
    assert builder.try_add(SubRecord("key-1", b"x" * 10), limit)
    assert not builder.try_add(SubRecord("key-1", b"x" * 40), limit)
    assert deaggregate(b"plain event") is None
    broken = bytearray(aggregate([SubRecord("k", b"v")]))
    broken[-1] ^= 1
    assert deaggregate(bytes(broken)) is None, "an MD5 mismatch means a plain record, as in the KCL"


async def test_aggregated_put_and_read_through_kinesalite(kinesalite_endpoint: str, stream_name: str) -> None:
    base = f"kinesis://{stream_name}?region=us-east-1&endpoint={kinesalite_endpoint}&limits=off"
    async with (
        KinesisStream.from_uri(base, aggregate=True) as writer,
        KinesisStream.from_uri(base) as reader,
    ):
        await writer.create(2)
        records = [PutRecord(f"event-{i}".encode() * 50, f"user-{i % 13}") for i in range(3000)]
        results = []
        for lo in range(0, len(records), writer.max_put_records):
            results += await writer.put_records(records[lo : lo + writer.max_put_records])
        assert all(r.ok for r in results)
        client = await reader._get_client()
        raw: list[bytes] = []
        read_back: list[tuple[str, bytes]] = []
        for shard in (await reader.describe()).shards:
            it = await reader.get_shard_iterator(shard.shard_id, IteratorType.TRIM_HORIZON)
            got = await reader.get_records(it)
            subs = [r.sub_sequence_number for r in got.records]
            assert subs[0] == 0
            read_back.extend((r.partition_key, r.data) for r in got.records)
            direct = await client.get_shard_iterator(
                StreamName=stream_name, ShardId=shard.shard_id, ShardIteratorType="TRIM_HORIZON"
            )
            answer = await client.get_records(ShardIterator=direct["ShardIterator"])
            raw.extend(r["Data"] for r in answer["Records"])
        assert len(raw) < 20, "3,000 small events travel as a handful of Kinesis records"
        assert all(len(r) <= MAX_RECORD_BYTES for r in raw)
        assert sorted(read_back) == sorted((r.partition_key, r.data) for r in records)
        assert sorted(p for data in raw for p in theirs_read(data)) == sorted(read_back)
        by_shard = {r.shard_id for r in results}
        assert len(by_shard) == 2


async def test_reads_records_written_by_the_aws_library(kinesalite_endpoint: str, stream_name: str) -> None:
    uri = f"kinesis://{stream_name}?region=us-east-1&endpoint={kinesalite_endpoint}&limits=off"
    async with KinesisStream.from_uri(uri) as stream:
        await stream.create(1)
        records = [SubRecord(f"k{i}", f"payload {i}".encode()) for i in range(100)]
        blob = theirs_write(records)
        await stream.put_records([PutRecord(blob, "k0"), PutRecord(b"plain", "p")])
        shard = (await stream.describe()).shards[0].shard_id
        got = await stream.get_records(await stream.get_shard_iterator(shard, IteratorType.TRIM_HORIZON))
        assert [(r.partition_key, r.data) for r in got.records[:100]] == [
            (r.partition_key, r.data) for r in records
        ]
        assert [r.sub_sequence_number for r in got.records[:100]] == list(range(100))
        assert len({r.sequence_number for r in got.records[:100]}) == 1
        assert (got.records[100].data, got.records[100].sub_sequence_number) == (b"plain", 0)


def builder_pack(records: list[SubRecord], limit: int) -> list[tuple[bytes | None, int]]:
    """What `pack` must produce, built one record at a time with `AggregateBuilder`."""
    out: list[tuple[bytes | None, int]] = []
    builder = AggregateBuilder()
    for record in records:
        if builder.try_add(record, limit):
            continue
        if len(builder):
            out.append((builder.build(), len(builder)))
        builder = AggregateBuilder()
        if not builder.try_add(record, limit):
            out.append((None, 1))
    if len(builder):
        out.append((builder.build(), len(builder)))
    return out


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.builds(
            SubRecord,
            st.sampled_from(["a", "bb", "ключ", "k" * 200, "é" * 70]),
            st.binary(max_size=400).map(lambda b: b * 50) | st.binary(max_size=300),
        ),
        max_size=60,
    ),
    st.integers(min_value=0, max_value=40_000),
)
def test_pack_builds_the_bytes_of_the_builder(records: list[SubRecord], limit: int) -> None:
    """Same aggregated records, same cuts at the limit, same oversized records left plain."""
    packed = pack([r.partition_key for r in records], [r.data for r in records], limit)
    assert packed == builder_pack(records, limit)
    assert sum(count for _, count in packed) == len(records)
    start = 0
    for blob, count in packed:
        if blob is not None:
            assert deaggregate(blob) == records[start : start + count]
            assert len(blob) + len(records[start].partition_key.encode()) <= limit
        start += count
