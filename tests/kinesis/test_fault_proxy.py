"""The fault-injecting proxy forwards the Kinesis JSON protocol and injects each fault it offers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from tests.support.kinesis_faults import KinesisFaultProxy
from tests.support.wait import eventually


async def _client(endpoint: str) -> Any:
    config = AioConfig(retries={"max_attempts": 0}, connect_timeout=2, read_timeout=5)
    return get_session().create_client(
        "kinesis", region_name="us-east-1", endpoint_url=endpoint, config=config
    )


@pytest.fixture
async def proxy(kinesalite_endpoint: str) -> AsyncIterator[KinesisFaultProxy]:
    async with KinesisFaultProxy(kinesalite_endpoint) as p:
        yield p


async def _make_stream(client: Any, name: str) -> None:
    await client.create_stream(StreamName=name, ShardCount=1)

    async def active() -> bool:
        d = await client.describe_stream_summary(StreamName=name)
        return bool(d["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE")

    await eventually(active, what="stream ACTIVE")


async def test_forwards_and_fails_chosen_records(proxy: KinesisFaultProxy, stream_name: str) -> None:
    async with await _client(proxy.endpoint) as client:
        await _make_stream(client, stream_name)
        proxy.fail_records(lambda r: r.data.endswith(b"1"), "InternalFailure")
        records = [{"Data": f"r{i}".encode(), "PartitionKey": "k"} for i in range(10)]
        answer = await client.put_records(StreamName=stream_name, Records=records)
        assert answer["FailedRecordCount"] == 1
        assert answer["Records"][1]["ErrorCode"] == "InternalFailure"
        assert all("SequenceNumber" in r for i, r in enumerate(answer["Records"]) if i != 1)
        assert [r.data for r in proxy.put_log] == [f"r{i}".encode() for i in range(10) if i != 1]
        shard = proxy.put_log[0].shard_id
        it = await client.get_shard_iterator(
            StreamName=stream_name, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
        )
        got = await client.get_records(ShardIterator=it["ShardIterator"])
        assert [r["Data"] for r in got["Records"]] == [r.data for r in proxy.put_log]


async def test_throttle_down_not_found_and_stall(proxy: KinesisFaultProxy, stream_name: str) -> None:
    async with await _client(proxy.endpoint) as client:
        await _make_stream(client, stream_name)
        put = {"StreamName": stream_name, "Records": [{"Data": b"x", "PartitionKey": "k"}]}
        proxy.throttle_next(1)
        with pytest.raises(ClientError) as err:
            await client.put_records(**put)
        assert err.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
        await client.put_records(**put)
        proxy.down = True
        with pytest.raises(ClientError) as err:
            await client.put_records(**put)
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        proxy.down = False
        proxy.not_found = True
        with pytest.raises(ClientError) as err:
            await client.put_records(**put)
        assert err.value.response["Error"]["Code"] == "ResourceNotFoundException"
        proxy.clear()
        proxy.stall = True
        task = asyncio.create_task(client.put_records(**put))
        await eventually(lambda: _async(proxy.calls["PutRecords"] == 5), what="stalled call arrives")
        assert not task.done()
        proxy.stall = False
        assert (await task)["FailedRecordCount"] == 0
        assert len(proxy.put_log) == 2


async def _async(value: bool) -> bool:
    return value


def test_sync_use_from_a_thread(kinesalite_endpoint: str, stream_name: str) -> None:
    import boto3

    with KinesisFaultProxy(kinesalite_endpoint) as proxy:
        client = boto3.client("kinesis", region_name="us-east-1", endpoint_url=proxy.endpoint)
        client.create_stream(StreamName=stream_name, ShardCount=1)
        proxy.fail_records(1.0, calls=1)
        first = client.put_records(StreamName=stream_name, Records=[{"Data": b"a", "PartitionKey": "k"}])
        assert first["Records"][0]["ErrorCode"] == "ProvisionedThroughputExceededException"
        second = client.put_records(StreamName=stream_name, Records=[{"Data": b"a", "PartitionKey": "k"}])
        assert second["FailedRecordCount"] == 0
        assert [r.data for r in proxy.put_log] == [b"a"]
