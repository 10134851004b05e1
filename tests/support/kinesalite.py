"""Kinesis-compatible servers started on loopback for the tests: kinesalite (main) and moto (second).

See SPEC "Kinesis-compatible servers for tests": moto loses records under concurrent PutRecords
and never ends a closed shard; kinesalite has no UpdateShardCount. Neither throttles.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.net import free_port, port_open
from tests.support.services import unavailable

ROOT = Path(__file__).resolve().parents[2]
_START_JS = """
const k = require('kinesalite')({createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0, shardLimit: 1000});
k.listen(parseInt(process.argv[1]), '127.0.0.1', () => console.log('listening ' + k.address().port));
"""

AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def set_fake_credentials() -> None:
    """Emulators accept any credentials; set them so the standard AWS chain finds some."""
    for key, value in AWS_TEST_ENV.items():
        os.environ.setdefault(key, value)


@contextmanager
def kinesalite() -> Iterator[str]:
    """Start kinesalite on a free loopback port; yields its endpoint URL."""
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules" / "kinesalite").is_dir():
        unavailable("kinesalite not installed (run `npm install` in the project root)")
        raise AssertionError("unreachable")
    set_fake_credentials()
    proc = subprocess.Popen(
        [node, "-e", _START_JS, "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening (\d+)", line)
        if not match:
            raise RuntimeError(f"kinesalite did not start: {line!r}")
        yield f"http://127.0.0.1:{match.group(1)}"
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def moto_server() -> Iterator[str]:
    """Start moto's server on a free loopback port; yields its endpoint URL."""
    set_fake_credentials()
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto_server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()
