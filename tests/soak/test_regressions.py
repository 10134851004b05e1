"""Bugs the soak found, each pinned down by a small test with real parts.

Each test is marked xfail(strict=True) while the bug is open in a module owned by another
component: it fails the run once the bug is fixed, so the mark gets removed with the fix.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from processor.ingest.config import IngestConfig
from processor.ingest.server import FrontEnd
from processor.streams.kinesis import KinesisStream
from tests.support.disk import small_tmpfs
from tests.support.kinesalite import kinesalite
from tests.support.kinesis_faults import KinesisFaultProxy, ProxiedRecord
from tests.support.wait import eventually


@pytest.fixture(scope="module")
def kinesalite_endpoint() -> Iterator[str]:
    with kinesalite() as endpoint:
        yield endpoint


@pytest.fixture
async def proxy(kinesalite_endpoint: str) -> AsyncIterator[KinesisFaultProxy]:
    async with KinesisFaultProxy(kinesalite_endpoint) as p:
        yield p


async def test_a_failed_record_is_not_overtaken_by_a_later_record_of_its_key_in_the_same_batch(
    tmp_path: Path, proxy: KinesisFaultProxy
) -> None:
    stream = KinesisStream.from_uri(
        f"kinesis://order-{uuid.uuid4().hex[:8]}?region=us-east-1&endpoint={proxy.endpoint}"
    )
    await stream.create(1)
    failed: list[bytes] = []

    def first_put_of_o0(record: ProxiedRecord) -> bool:
        if b'"o-0"' in record.data and not failed:
            failed.append(record.data)
            return True
        return False

    proxy.fail_records(first_put_of_o0, "InternalFailure")
    config = IngestConfig(port=0, spool_dir=tmp_path / "spool", drain_timeout=5.0, probe_interval=0.2)
    body = [{"event_id": f"o-{n}", "anonymous_id": "one-visitor"} for n in range(5)]
    try:
        async with FrontEnd(config, stream) as front, aiohttp.ClientSession() as client:
            async with client.post(f"http://127.0.0.1:{front.port}/v1/events", json=body) as r:
                assert r.status == 202

            async def all_five() -> bool:
                return len(proxy.put_log) >= 5

            await eventually(all_five, timeout=30, what="5 records put")
    finally:
        await stream.close()
    assert failed, "the proxy failed the first put of o-0"
    stored = [next(f"o-{n}" for n in range(5) if f'"o-{n}"'.encode() in r.data) for r in proxy.put_log]
    assert stored == [f"o-{n}" for n in range(5)]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a disk that really fills up (ENOSPC). Needs root; skips where mounting fails."""
    with small_tmpfs(tmp_path) as mount:
        yield mount


def _fill(disk: Path) -> Path:
    import os

    filler = disk / "filler.bin"
    with open(filler, "wb") as f:
        stat = os.statvfs(disk)
        try:
            os.posix_fallocate(f.fileno(), 0, stat.f_bavail * stat.f_frsize)
        except OSError:
            pass
    return filler


async def _post_while_full(disk: Path, client: aiohttp.ClientSession, url: str) -> tuple[Path, list[int]]:
    """Fill the disk, then send 20 requests of 50 events; their statuses (0: no answer in 2 s)."""
    filler = _fill(disk)
    statuses = []
    for n in range(20):
        body = [{"event_id": f"d-{n}-{i}", "title": "x" * 2000} for i in range(50)]
        try:
            async with client.post(url, json=body, timeout=aiohttp.ClientTimeout(total=2)) as r:
                statuses.append(r.status)
        except TimeoutError:
            statuses.append(0)
    return filler, statuses


def _disk_config(disk: Path) -> IngestConfig:
    return IngestConfig(
        port=0, spool_dir=disk / "spool", drain_timeout=2.0, probe_interval=0.2, request_timeout=2.0
    )


async def test_a_full_disk_is_answered_503_and_once_freed_the_front_end_takes_events(
    small_disk: Path,
) -> None:
    from processor.streams.embedded import EmbeddedStream

    stream = EmbeddedStream.from_uri(f"sqlite:///{small_disk.parent}/stream.db")
    await stream.create(1)
    try:
        async with asyncio.timeout(8):
            async with FrontEnd(_disk_config(small_disk), stream) as front, aiohttp.ClientSession() as client:
                url = f"http://127.0.0.1:{front.port}/v1/events"
                filler, statuses = await _post_while_full(small_disk, client, url)
                assert 0 not in statuses, f"requests left without an answer: {statuses}"
                assert 503 in statuses and set(statuses) <= {202, 503}, statuses
                filler.unlink()

                async def takes_events() -> bool:
                    async with client.post(url, json={"event_id": "after"}) as r:
                        return r.status == 202

                await eventually(takes_events, timeout=5, what="202 once the disk has room")
    finally:
        await stream.close()


def test_ingest_starts_while_the_stream_answers_errors(tmp_path: Path, kinesalite_endpoint: str) -> None:
    import os
    import subprocess
    import sys
    import time

    from tests.support.kinesalite import AWS_TEST_ENV
    from tests.support.net import free_port
    from tests.support.wait import wait_until

    name = f"start-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [sys.executable, "-m", "processor", "stream", "create", "--shards", "1", "--data-dir", str(tmp_path),
         "--stream", f"kinesis://{name}?region=us-east-1&endpoint={kinesalite_endpoint}"],
        check=True, capture_output=True, env={**os.environ, **AWS_TEST_ENV}, timeout=60,
    )  # fmt: skip
    port = free_port()
    with KinesisFaultProxy(kinesalite_endpoint) as proxy:
        proxy.down = True
        proc = subprocess.Popen(
            [sys.executable, "-m", "processor", "ingest", "--port", str(port), "--data-dir", str(tmp_path),
             "--stream", f"kinesis://{name}?region=us-east-1&endpoint={proxy.endpoint}"],
            env={**os.environ, **AWS_TEST_ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            started = time.monotonic()
            wait_until(lambda: proc.poll() is not None or time.monotonic() - started > 8, timeout=20)
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        finally:
            proc.kill()
            proc.wait()
