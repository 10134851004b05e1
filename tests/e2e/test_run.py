"""`shardflow run` end to end: a real subprocess, real HTTP, the SQLite warehouse on disk.

Every accepted event lands in page_views exactly once: after a clean run, across a SIGTERM drain
and restart, and across a SIGKILL after some commits and a restart.
"""

from __future__ import annotations

import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.e2e.harness import Shardflow, events, send
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

N = 10_000
DISTINCT = "select count(distinct event_id) from page_views"


@pytest.fixture
def shardflow(tmp_path: Path) -> Iterator[Shardflow]:
    sf = Shardflow(tmp_path / "data")
    try:
        yield sf
    finally:
        sf.kill()


def test_run_loads_every_event_once_and_drains_on_sigterm(shardflow: Shardflow) -> None:
    shardflow.start()
    banner = shardflow.log("stdout")
    assert f"listening    http://127.0.0.1:{shardflow.port}" in banner
    assert f"stream       sqlite:///{shardflow.data_dir}/stream.db  (4 open shards, created)" in banner
    assert f"warehouse    sqlite:///{shardflow.data_dir}/warehouse.db" in banner
    assert f"shardflow query \"select count(*) from page_views\" --data-dir '{shardflow.data_dir}'" in banner
    assert f"open http://localhost:{shardflow.port}/metrics" in banner

    accepted, _ = send(shardflow.url, events(N))
    assert accepted == N
    shardflow.wait_rows(N)

    query = shardflow.cli(
        "query", "select count(*) as n, count(distinct event_id) as d from page_views", "--format", "tsv"
    )
    assert (query.returncode, query.stdout) == (0, f"n\td\n{N}\t{N}\n"), query.stderr
    # A producer retry of event 0 (dropped by event_id) beside an event with a wrong type.
    body = b'[{"url": 5}, ' + events(1)[0] + b"]"
    request = urllib.request.Request(
        f"{shardflow.url}/v1/events", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert orjson.loads(answer.read()) == {
            "accepted": 1,
            "rejected": [{"index": 0, "error": "url: must be a string, not a number"}],
        }

    def dead_letters() -> str:
        out = shardflow.cli("dead-letters", "list").stdout
        return out if "url: must" in out else ""

    dead = wait_until(dead_letters, what="the reject in shardflow_dead_letters")
    assert dead.splitlines()[2].startswith("ingest  url: must be a string, not a number      1  ")
    replay = shardflow.cli("dead-letters", "replay", "--stage", "ingest")
    assert replay.stdout.splitlines()[0] == "examined 1, replayed 0 (0 events put on shardflow), kept 1"

    refused = shardflow.cli("query", "drop table page_views")
    assert refused.returncode == 1
    assert refused.stderr.startswith("shardflow: error: ") and "Traceback" not in refused.stderr

    assert shardflow.stop() == 0
    assert shardflow.count() == N
    assert '"msg":"stopped in' in shardflow.log("stderr").replace(": ", ":")


def test_sigterm_mid_load_then_restart_loses_and_doubles_nothing(shardflow: Shardflow) -> None:
    shardflow.start()
    accepted, _ = send(shardflow.url, events(N))
    assert accepted == N
    shardflow.signal(signal.SIGTERM)
    assert shardflow.wait() == 0
    first = shardflow.count()

    shardflow.start()
    shardflow.wait_rows(N)
    assert shardflow.stop() == 0
    assert (shardflow.count(), shardflow.count(DISTINCT)) == (N, N), f"{first} rows after the first stop"


def test_sigkill_after_commits_then_restart_has_exactly_every_row(shardflow: Shardflow) -> None:
    # The killed process's leases stay taken until they expire: keep that wait short.
    shardflow.extra = ("--lease-timeout", "2s")
    shardflow.start()
    accepted, _ = send(shardflow.url, events(N))
    assert accepted == N
    shardflow.wait_rows(1)
    shardflow.kill()
    killed_at = shardflow.count()

    shardflow.start()
    shardflow.wait_rows(N)
    status = shardflow.cli("status", "--port", str(shardflow.port))
    assert status.returncode == 0, status.stderr
    consumer_id = next(
        line.split()[1] for line in shardflow.log("stdout").splitlines() if "consumer " in line
    )
    lines = status.stdout.splitlines()
    assert lines[0].endswith(": ACTIVE, 4 open shards, 4 leases held")
    for row in (line.split() for line in lines[3:7]):
        assert row[1:3] == ["open", consumer_id], lines
        assert row[5].isdigit(), f"no checkpoint: {row}"
    assert "buffer  0 events" in status.stdout
    assert shardflow.stop() == 0
    assert (shardflow.count(), shardflow.count(DISTINCT)) == (N, N), f"{killed_at} rows when killed"
