"""`shardflow consume` as real subprocesses, for tests that kill, stop and signal them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from sinks.base import Lease


class ConsumerProcess:
    """One `python -m processor consume` with its output in a log file."""

    def __init__(self, workdir: Path, stream_uri: str, warehouse_uri: str, name: str, **options: str) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        argv = [
            sys.executable,
            "-m",
            "processor",
            "consume",
            "--stream",
            stream_uri,
            "--warehouse",
            warehouse_uri,
            "--port",
            "0",
            "--consumer-id",
            name,
            "--lease-timeout",
            options.pop("lease_timeout", "1.5"),
            "--workers",
            options.pop("workers", "1"),
            "--data-dir",
            str(workdir / "data"),
        ]
        for key, value in options.items():
            argv += [f"--{key.replace('_', '-')}", value]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=workdir)

    def signal(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """SIGKILL if still running; always reap and close the log."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def live_owners(leases: list[Lease], now: float) -> Counter[str]:
    """Leases per owner among unexpired, unfinished leases."""
    return Counter(
        lease.owner
        for lease in leases
        if lease.owner is not None and lease.expires_at > now and lease.checkpoint != "SHARD_END"
    )
