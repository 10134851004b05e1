"""A loopback Kinesis endpoint that proxies to a real emulator and injects faults on demand.

Neither kinesalite nor moto throttles or fails single records (SPEC), so fault tests point the
client at this proxy instead: it speaks the Kinesis JSON protocol (`X-Amz-Target:
Kinesis_20131202.*`, `application/x-amz-json-1.1`), forwards every call to the upstream server, and
on demand

- `stall = True` holds requests unanswered until it is set back to False;
- `down = True` answers 503 `InternalFailure`; `disconnect = True` drops the connection unanswered;
- `not_found = True` answers `ResourceNotFoundException`, as if the stream were deleted;
- `throttle_next(n)` answers the next n data-plane calls `ProvisionedThroughputExceededException`,
  `error_next(n, code)` any other error code;
- `fail_records(selector, code)` marks chosen records of PutRecords failed with a per-record
  `ErrorCode` and does NOT forward them (selector: a fraction, or a predicate on `ProxiedRecord`).

`put_log` lists every record the upstream acknowledged, in the order acknowledged.

Async tests: `async with KinesisFaultProxy(upstream) as proxy`. Sync tests that drive
subprocesses: `with KinesisFaultProxy(upstream) as proxy` runs it on a thread with its own loop.
Fault switches are plain attributes, safe to flip from either side.
"""

from __future__ import annotations

import asyncio
import base64
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

__all__ = ["KinesisFaultProxy", "ProxiedRecord"]

_PREFIX = "Kinesis_20131202."
_CONTENT_TYPE = "application/x-amz-json-1.1"
_FORWARD_HEADERS = ("Content-Type", "X-Amz-Target", "Authorization", "X-Amz-Date", "X-Amz-Security-Token")
_DATA_PLANE = frozenset({"PutRecords", "PutRecord", "GetRecords"})


@dataclass(frozen=True, slots=True)
class ProxiedRecord:
    """One record of a PutRecord(s) call; `shard_id`/`sequence_number` set once acknowledged."""

    partition_key: str
    data: bytes
    shard_id: str | None = None
    sequence_number: str | None = None


Selector = float | Callable[[ProxiedRecord], bool]


class KinesisFaultProxy:
    """Proxy to `upstream` (an emulator's endpoint URL) listening on 127.0.0.1, port 0."""

    def __init__(self, upstream: str, *, upstream_timeout: float = 30.0) -> None:
        self.upstream = upstream.rstrip("/")
        self._stall = False
        self._unstalled: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.down = False
        self.disconnect = False
        self.not_found = False
        self.put_log: list[ProxiedRecord] = []
        self.calls: Counter[str] = Counter()
        """Calls received per target (`PutRecords`, `GetRecords`, ...), faulted or not."""
        self.failed_records = 0
        """Records this proxy marked failed instead of forwarding."""
        self.port = 0
        self._throttle_left = 0
        self._throttle_targets: frozenset[str] = _DATA_PLANE
        self._error_code = "ProvisionedThroughputExceededException"
        self._error_status = 400
        self._fail_selector: Selector | None = None
        self._fail_code = "ProvisionedThroughputExceededException"
        self._fail_calls_left: int | None = None
        self._lock = threading.Lock()
        self._timeout = upstream_timeout
        self._rng = random.Random(1234)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- fault switches ---------------------------------------------------------------------

    @property
    def stall(self) -> bool:
        return self._stall

    @stall.setter
    def stall(self, value: bool) -> None:
        """Hold every request from now until set back to False (safe from any thread)."""
        self._stall = value
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            same_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            same_loop = False
        if same_loop:
            self._apply_stall()
        else:
            loop.call_soon_threadsafe(self._apply_stall)

    def _apply_stall(self) -> None:
        if self._unstalled is None:
            return
        if self._stall:
            self._unstalled.clear()
        else:
            self._unstalled.set()

    def throttle_next(self, n: int, targets: Iterable[str] = _DATA_PLANE) -> None:
        """Answer the next `n` calls to `targets` with ProvisionedThroughputExceededException."""
        self.error_next(n, "ProvisionedThroughputExceededException", targets=targets)

    def error_next(
        self, n: int, code: str, *, status: int = 400, targets: Iterable[str] = _DATA_PLANE
    ) -> None:
        """Answer the next `n` calls to `targets` with the error `code` (e.g. ExpiredIteratorException)."""
        with self._lock:
            self._throttle_left = n
            self._throttle_targets = frozenset(targets)
            self._error_code = code
            self._error_status = status

    def fail_records(
        self,
        selector: Selector,
        code: str = "ProvisionedThroughputExceededException",
        *,
        calls: int | None = None,
    ) -> None:
        """Fail the chosen records of PutRecords calls (the next `calls` calls, or until cleared)."""
        with self._lock:
            self._fail_selector = selector
            self._fail_code = code
            self._fail_calls_left = calls

    def clear(self) -> None:
        """Remove every fault; logs are kept."""
        with self._lock:
            self.down = self.disconnect = self.not_found = False
            self.stall = False
            self._throttle_left = 0
            self._fail_selector = None
            self._fail_calls_left = None

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._unstalled = asyncio.Event()
        self._apply_stall()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self.stall = False
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> KinesisFaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __enter__(self) -> KinesisFaultProxy:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._thread_loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="kinesis-fault-proxy", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        return self

    def __exit__(self, *exc: object) -> None:
        self.stall = False
        if self._thread_loop is not None and self._thread is not None:
            self._thread_loop.call_soon_threadsafe(self._thread_loop.stop)
            self._thread.join(30)
            self._thread = None
            self._thread_loop = None

    # --- the proxy --------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        target = request.headers.get("X-Amz-Target", "").removeprefix(_PREFIX)
        body = await request.read()
        self.calls[target] += 1
        assert self._unstalled is not None
        await self._unstalled.wait()
        if self.disconnect:
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)
        if self.down:
            return _error(503, "InternalFailure", "injected: service unavailable")
        if self.not_found:
            return _error(400, "ResourceNotFoundException", "injected: stream not found")
        with self._lock:
            if self._throttle_left > 0 and target in self._throttle_targets:
                self._throttle_left -= 1
                return _error(self._error_status, self._error_code, f"injected: {self._error_code}")
        if target == "PutRecords":
            return await self._put_records(request, body)
        status, payload = await self._forward(request, body)
        if target == "PutRecord" and status == 200:
            sent = orjson.loads(body)
            answer = orjson.loads(payload)
            self.put_log.append(
                ProxiedRecord(
                    sent["PartitionKey"],
                    base64.b64decode(sent["Data"]),
                    answer.get("ShardId"),
                    answer.get("SequenceNumber"),
                )
            )
        return web.Response(status=status, body=payload, content_type=_CONTENT_TYPE)

    async def _forward(self, request: web.Request, body: bytes) -> tuple[int, bytes]:
        assert self._session is not None
        headers = {k: request.headers[k] for k in _FORWARD_HEADERS if k in request.headers}
        try:
            async with self._session.post(self.upstream + "/", data=body, headers=headers) as answer:
                return answer.status, await answer.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return 503, orjson.dumps({"__type": "InternalFailure", "message": f"upstream: {exc}"})

    async def _put_records(self, request: web.Request, body: bytes) -> web.Response:
        sent = orjson.loads(body)
        entries: list[dict[str, Any]] = sent["Records"]
        records = [ProxiedRecord(e["PartitionKey"], base64.b64decode(e["Data"])) for e in entries]
        failed = self._choose_failures(records)
        forwarded = [i for i in range(len(entries)) if i not in failed]
        results: list[dict[str, Any]] = [
            {"ErrorCode": self._fail_code, "ErrorMessage": "injected: record failed"} for _ in entries
        ]
        self.failed_records += len(failed)
        if forwarded:
            sent["Records"] = [entries[i] for i in forwarded]
            status, payload = await self._forward(request, orjson.dumps(sent))
            if status != 200:
                return web.Response(status=status, body=payload, content_type=_CONTENT_TYPE)
            answer = orjson.loads(payload)
            for i, result in zip(forwarded, answer["Records"], strict=True):
                results[i] = result
                if "ErrorCode" not in result:
                    self.put_log.append(
                        ProxiedRecord(
                            records[i].partition_key,
                            records[i].data,
                            result["ShardId"],
                            result["SequenceNumber"],
                        )
                    )
        failed_count = sum(1 for r in results if "ErrorCode" in r)
        return web.Response(
            body=orjson.dumps({"FailedRecordCount": failed_count, "Records": results}),
            content_type=_CONTENT_TYPE,
        )

    def _choose_failures(self, records: list[ProxiedRecord]) -> set[int]:
        with self._lock:
            selector = self._fail_selector
            if selector is None:
                return set()
            if self._fail_calls_left is not None:
                self._fail_calls_left -= 1
                if self._fail_calls_left <= 0:
                    self._fail_selector = None
        if callable(selector):
            return {i for i, r in enumerate(records) if selector(r)}
        return {i for i in range(len(records)) if self._rng.random() < selector}


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"__type": code, "message": message}),
        content_type=_CONTENT_TYPE,
    )
