"""Errors a user can act on: one clear line each, as processor.errors types."""

from __future__ import annotations

import pytest

from processor.errors import ConfigError, StreamNotFound, StreamUnavailable
from processor.streams.base import PutRecord
from processor.streams.kinesis import KinesisStream
from tests.support.kinesalite import set_fake_credentials
from tests.support.kinesis_faults import KinesisFaultProxy
from tests.support.net import free_port


async def test_unknown_stream(kinesalite_endpoint: str) -> None:
    uri = f"kinesis://no-such-stream?region=us-east-1&endpoint={kinesalite_endpoint}"
    async with KinesisStream.from_uri(uri) as stream:
        with pytest.raises(StreamNotFound) as err:
            await stream.describe()
    message = str(err.value)
    assert "'no-such-stream' not found at " + kinesalite_endpoint in message
    assert "\n" not in message


async def test_unreachable_endpoint_names_it() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    async with KinesisStream.from_uri(
        f"kinesis://s?region=us-east-1&endpoint={endpoint}&timeout=2"
    ) as stream:
        with pytest.raises(StreamUnavailable) as err:
            await stream.put_records([PutRecord(b"x", "k")])
    assert f"Kinesis endpoint {endpoint} unreachable" in str(err.value)
    assert "\n" not in str(err.value)


async def test_stalled_endpoint_times_out(kinesalite_endpoint: str) -> None:
    async with KinesisFaultProxy(kinesalite_endpoint) as proxy:
        proxy.stall = True
        uri = f"kinesis://s?region=us-east-1&endpoint={proxy.endpoint}&timeout=0.5"
        async with KinesisStream.from_uri(uri) as stream:
            with pytest.raises(StreamUnavailable, match="timed out"):
                await stream.describe()


async def test_missing_credentials(monkeypatch: pytest.MonkeyPatch, kinesalite_endpoint: str) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    uri = f"kinesis://s?region=us-east-1&endpoint={kinesalite_endpoint}"
    async with KinesisStream.from_uri(uri) as stream:
        with pytest.raises(ConfigError, match="no AWS credentials found"):
            await stream.describe()


async def test_access_denied(kinesalite_endpoint: str) -> None:
    async with KinesisFaultProxy(kinesalite_endpoint) as proxy:
        proxy.error_next(1, "AccessDeniedException", targets=["DescribeStreamSummary"])
        uri = f"kinesis://s?region=us-east-1&endpoint={proxy.endpoint}"
        async with KinesisStream.from_uri(uri) as stream:
            with pytest.raises(ConfigError, match=r"access to Kinesis stream 's' at .* denied"):
                await stream.describe()


def test_bad_uris() -> None:
    with pytest.raises(ConfigError, match="unknown Kinesis URI parameter"):
        KinesisStream.from_uri("kinesis://s?regoin=us-east-1")
    with pytest.raises(ConfigError, match="kinesis://STREAM"):
        KinesisStream.from_uri("kinesis:///nope")
    with pytest.raises(ConfigError, match="not a number"):
        KinesisStream.from_uri("kinesis://s?shard_write_records=many")
    options = KinesisStream.from_uri("kinesis://s?limits=off&shard_read_calls=5", aggregate=True).options
    assert options.aggregate
    assert options.limits.write_records is None and options.limits.read_calls == 5


async def test_wrong_region_names_the_endpoint_tried() -> None:
    set_fake_credentials()
    async with KinesisStream.from_uri("kinesis://s?region=xx-nowhere-9&timeout=3") as stream:
        with pytest.raises(StreamUnavailable, match=r"kinesis\.xx-nowhere-9\.amazonaws\.com"):
            await stream.describe()


async def test_dropped_connection_and_server_errors_are_retriable(kinesalite_endpoint: str) -> None:
    async with KinesisFaultProxy(kinesalite_endpoint) as proxy:
        uri = f"kinesis://s?region=us-east-1&endpoint={proxy.endpoint}&timeout=3"
        async with KinesisStream.from_uri(uri) as stream:
            proxy.disconnect = True
            with pytest.raises(StreamUnavailable) as dropped:
                await stream.describe()
            assert dropped.value.retriable
            proxy.disconnect = False
            proxy.down = True
            with pytest.raises(StreamUnavailable, match="InternalFailure"):
                await stream.describe()
