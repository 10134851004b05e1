"""A stream whose KMS key is disabled (or throttled) refuses whole PutRecords calls: the events
wait in the spool and go out once it takes them again; they are never dropped as invalid.

kinesalite has no encryption, so the KMS answers come from the project's fault proxy in front of
it (a fault that cannot be caused for real here); everything else is real."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from processor.errors import InvalidRequest, StreamUnavailable, Throttled
from processor.ingest.config import IngestConfig
from processor.ingest.server import FrontEnd
from processor.streams.base import PutRecord
from processor.streams.kinesis import KinesisStream
from tests.ingest.conftest import events_on_stream, url
from tests.support.kinesis_faults import KinesisFaultProxy
from tests.support.wait import eventually


@pytest.fixture
async def proxy(kinesalite_endpoint: str) -> AsyncIterator[KinesisFaultProxy]:
    async with KinesisFaultProxy(kinesalite_endpoint) as p:
        yield p


@pytest.fixture
async def kstream(proxy: KinesisFaultProxy) -> AsyncIterator[KinesisStream]:
    stream = KinesisStream.from_uri(
        f"kinesis://kms-{uuid.uuid4().hex[:10]}?region=us-east-1&endpoint={proxy.endpoint}"
    )
    await stream.create(1)
    yield stream
    await stream.close()


async def test_kms_refusals_are_retriable(proxy: KinesisFaultProxy, kstream: KinesisStream) -> None:
    proxy.error_next(1, "KMSDisabledException", targets=["PutRecords"])
    with pytest.raises(StreamUnavailable, match="KMSDisabledException"):
        await kstream.put_records([PutRecord(b"{}", "k")])
    proxy.error_next(1, "KMSThrottlingException", targets=["PutRecords"])
    with pytest.raises(Throttled):
        await kstream.put_records([PutRecord(b"{}", "k")])


async def test_events_wait_out_a_disabled_kms_key(
    tmp_path: Path, proxy: KinesisFaultProxy, kstream: KinesisStream
) -> None:
    proxy.error_next(5, "KMSDisabledException", targets=["PutRecords"])
    await _ten_events_wait_and_arrive(tmp_path, kstream, "e")


async def test_an_error_code_nobody_knows_is_retried_not_dropped(
    tmp_path: Path, proxy: KinesisFaultProxy, kstream: KinesisStream
) -> None:
    """A 4xx code that is not a known request fault (a new service error, say) may be transient:
    the events wait and go out, as with any stream outage. Known request faults stay InvalidRequest."""
    proxy.error_next(1, "SomeNewServiceException", targets=["PutRecords"])
    with pytest.raises(StreamUnavailable, match="SomeNewServiceException"):
        await kstream.put_records([PutRecord(b"{}", "k")])
    proxy.error_next(1, "ValidationException", targets=["PutRecords"])
    with pytest.raises(InvalidRequest):
        await kstream.put_records([PutRecord(b"{}", "k")])

    proxy.error_next(3, "SomeNewServiceException", targets=["PutRecords"])
    await _ten_events_wait_and_arrive(tmp_path, kstream, "u")


async def _ten_events_wait_and_arrive(tmp_path: Path, kstream: KinesisStream, prefix: str) -> None:
    """Ten events accepted (202) while the stream refuses puts all reach it once it takes them."""
    config = IngestConfig(port=0, spool_dir=tmp_path / "spool", drain_timeout=5.0, probe_interval=0.2)
    body = [{"event_id": f"{prefix}-{n}", "anonymous_id": f"v{n}"} for n in range(10)]
    async with FrontEnd(config, kstream) as front, aiohttp.ClientSession() as client:
        async with client.post(
            url(front, "/v1/events"), data=orjson.dumps(body), headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 202

        async def all_ten() -> list[dict[str, Any]] | None:
            events = await events_on_stream(kstream)
            return events if len({e["event_id"] for e in events}) >= 10 else None

        events = await eventually(all_ten, timeout=30, what="the 10 events on the stream")
    assert {e["event_id"] for e in events} == {f"{prefix}-{n}" for n in range(10)}
