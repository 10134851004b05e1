"""Aggregated puts of more than 500 user records: every real Kinesis limit holds on what is sent.

The fault proxy sits in front of kinesalite and records each PutRecords request as it passes, so
the tests count the calls and weigh them as Kinesis would (data plus partition key). The fast
KPL unpacker is checked against records written by aws-kinesis-agg and on damaged input.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import aws_kinesis_agg.aggregator as agg_lib
import orjson
import pytest
from aiohttp import web
from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.errors import InvalidRequest
from processor.streams.base import (
    MAX_HASH_KEY,
    MAX_PUT_BYTES,
    MAX_PUT_RECORDS,
    MAX_RECORD_BYTES,
    IteratorType,
    PutRecord,
    hash_key,
)
from processor.streams.embedded import EmbeddedStream
from processor.streams.kinesis import AGGREGATED_PUT_RECORDS, KinesisStream, _Outgoing, _requests
from processor.streams.kpl import MAGIC, SubRecord, aggregate, deaggregate, unpack
from tests.support.kinesalite import AWS_TEST_ENV
from tests.support.kinesis_faults import KinesisFaultProxy


@dataclass(frozen=True, slots=True)
class Request:
    records: int
    bytes: int
    largest: int


class WeighingProxy(KinesisFaultProxy):
    """The fault proxy, also noting the record count and bytes of every PutRecords request."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.requests: list[Request] = []

    async def _put_records(self, request: web.Request, body: bytes) -> web.Response:
        entries = orjson.loads(body)["Records"]
        sizes = [len(base64.b64decode(e["Data"])) + len(e["PartitionKey"].encode()) for e in entries]
        self.requests.append(Request(len(sizes), sum(sizes), max(sizes)))
        return await super()._put_records(request, body)


@pytest.fixture
async def proxy(kinesalite_endpoint: str) -> AsyncIterator[WeighingProxy]:
    p = WeighingProxy(kinesalite_endpoint)
    async with p:
        yield p


def uri(name: str, endpoint: str) -> str:
    return f"kinesis://{name}?region=us-east-1&endpoint={endpoint}&limits=off&idle_wait=0"


def events(n: int, size: int) -> list[PutRecord]:
    return [
        PutRecord(orjson.dumps({"event_id": f"e{i}", "pad": "x" * size}), f"anon-{i % 97}") for i in range(n)
    ]


async def read_all(stream: KinesisStream) -> dict[str, list[tuple[str, bytes, int]]]:
    """Per shard, every user record as (sequence number, data, sub-sequence), in stream order."""
    out: dict[str, list[tuple[str, bytes, int]]] = {}
    for shard in (await stream.describe()).shards:
        got_all = out.setdefault(shard.shard_id, [])
        iterator: str | None = await stream.get_shard_iterator(shard.shard_id, IteratorType.TRIM_HORIZON)
        while iterator is not None:
            got = await stream.get_records(iterator)
            got_all.extend((r.sequence_number, r.data, r.sub_sequence_number) for r in got.records)
            iterator = got.next_iterator
            if not got.records and got.millis_behind_latest == 0:
                break
    return out


def test_max_put_records_says_how_many_user_records_a_call_takes(tmp_path: Path) -> None:
    assert KinesisStream.from_uri("kinesis://s?region=us-east-1").max_put_records == MAX_PUT_RECORDS
    aggregating = KinesisStream.from_uri("kinesis://s?region=us-east-1", aggregate=True)
    assert aggregating.max_put_records == AGGREGATED_PUT_RECORDS >= 2 * MAX_PUT_RECORDS
    assert EmbeddedStream(tmp_path / "s.db").max_put_records == MAX_PUT_RECORDS


async def test_a_full_call_round_trips_in_order_within_every_limit(
    proxy: WeighingProxy, kinesalite_endpoint: str, stream_name: str
) -> None:
    records = events(AGGREGATED_PUT_RECORDS, 6000)
    assert sum(len(r.data) for r in records) > MAX_PUT_BYTES, "too much for one request"
    async with (
        KinesisStream.from_uri(uri(stream_name, proxy.endpoint), aggregate=True) as writer,
        KinesisStream.from_uri(uri(stream_name, kinesalite_endpoint)) as reader,
    ):
        await writer.create(3)
        results = await writer.put_records(records)
        assert all(r.ok for r in results)

        sent = proxy.requests
        assert len(sent) == proxy.calls["PutRecords"] >= 2
        assert all(1 <= r.records <= MAX_PUT_RECORDS for r in sent)
        assert all(r.bytes <= MAX_PUT_BYTES for r in sent)
        assert all(r.largest <= MAX_RECORD_BYTES for r in sent)
        assert sum(r.records for r in sent) < 30, "a call's events travel as a few dozen Kinesis records"
        assert all(deaggregate(p.data) is not None for p in proxy.put_log)

        by_shard = await read_all(reader)
        assert sum(map(len, by_shard.values())) == len(records)
        for shard_id, stored in by_shard.items():
            mine = [(res, rec) for res, rec in zip(results, records, strict=True) if res.shard_id == shard_id]
            assert [d for _, d, _ in stored] == [rec.data for _, rec in mine], "each shard in put order"
            assert [s for s, _, _ in stored] == [res.sequence_number for res, _ in mine]


async def test_a_failed_request_holds_back_later_records_of_its_shards(
    proxy: WeighingProxy, kinesalite_endpoint: str, stream_name: str
) -> None:
    records = events(AGGREGATED_PUT_RECORDS, 6000)
    async with (
        KinesisStream.from_uri(uri(stream_name, proxy.endpoint), aggregate=True) as writer,
        KinesisStream.from_uri(uri(stream_name, kinesalite_endpoint)) as reader,
    ):
        await writer.create(1)
        proxy.fail_records(lambda _: True, calls=1)
        results = await writer.put_records(records)
        assert proxy.calls["PutRecords"] == 1, "nothing of the shard sent after its first request failed"
        assert all(r.error_code == "ProvisionedThroughputExceededException" for r in results)

        results = await writer.put_records(records)
        assert all(r.ok for r in results)
        stored = [d for shard in (await read_all(reader)).values() for _, d, _ in shard]
        assert sorted(stored) == sorted(r.data for r in records), "everything once, nothing twice"


async def test_explicit_hash_keys_and_oversized_records_keep_each_shards_order(
    proxy: WeighingProxy, kinesalite_endpoint: str, stream_name: str
) -> None:
    """Explicit hash keys take the builder path, a record too big to aggregate travels plain:
    both still land where predicted and in put order."""
    plain = events(300, 50)
    steered = [
        PutRecord(
            orjson.dumps({"event_id": f"h{i}"}), f"anon-{i % 7}", explicit_hash_key=i * MAX_HASH_KEY // 40
        )
        for i in range(40)
    ]
    big = PutRecord(b"B" * (MAX_RECORD_BYTES - 100), "anon-3")
    async with (
        KinesisStream.from_uri(uri(stream_name, proxy.endpoint), aggregate=True) as writer,
        KinesisStream.from_uri(uri(stream_name, kinesalite_endpoint)) as reader,
    ):
        await writer.create(3)
        calls = ([*plain[:150], big, *plain[150:]], [*plain[:100], *steered, *plain[100:]])
        for records in calls:
            proxy.requests.clear()
            results = await writer.put_records(records)
            assert all(r.ok for r in results)
            assert proxy.requests[0].records < 20, "aggregated, a handful of Kinesis records"
        sent = [*calls[0], *calls[1]]
        placed = {shard.shard_id: shard for shard in (await reader.describe()).shards}
        for shard_id, stored in (await read_all(reader)).items():
            shard = placed[shard_id]
            mine = [
                r.data
                for r in sent
                if shard.starting_hash_key
                <= (r.explicit_hash_key if r.explicit_hash_key is not None else hash_key(r.partition_key))
                <= shard.ending_hash_key
            ]
            assert [d for _, d, _ in stored] == mine, "each shard in put order"


async def test_the_prebuilt_body_is_the_one_signed(kinesalite_endpoint: str, stream_name: str) -> None:
    """The PutRecords body is built by shardflow, not botocore; SigV4 must cover that body (real
    AWS refuses anything else, emulators do not check), so the request is signed again here."""
    sent: list[Any] = []
    async with KinesisStream.from_uri(uri(stream_name, kinesalite_endpoint), aggregate=True) as writer:
        await writer.create(2)
        client = await writer._get_client()
        client.meta.events.register(
            "before-send.kinesis.PutRecords", lambda request, **_: sent.append(request)
        )
        results = await writer.put_records(events(1000, 20))
        assert all(r.ok for r in results)
    (request,) = sent
    body = request.body
    records = orjson.loads(body)["Records"]
    assert sum(len(deaggregate(base64.b64decode(r["Data"])) or ()) for r in records) == 1000
    headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
    authorization = headers["Authorization"]
    signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    again = AWSRequest(
        method=request.method,
        url=request.url,
        headers={k: v for k, v in headers.items() if k.lower() in signed and k.lower() != "host"},
        data=body,
    )
    when = dt.datetime.strptime(headers["X-Amz-Date"], SIGV4_TIMESTAMP)
    credentials = Credentials(AWS_TEST_ENV["AWS_ACCESS_KEY_ID"], AWS_TEST_ENV["AWS_SECRET_ACCESS_KEY"])
    with mock.patch("botocore.auth.get_current_datetime", return_value=when):
        SigV4Auth(credentials, "kinesis", "us-east-1").add_auth(again)
    assert again.headers["Authorization"] == authorization


async def test_more_than_max_put_records_is_refused_before_sending(
    proxy: WeighingProxy, stream_name: str
) -> None:
    async with KinesisStream.from_uri(uri(stream_name, proxy.endpoint), aggregate=True) as writer:
        await writer.create(1)
        with pytest.raises(InvalidRequest, match=str(AGGREGATED_PUT_RECORDS)):
            await writer.put_records(events(AGGREGATED_PUT_RECORDS + 1, 10))
        assert proxy.calls["PutRecords"] == 0


def test_requests_hold_at_most_500_records_and_5_mib() -> None:
    """More aggregated records than one request takes needs hundreds of shards, so the planner
    is checked on its own with records of chosen sizes."""

    def packed(sizes: list[int]) -> list[tuple[_Outgoing, list[int]]]:
        return [(_Outgoing(b"", "k", None, size, "s", 0), [i]) for i, size in enumerate(sizes)]

    small = _requests(packed([100] * 1201))
    assert [len(r) for r in small] == [500, 500, 201]
    big = _requests(packed([MAX_RECORD_BYTES] * 11))
    assert [len(r) for r in big] == [5, 5, 1]
    mixed = _requests(packed([MAX_RECORD_BYTES - 10] * 6 + [10] * 3))
    assert [len(r) for r in mixed] == [5, 4]
    assert all(sum(o.size for o, _ in r) <= MAX_PUT_BYTES for r in mixed)
    assert [i for r in mixed for _, index in r for i in index] == list(range(9)), "order kept"


def test_unpack_reads_every_varint_width_as_aws_kinesis_agg_writes_it() -> None:
    aggregator = agg_lib.RecordAggregator()
    sizes = [0, 1, 127, 128, 16383, 16384, 200_000]
    records = [SubRecord(f"key-{i}" * (1 + i * 9), bytes([i]) * n) for i, n in enumerate(sizes)]
    for r in records:
        assert aggregator.add_user_record(r.partition_key, r.data) is None
    _, _, blob = aggregator.clear_and_get().get_contents()
    assert deaggregate(bytes(blob)) == records


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=199))
def test_unpack_never_raises_on_a_damaged_body_with_a_valid_digest(junk: bytes, cut: int) -> None:
    good = aggregate([SubRecord("k", b"v" * 300), SubRecord("other", b"w")])[len(MAGIC) : -16]
    for body in (junk, good[:cut], good[:cut] + junk, junk + good[cut:]):
        blob = MAGIC + body + hashlib.md5(body).digest()
        parts = unpack(blob)
        assert parts is None or all(isinstance(d, bytes) for _, d, _ in parts)
