"""`shardflow ingest` and `consume` started while Kinesis is down or the stream is missing.

Real processes against kinesalite behind the fault proxy: the front end listens and spools at
once and sends the spool when the stream answers; the consumer waits for the stream, retrying,
and a signal stops it cleanly; refused credentials end the start with exit status 2.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from processor.streams.kinesis import KinesisStream
from tests.e2e.harness import ROOT, Shardflow
from tests.ingest.conftest import events_on_stream
from tests.support.kinesalite import kinesalite
from tests.support.kinesis_faults import KinesisFaultProxy
from tests.support.wait import wait_until

_CONTROL = ("DescribeStreamSummary", "DescribeStream", "ListShards", "CreateStream")


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with kinesalite() as endpoint:
        yield endpoint


@pytest.fixture
def proxy(upstream: str) -> Iterator[KinesisFaultProxy]:
    with KinesisFaultProxy(upstream) as p:
        yield p


def _uri(name: str, endpoint: str) -> str:
    return f"kinesis://{name}?region=us-east-1&endpoint={endpoint}"


def _post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as r:
        return int(r.status)


def _ids_on(name: str, endpoint: str) -> set[str]:
    async def read() -> set[str]:
        stream = KinesisStream.from_uri(_uri(name, endpoint))
        try:
            return {e["event_id"] for e in await events_on_stream(stream)}
        finally:
            await stream.close()

    return asyncio.run(read())


def _create(name: str, endpoint: str) -> None:
    async def create() -> None:
        stream = KinesisStream.from_uri(_uri(name, endpoint))
        try:
            await stream.create(1)
        finally:
            await stream.close()

    asyncio.run(create())


def test_ingest_listens_and_spools_while_kinesis_fails_then_sends_the_spool(
    tmp_path: Path, upstream: str, proxy: KinesisFaultProxy
) -> None:
    name = f"down-{uuid.uuid4().hex[:8]}"
    _create(name, upstream)
    proxy.down = True
    ingest = Shardflow(tmp_path, role="ingest", extra=("--stream", _uri(name, proxy.endpoint)))
    try:
        ingest.start(timeout=20)
        assert _post(f"{ingest.url}/v1/events", b'{"event_id": "while-down"}') == 202
        status, body = ingest.get("/readyz")
        assert status == 503 and b"stream unreachable" in body
        assert "not available yet" in ingest.log("stderr")
        assert "not available yet, retrying" in ingest.log("stdout")
        proxy.clear()
        wait_until(lambda: "while-down" in _ids_on(name, upstream), timeout=30, what="the spooled event")
        wait_until(lambda: ingest.get("/readyz")[0] == 200, timeout=20, what="ready")
        assert ingest.stop() == 0
    finally:
        ingest.kill()


def test_ingest_waits_for_a_missing_stream_an_operator_then_creates(tmp_path: Path, upstream: str) -> None:
    name = f"later-{uuid.uuid4().hex[:8]}"
    ingest = Shardflow(tmp_path, role="ingest", extra=("--stream", _uri(name, upstream)))
    try:
        ingest.start(timeout=20)
        assert _post(f"{ingest.url}/v1/events", b'{"event_id": "before-create"}') == 202
        assert "create it with `shardflow stream create`" in ingest.log("stderr")
        _create(name, upstream)
        wait_until(lambda: "before-create" in _ids_on(name, upstream), timeout=30, what="the spooled event")
        assert ingest.stop() == 0
    finally:
        ingest.kill()


def test_consume_waits_for_the_stream_and_stops_on_a_signal(tmp_path: Path, upstream: str) -> None:
    name = f"wait-{uuid.uuid4().hex[:8]}"
    argv = [sys.executable, "-m", "processor", "consume", "--port", "0", "--data-dir", str(tmp_path),
            "--workers", "1", "--stream", _uri(name, upstream)]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "not available yet" in line and "waiting for it" in line, line
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_refused_credentials_end_the_start_with_status_2(tmp_path: Path, proxy: KinesisFaultProxy) -> None:
    proxy.error_next(1000, "AccessDeniedException", targets=_CONTROL)
    done = subprocess.run(
        [sys.executable, "-m", "processor", "ingest", "--port", "0", "--data-dir", str(tmp_path),
         "--stream", _uri("denied", proxy.endpoint)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "access to Kinesis stream 'denied'" in done.stderr
