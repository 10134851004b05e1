"""The soak's processes and proxies, and one method per fault.

    kinesalite ◄── fault proxy fe1 ◄── front end 1 (`shardflow ingest`) ◄─┐
               ◄── fault proxy fe2 ◄── front end 2 (`shardflow ingest`) ◄─┴─ load generator
               ◄── fault proxy c   ◄── consumers 1..3 (`shardflow consume`) ──► TCP proxy ──► PostgreSQL
                                                                                            or MariaDB

With `--stream embedded` the stream is one SQLite file shared by every process, and the stream
faults are a lock held on it. Each front end's spool lives on a tmpfs of its own when the
runner may mount one (root), so "disk full" is a real ENOSPC; otherwise the spool gets a small
`--spool-max-bytes` and is filled by cutting that front end off from the stream.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from tests.soak.dbproxy import TcpProxy
from tests.support.kinesalite import AWS_TEST_ENV, kinesalite
from tests.support.kinesis_faults import KinesisFaultProxy
from tests.support.net import free_port
from tests.support.services import fresh_mysql, fresh_postgres, with_database

__all__ = ["Proc", "Topology"]

ROOT = Path(__file__).resolve().parents[2]
STREAM_NAME = "soak"
SHARDS = 4
LEASE_TIMEOUT = "3s"
SPOOL_TMPFS_BYTES = 32 * 1024 * 1024
SPOOL_LIMIT_FALLBACK = "2MiB"


def _free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


class Proc:
    """One shardflow process that can be killed, paused, stopped and started again on its port."""

    def __init__(self, name: str, argv: list[str], logs: Path, port: int) -> None:
        self.name = name
        self.argv = argv
        self.logs = logs
        self.port = port
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDFLOW_")}
        env.update(AWS_TEST_ENV)
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.logs / f"{self.name}.{self.starts}.log", "wb") as out:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.paused = False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, signum: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signum)
            if signum == signal.SIGSTOP:
                self.paused = True
            elif signum == signal.SIGCONT:
                self.paused = False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.paused = False

    def terminate(self) -> None:
        """SIGCONT (in case it is paused), then one SIGTERM: a drained stop (a second forces exit)."""
        if self.alive():
            self.send(signal.SIGCONT)
            self.send(signal.SIGTERM)

    def wait_exit(self, timeout: float) -> int | None:
        """Wait up to `timeout` for the exit, then SIGKILL; the exit status."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        return self.proc.returncode

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as r:
                return int(r.status), bytes(r.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())
        except OSError:
            return 0, b""

    def metric(self, name: str) -> float | None:
        status, body = self.get("/metrics")
        if status != 200:
            return None
        for line in body.decode(errors="replace").splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob(f"{self.name}.*.log")))


class Topology:
    """Every process and proxy of one soak run; a context manager that tears all of it down."""

    def __init__(self, workdir: Path, *, stream: str, warehouse: str, say: object = print) -> None:
        self.workdir = workdir
        self.kind = stream
        self.warehouse_kind = warehouse
        self.say = say
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.front_ends: list[Proc] = []
        self.consumers: list[Proc] = []
        self.fe_proxies: list[KinesisFaultProxy] = []
        self.consumer_proxy: KinesisFaultProxy | None = None
        self.db_proxy: TcpProxy | None = None
        self.admin_stream = ""
        """Stream URI with no proxy in between: for stream admin and the checker."""
        self.warehouse_url = ""
        """Warehouse URI with no proxy in between: for the checker."""
        self.spool_mode = ""
        self._mounts: list[Path] = []
        self._stack = contextlib.ExitStack()
        self._stall_lock: threading.Event | None = None
        self._stall_thread: threading.Thread | None = None

    # -- bring-up ------------------------------------------------------------------------------

    def __enter__(self) -> Topology:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.front_ends + self.consumers:
            p.kill()
        self.release_stream()
        self._stack.close()
        for mount in self._mounts:
            subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)

    def _start(self) -> None:
        wh = self._stack.enter_context(
            fresh_postgres() if self.warehouse_kind == "postgres" else fresh_mysql()
        )
        self.warehouse_url = wh
        parts = urlsplit(wh)
        self.db_proxy = self._stack.enter_context(TcpProxy(parts.hostname or "127.0.0.1", parts.port or 0))
        proxied = wh.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{self.db_proxy.port}")
        if parts.port is None:
            proxied = with_database(
                wh.replace(parts.netloc, f"{parts.netloc}:{self.db_proxy.port}"), parts.path[1:]
            )

        if self.kind == "kinesis":
            endpoint = self._stack.enter_context(kinesalite())
            self.admin_stream = f"kinesis://{STREAM_NAME}?region=us-east-1&endpoint={endpoint}"
            self.fe_proxies = [self._stack.enter_context(KinesisFaultProxy(endpoint)) for _ in range(2)]
            self.consumer_proxy = self._stack.enter_context(KinesisFaultProxy(endpoint))
            fe_streams = [self._kinesis_uri(p) for p in self.fe_proxies]
            consumer_stream = self._kinesis_uri(self.consumer_proxy)
        else:
            self.admin_stream = f"sqlite:///{self.workdir}/stream.db"
            fe_streams = [self.admin_stream] * 2
            consumer_stream = self.admin_stream
        self.cli("stream", "create", "--shards", str(SHARDS))

        self.spool_mode = self._prepare_spools()
        for i, stream_uri in enumerate(fe_streams):
            data = self.workdir / f"fe{i + 1}"
            port = free_port()
            argv = [
                sys.executable, "-m", "processor", "ingest",
                "--stream", stream_uri, "--port", str(port), "--data-dir", str(data),
                "--status-interval", "10s", "--drain-timeout", "10s", "--fsync", "interval",
            ]  # fmt: skip
            if self.spool_mode.startswith("--spool-max-bytes"):
                argv += ["--spool-max-bytes", SPOOL_LIMIT_FALLBACK]
            self.front_ends.append(Proc(f"fe{i + 1}", argv, self.logs, port))
        for j in range(3):
            port = free_port()
            argv = [
                sys.executable, "-m", "processor", "consume",
                "--stream", consumer_stream, "--warehouse", proxied, "--port", str(port),
                "--consumer-id", f"c{j + 1}", "--lease-timeout", LEASE_TIMEOUT, "--workers", "1",
                "--data-dir", str(self.workdir / f"c{j + 1}"), "--status-interval", "10s",
                "--drain-timeout", "10s",
            ]  # fmt: skip
            self.consumers.append(Proc(f"c{j + 1}", argv, self.logs, port))
        for p in self.front_ends + self.consumers:
            p.start()
        deadline = time.monotonic() + 90
        for p in self.front_ends + self.consumers:
            while p.get("/healthz")[0] != 200:
                if not p.alive():
                    raise RuntimeError(f"{p.name} exited at start:\n{p.log_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{p.name} did not answer /healthz within 90 s")
                time.sleep(0.1)

    @staticmethod
    def _kinesis_uri(proxy: KinesisFaultProxy) -> str:
        return f"kinesis://{STREAM_NAME}?region=us-east-1&endpoint={proxy.endpoint}"

    def _prepare_spools(self) -> str:
        """A small tmpfs per front-end spool when mounting works, else a spool size limit."""
        mounted: list[Path] = []
        for i in range(2):
            spool = self.workdir / f"fe{i + 1}" / "spool"
            spool.mkdir(parents=True, exist_ok=True)
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={SPOOL_TMPFS_BYTES}", "tmpfs", str(spool)],
                check=False,
                capture_output=True,
            )
            if done.returncode != 0:
                for m in mounted:
                    subprocess.run(["umount", "-l", str(m)], check=False, capture_output=True)
                self._mounts = []
                why = done.stderr.decode().strip()
                return f"--spool-max-bytes {SPOOL_LIMIT_FALLBACK} (tmpfs not mountable: {why})"
            mounted.append(spool)
            self._mounts.append(spool)
        return f"tmpfs of {SPOOL_TMPFS_BYTES // 2**20} MiB per spool, filled to ENOSPC"

    def cli(self, *args: str) -> str:
        """A `shardflow` admin command on the stream, without any proxy; its stdout."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDFLOW_")}
        env.update(AWS_TEST_ENV)
        done = subprocess.run(
            [sys.executable, "-m", "processor", *args, "--stream", self.admin_stream,
             "--data-dir", str(self.workdir / "admin")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"shardflow {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    # -- faults ----------------------------------------------------------------------------------

    def stall_stream(self) -> None:
        if self.kind == "kinesis":
            for proxy in self._all_proxies():
                proxy.stall = True
            return
        self._hold_stream_lock()

    def release_stream(self) -> None:
        for proxy in self._all_proxies():
            proxy.stall = False
        if self._stall_lock is not None:
            self._stall_lock.set()
            if self._stall_thread is not None:
                self._stall_thread.join(10)
            self._stall_lock = self._stall_thread = None

    def _hold_stream_lock(self) -> None:
        """Hold the embedded stream's write lock (BEGIN EXCLUSIVE) until `release_stream`."""
        release = threading.Event()
        taken = threading.Event()

        def hold() -> None:
            db = sqlite3.connect(self.workdir / "stream.db", timeout=30, isolation_level=None)
            try:
                db.execute("BEGIN EXCLUSIVE")
                taken.set()
                release.wait(60)
                db.execute("ROLLBACK")
            finally:
                taken.set()
                db.close()

        self._stall_lock = release
        self._stall_thread = threading.Thread(target=hold, name="stream-lock", daemon=True)
        self._stall_thread.start()
        taken.wait(30)

    def _all_proxies(self) -> list[KinesisFaultProxy]:
        return [*self.fe_proxies, *([self.consumer_proxy] if self.consumer_proxy else [])]

    def throttle(self, calls: int) -> None:
        for proxy in self._all_proxies():
            proxy.throttle_next(calls)

    def end_throttle(self) -> None:
        for proxy in self._all_proxies():
            proxy.throttle_next(0)

    def fail_records(self, fraction: float) -> None:
        for proxy in self.fe_proxies:
            proxy.fail_records(fraction, "InternalFailure")

    def end_record_errors(self) -> None:
        for proxy in self.fe_proxies:
            proxy.fail_records(0.0, calls=1)

    def cut_warehouse(self) -> None:
        assert self.db_proxy is not None
        self.db_proxy.cut()

    def restore_warehouse(self) -> None:
        assert self.db_proxy is not None
        self.db_proxy.restore()

    def split_a_shard(self, pick: int) -> str:
        """`shardflow stream reshard --split` on one of the open shards; the shard split."""
        described = self.cli("stream", "describe")
        open_shards = re.findall(r"^(\S+)\s+open\s", described, re.MULTILINE)
        shard = str(open_shards[pick % len(open_shards)])
        self.cli("stream", "reshard", "--split", shard)
        return shard

    def fill_spool(self, i: int) -> str:
        """Fill front end `i`'s spool disk (or cut it off from the stream until its spool is full)."""
        if self._mounts:
            spool = self._mounts[i]
            free = _free_bytes(spool)
            with open(spool / "filler.bin", "wb") as f:
                # tmpfs rolls back an fallocate that does not fit whole: take most of the space in
                # one call, then the rest a page at a time until the disk refuses.
                with contextlib.suppress(OSError):
                    os.posix_fallocate(f.fileno(), 0, max(0, free - 256 * 1024))
                f.seek(0, os.SEEK_END)
                page = b"\0" * 4096
                with contextlib.suppress(OSError):
                    while True:
                        os.write(f.fileno(), page)
            left = _free_bytes(spool)
            return f"filled {free - left:,} bytes, {left:,} left"
        if self.fe_proxies:
            self.fe_proxies[i].stall = True
        else:
            self._hold_stream_lock()
        return "stream cut off until the spool limit is reached"

    def free_spool(self, i: int) -> None:
        if self._mounts:
            with contextlib.suppress(FileNotFoundError):
                (self._mounts[i] / "filler.bin").unlink()
            return
        if self.fe_proxies:
            self.fe_proxies[i].stall = False
        else:
            self.release_stream()

    def heal(self) -> None:
        """Undo every fault still in force: proxies clear, warehouse back, every process running."""
        for proxy in self._all_proxies():
            proxy.clear()
        self.release_stream()
        self.restore_warehouse()
        for i in range(len(self._mounts)):
            self.free_spool(i)
        for p in self.front_ends + self.consumers:
            if p.paused:
                p.send(signal.SIGCONT)
            if not p.alive():
                p.start()

    def processes(self) -> Iterator[Proc]:
        yield from self.front_ends
        yield from self.consumers
