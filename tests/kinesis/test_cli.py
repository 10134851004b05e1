"""`shardflow stream ...` against Kinesis (kinesalite): real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.net import free_port


def shardflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "processor", *args], capture_output=True, text=True, env=full, timeout=60
    )


def test_create_reshard_describe(kinesalite_endpoint: str, stream_name: str) -> None:
    uri = f"kinesis://{stream_name}?region=us-east-1&endpoint={kinesalite_endpoint}"
    assert shardflow("stream", "create", "--shards", "2", "--stream", uri).returncode == 0
    reshard = shardflow("stream", "reshard", "--shards", "3", "--stream", uri)
    assert reshard.returncode == 0, reshard.stderr
    described = shardflow("stream", "describe", "--stream", uri)
    assert described.returncode == 0
    assert f"stream {stream_name}: ACTIVE, 3 open" in described.stdout


def test_errors_are_one_line_without_traceback(kinesalite_endpoint: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    cases = {
        f"kinesis://missing?region=us-east-1&endpoint={kinesalite_endpoint}": "'missing' not found at",
        f"kinesis://s?region=us-east-1&endpoint={dead}&timeout=2": f"Kinesis endpoint {dead} unreachable",
    }
    for uri, expected in cases.items():
        done = shardflow("stream", "describe", "--stream", uri)
        assert done.returncode != 0
        assert expected in done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    no_credentials = shardflow(
        "stream",
        "describe",
        "--stream",
        f"kinesis://s?region=us-east-1&endpoint={kinesalite_endpoint}",
        env={
            "AWS_ACCESS_KEY_ID": "",
            "AWS_SECRET_ACCESS_KEY": "",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
            "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_EC2_METADATA_DISABLED": "true",
        },
    )
    assert no_credentials.returncode != 0
    assert "no AWS credentials found" in no_credentials.stderr
    assert "Traceback" not in no_credentials.stderr
