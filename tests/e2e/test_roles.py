"""`shardflow ingest` and `shardflow consume` as separate processes sharing only the stream.

The consumer serves /healthz, /readyz and /metrics on its own port, so a container platform can
probe it; /readyz says why when the warehouse is down.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.e2e.harness import Shardflow, events, send
from tests.support.net import free_port
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def processes() -> Iterator[list[Shardflow]]:
    started: list[Shardflow] = []
    try:
        yield started
    finally:
        for sf in started:
            sf.kill()


def test_ingest_and_consume_apart(tmp_path: Path, processes: list[Shardflow]) -> None:
    data = tmp_path / "data"
    ingest = Shardflow(data, role="ingest")
    processes.append(ingest)
    ingest.start()
    accepted, _ = send(ingest.url, events(2000, tag="apart"))
    assert accepted == 2000

    consume = Shardflow(data, role="consume")
    processes.append(consume)
    consume.start()
    assert "health       http://127.0.0.1:" in consume.log("stdout")
    consume.wait_rows(2000)
    assert consume.get("/readyz") == (200, b'{"ready": true}')
    status, metrics = consume.get("/metrics")
    assert status == 200 and b"shardflow_sink_rows_total 2000.0" in metrics

    assert ingest.stop() == 0
    assert consume.stop() == 0
    assert consume.count("select count(distinct event_id) from page_views") == 2000


def test_consume_not_ready_while_warehouse_is_down(tmp_path: Path, processes: list[Shardflow]) -> None:
    pytest.importorskip("sinks.postgres", reason="PostgreSQL warehouse not built yet")
    data = tmp_path / "data"
    closed = free_port()
    consume = Shardflow(
        data, role="consume", extra=("--warehouse", f"postgresql://postgres@127.0.0.1:{closed}/x")
    )
    processes.append(consume)
    consume.start()
    _, body = wait_until(lambda: (s := consume.get("/readyz"))[0] == 503 and s, timeout=30)
    assert orjson.loads(body) == {"ready": False, "reason": "warehouse unreachable"}
    assert consume.get("/healthz")[0] == 200
    assert consume.stop() == 0


def test_run_on_kinesis_with_aggregation(tmp_path: Path, processes: list[Shardflow]) -> None:
    from tests.support.kinesalite import kinesalite

    with kinesalite() as endpoint:
        uri = f"kinesis://sf-e2e?region=us-east-1&endpoint={endpoint}"
        sf = Shardflow(tmp_path / "data", extra=("--stream", uri, "--aggregate", "--shards", "2"))
        processes.append(sf)
        sf.start()
        assert "(2 open shards, created)" in sf.log("stdout")
        assert send(sf.url, events(2000, tag="kin"))[0] == 2000
        sf.wait_rows(2000)
        assert sf.stop() == 0
        assert sf.count("select count(distinct event_id) from page_views") == 2000
