"""The `shardflow` command in-process: help, errors as one line, config masking, stream and query output."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from processor.cli import format_result, main
from processor.logs import HumanFormatter, JsonFormatter, log_context, setup_logging


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("SHARDFLOW_")]:
        monkeypatch.delenv(key)


def test_python_dash_m_help_lists_every_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "processor", "--help"], capture_output=True, text=True, timeout=30, check=True
    )
    for command in ("run", "ingest", "consume", "stream", "query", "dead-letters", "status", "config"):
        assert f"    {command}" in result.stdout
    assert "SHARDFLOW_<OPTION>" in result.stdout


def test_config_prints_effective_values_with_secrets_masked(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        capsys,
        "config",
        "--warehouse",
        "postgresql://loader:hunter2@db.internal:5432/events",
        "--write-key",
        "wk_live_123",
        "--drain-timeout",
        "500ms",
    )
    assert code == 0
    assert "hunter2" not in out and "wk_live_123" not in out
    assert 'warehouse = "postgresql://loader:***@db.internal:5432/events"  # flag' in out
    assert 'write_key = ["***"]  # flag' in out
    assert "drain_timeout = 0.5  # flag" in out
    assert 'stream = "sqlite:///shardflow-data/stream.db"  # default' in out


def test_config_output_reads_back_as_toml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run_cli(capsys, "config", "--shards", "6", "--fsync", "always")
    assert code == 0
    saved = tmp_path / "saved.toml"
    saved.write_text(out)
    code, again, _ = run_cli(capsys, "config", "--config", str(saved))
    assert code == 0
    assert "shards = 6  # file" in again and 'fsync = "always"  # file' in again


def test_bad_value_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHARDFLOW_LEASE_TIMEOUT", "forever")
    code, _, err = run_cli(capsys, "config")
    assert code == 2
    expected = "SHARDFLOW_LEASE_TIMEOUT: 'forever' is not a duration (use 3, 2.5, 500ms, 10s, 5m)"
    assert err == f"shardflow: error: {expected}\n"


def test_unknown_toml_key_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    toml = tmp_path / "sf.toml"
    toml.write_text('stream = "sqlite:///x.db"\nshard_count = 4\n')
    code, _, err = run_cli(capsys, "config", "--config", str(toml))
    assert code == 2
    assert err.startswith("shardflow: error: config file") and "unknown option shard_count" in err
    assert err.count("\n") == 1


def test_missing_stream_is_one_line_exit_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run_cli(capsys, "stream", "describe", "--data-dir", str(tmp_path))
    assert code == 1
    assert err.startswith("shardflow: error: ") and err.count("\n") == 1
    assert "Traceback" not in err and out == ""


def test_stream_create_and_describe(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run_cli(capsys, "stream", "create", "--shards", "2", "--data-dir", str(tmp_path))
    assert (code, out) == (0, "stream shardflow created with 2 open shards\n")
    code, out, _ = run_cli(capsys, "stream", "create", "--data-dir", str(tmp_path))
    assert (code, out) == (0, "stream shardflow already exists with 2 open shards\n")
    code, out, _ = run_cli(
        capsys, "stream", "reshard", "--split", "shardId-000000000000", "--data-dir", str(tmp_path)
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "stream shardflow: ACTIVE, 3 open of 4 shards, retention 24h"
    assert lines[1].split() == [
        "shard",
        "state",
        "starting",
        "hash",
        "key",
        "ending",
        "hash",
        "key",
        "parents",
    ]
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    assert rows["shardId-000000000000"][1:] == ["closed", "0", str(2**127 - 1), "-"]
    assert rows["shardId-000000000001"][1:] == ["open", str(2**127), str(2**128 - 1), "-"]
    assert rows["shardId-000000000002"][1:] == ["open", "0", str(2**126 - 1), "shardId-000000000000"]
    assert rows["shardId-000000000003"][1:] == ["open", str(2**126), str(2**127 - 1), "shardId-000000000000"]


def test_reshard_needs_a_target(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "stream", "reshard", "--data-dir", str(tmp_path))
    assert code == 2
    assert "needs --shards N, --split SHARD or --merge SHARD SHARD" in err


def test_query_formats_and_refuses_writes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    sql = "select 1 as n, 'a\tb' as s, null as z"
    code, out, _ = run_cli(capsys, "query", sql, "--format", "tsv", "--data-dir", str(tmp_path))
    assert (code, out) == (0, "n\ts\tz\n1\ta\\tb\t\n")
    code, out, _ = run_cli(capsys, "query", sql, "--format", "json", "--data-dir", str(tmp_path))
    assert orjson.loads(out) == [{"n": 1, "s": "a\tb", "z": None}]
    code, out, _ = run_cli(capsys, "query", "select count(*) from page_views", "--data-dir", str(tmp_path))
    assert out == "count(*)\n--------\n       0\n(1 row)\n"
    code, _, err = run_cli(capsys, "query", "delete from page_views", "--data-dir", str(tmp_path))
    assert code == 1
    assert err.startswith("shardflow: error: ") and err.count("\n") == 1
    assert "readonly" in err.replace("-", "").replace(" ", "").lower()


def test_table_format_aligns_numbers_right() -> None:
    text = format_result(("shard", "rows"), [("a", 5), ("bb", 12345)], "table")
    assert text.splitlines() == ["shard   rows", "-----  -----", "a          5", "bb     12345", "(2 rows)"]


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "shard_consumer.shard", logging.INFO, __file__, 1, "committed %d rows", (5,), None
    )
    record.__dict__.update(extra)
    return record


def test_json_logs_carry_consumer_and_shard() -> None:
    line = JsonFormatter().format(_record(consumer_id="c1", shard_id="shardId-000000000001"))
    entry = orjson.loads(line)
    assert entry["msg"] == "committed 5 rows"
    assert (entry["level"], entry["logger"]) == ("info", "shard_consumer.shard")
    assert (entry["consumer_id"], entry["shard_id"]) == ("c1", "shardId-000000000001")


def test_human_logs_are_one_readable_line() -> None:
    line = HumanFormatter().format(_record(shard_id="shardId-000000000001"))
    assert line.endswith("INFO    shard_consumer.shard: committed 5 rows  shard_id=shardId-000000000001")


def test_stream_commands_on_kinesis(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.support.kinesalite import kinesalite

    with kinesalite() as endpoint:
        uri = f"kinesis://sf-cli?region=us-east-1&endpoint={endpoint}"
        code, out, err = run_cli(capsys, "stream", "create", "--shards", "2", "--stream", uri)
        assert (code, out) == (0, "stream sf-cli created with 2 open shards\n"), err
        code, out, err = run_cli(capsys, "stream", "describe", "--stream", uri)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == "stream sf-cli: ACTIVE, 2 open of 2 shards, retention 24h"
        assert [line.split()[:2] for line in lines[3:]] == [
            ["shardId-000000000000", "open"],
            ["shardId-000000000001", "open"],
        ]
        code, _, err = run_cli(capsys, "stream", "describe", "--stream", uri.replace("sf-cli", "absent"))
        assert code == 1 and err.startswith("shardflow: error: ") and err.count("\n") == 1


def test_port_in_use_is_one_line_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run_cli(capsys, "ingest", "--port", str(port), "--data-dir", str(tmp_path))
    assert code == 2
    assert err == f"shardflow: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"


async def test_log_context_reaches_tasks_started_inside_it() -> None:
    stream = io.StringIO()
    setup_logging({"": logging.INFO}, stream=stream, json=True)
    log = logging.getLogger("shard_consumer.test")

    async def background() -> None:
        await asyncio.sleep(0)
        log.info("from the task")

    with log_context(consumer_id="c7"):
        task = asyncio.create_task(background())
    log.info("outside")
    await task
    entries = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["msg"], e.get("consumer_id")) for e in entries] == [("outside", None), ("from the task", "c7")]
