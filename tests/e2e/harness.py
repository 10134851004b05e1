"""`shardflow run` as a real subprocess on a free loopback port, and a concurrent HTTP sender.

The process writes stdout/stderr to files in its data directory (no pipe to fill up), and the
warehouse is read through SQLite's read-only mode, as a user's own tools would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from tests.support.net import free_port
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Shardflow:
    """One `python -m processor run` process; `start()` returns once /healthz answers."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    extra: tuple[str, ...] = ()
    role: str = "run"
    """`run`, `ingest` or `consume` (whose port serves /healthz, /readyz and /metrics)."""
    workers: int = 1
    """Enrichment workers (1: a thread, sparing the test machine's cores; 0: one process per core)."""
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def warehouse(self) -> Path:
        return self.data_dir / "warehouse.db"

    def log(self, name: str) -> str:
        path = self.data_dir / f"{self.role}.{name}.{self.starts}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = 60.0) -> None:
        self.starts += 1
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDFLOW_")}
        argv = [
            sys.executable, "-m", "processor", self.role,
            "--port", str(self.port),
            "--data-dir", str(self.data_dir),
            "--status-interval", "1s",
            "--drain-timeout", "20s",
            *(("--workers", str(self.workers)) if self.role != "ingest" else ()),
            *self.extra,
        ]  # fmt: skip
        with (
            open(self.data_dir / f"{self.role}.stdout.{self.starts}.log", "wb") as out,
            open(self.data_dir / f"{self.role}.stderr.{self.starts}.log", "wb") as err,
        ):
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err)
        wait_until(self._healthy, timeout=timeout, interval=0.1, what=f"shardflow run on port {self.port}")

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            code = self.proc.returncode
            raise AssertionError(f"shardflow {self.role} exited {code}:\n{self.log('stderr')}")
        return self.get("/healthz")[0] == 200

    def get(self, path: str) -> tuple[int, bytes]:
        """(status, body) of a GET on this process's port; (0, b"") when nothing answers."""
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=2) as r:
                return int(r.status), bytes(r.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())
        except OSError:
            return 0, b""

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> int:
        """SIGTERM and wait: the exit status of a drained stop."""
        self.signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def count(self, sql: str = "select count(*) from page_views") -> int:
        if not self.warehouse.exists():
            return 0
        db = sqlite3.connect(f"file:{self.warehouse}?mode=ro", uri=True, timeout=10)
        try:
            return int(db.execute(sql).fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0
            raise
        finally:
            db.close()

    def wait_rows(self, n: int, timeout: float = 90.0) -> None:
        wait_until(lambda: self.count() >= n, timeout=timeout, interval=0.1, what=f"{n} rows in page_views")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Another shardflow command on the same data directory."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDFLOW_")}
        return subprocess.run(
            [sys.executable, "-m", "processor", *args, "--data-dir", str(self.data_dir)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip


def events(n: int, tag: str = "e2e") -> list[bytes]:
    """`n` page views with unique event ids spread over many partition keys, as NDJSON lines."""
    return [
        orjson.dumps(
            {
                "event_id": f"{tag}-{i:06d}",
                "url": f"https://shop.example/p/{i}?utm_source=news",
                "anonymous_id": f"anon-{i % 997}",
                "properties": {"i": i},
            }
        )
        for i in range(n)
    ]


async def _send(url: str, lines: list[bytes], batch: int, concurrency: int) -> int:
    chunks = [lines[i : i + batch] for i in range(0, len(lines), batch)]
    accepted = 0
    queue: asyncio.Queue[list[bytes]] = asyncio.Queue()
    for chunk in chunks:
        queue.put_nowait(chunk)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal accepted
        while not queue.empty():
            chunk = queue.get_nowait()
            body = b"\n".join(chunk) + b"\n"
            headers = {"Content-Type": "application/x-ndjson"}
            async with session.post(f"{url}/v1/events", data=body, headers=headers) as response:
                answer = await response.json()
                assert response.status == 202, (response.status, answer)
                assert answer["rejected"] == [], answer
                accepted += answer["accepted"]

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session, asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker(session))
    return accepted


def send(url: str, lines: list[bytes], *, batch: int = 250, concurrency: int = 8) -> tuple[int, float]:
    """POST the lines as NDJSON batches over `concurrency` connections; (accepted, seconds)."""
    started = time.monotonic()
    accepted = asyncio.run(_send(url, lines, batch, concurrency))
    return accepted, time.monotonic() - started
