"""The 30-second soak, in the default test run: every fault once, then the exactly-once checker.

The full 3-minute soak is `make soak` (`python -m tests.soak --minutes 3`). This runs the same
runner as a subprocess (real front ends, consumers, kinesalite behind the fault proxies, and
PostgreSQL behind a TCP proxy). Loss, duplicates, rows nobody sent, per-key order violations,
unexpected exits or a graceful stop that had to be forced fail it: the checker's verdict is the
runner's exit status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.support.kinesalite import ROOT
from tests.support.services import POSTGRES_DSN, fresh_postgres

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


def _kill_what_is_left(runner: subprocess.Popen[str], workdir: Path) -> None:
    """On a timeout, the runner's whole process group (front ends, consumers, kinesalite) and its mounts."""
    if runner.poll() is None:
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait(10)
    mounts = Path("/proc/mounts").read_text().split("\n")
    for line in mounts:
        fields = line.split()
        if len(fields) > 1 and fields[1].startswith(str(workdir)):
            subprocess.run(["umount", "-l", fields[1]], capture_output=True, check=False)


def test_30s_soak_with_every_fault_loses_and_doubles_nothing(tmp_path: Path) -> None:
    if not (ROOT / "node_modules" / "kinesalite").is_dir():
        pytest.skip("kinesalite not installed (npm install)")
    with fresh_postgres():  # skips (or fails in CI) with the reason when PostgreSQL is down
        pass
    workdir = tmp_path / "soak"
    env = {**os.environ, "SHARDFLOW_TEST_POSTGRES_DSN": POSTGRES_DSN, "PYTHONUNBUFFERED": "1"}
    runner = subprocess.Popen(
        [sys.executable, "-m", "tests.soak", "--seconds", "30", "--seed", "8", "--rate", "200",
         "--drain-timeout", "45", "--stop-timeout", "12", "--workdir", str(workdir)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = runner.communicate(timeout=140)
    finally:
        _kill_what_is_left(runner, workdir)
    assert (workdir / "report.json").exists(), output
    report = orjson.loads((workdir / "report.json").read_bytes())["report"]
    assert report["acknowledged"] > 3000, output
    assert (report["lost"], report["duplicates"], report["never_sent"]) == (0, 0, 0), output
    assert report["loaded"] >= report["acknowledged"], output
    assert report["failures"] == [], output
    assert runner.returncode == 0, output
