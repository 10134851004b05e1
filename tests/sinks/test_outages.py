"""Real faults between the warehouse and real PostgreSQL/MariaDB: a TCP proxy that resets
connections mid-COPY/LOAD DATA, before and after COMMIT, and refuses new ones.

Every case ends the same way a consumer's retry loop would: retry until it works, then exactly
the batch's rows are there, once, with the checkpoint.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest

from processor.errors import WarehouseUnavailable
from sinks import Batch, Warehouse, open_warehouse
from tests.sinks.conftest import make_row
from tests.sinks.test_warehouse import SHARD, STREAM, count, take
from tests.support.tcp_proxy import TcpProxy

T = TypeVar("T")
ROWS = 4000


def through(url: str, port: int, password: str | None = None) -> str:
    parts = urlsplit(url)
    user = parts.username or ""
    auth = f"{user}:{password}@" if password else f"{user}@"
    return urlunsplit((parts.scheme, f"{auth}127.0.0.1:{port}", parts.path, parts.query, parts.fragment))


@pytest.fixture
async def proxy(server_url: str) -> AsyncIterator[TcpProxy]:
    parts = urlsplit(server_url)
    async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 0) as p:
        yield p


@pytest.fixture
async def direct(server_url: str) -> AsyncIterator[Warehouse]:
    """The same database without the proxy: what is really committed."""
    wh = open_warehouse(server_url)
    await wh.start()
    yield wh
    await wh.close()


@pytest.fixture
async def proxied(server_url: str, proxy: TcpProxy, direct: Warehouse) -> AsyncIterator[Warehouse]:
    wh = open_warehouse(through(server_url, proxy.port))
    await wh.start()
    yield wh
    await wh.close()


async def retry(call: Callable[[], Awaitable[T]], timeout: float = 30.0) -> tuple[T, int]:
    """What a consumer does: retry WarehouseUnavailable with a short backoff until it works."""
    deadline = time.monotonic() + timeout
    failures = 0
    while True:
        try:
            return await call(), failures
        except WarehouseUnavailable:
            failures += 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(min(0.05 * 2**failures, 0.5))


def batch_of(fence_owner_counter: tuple[str, int], n: int = ROWS) -> Batch:
    from sinks import Fence

    rows = [make_row(i, title="payload " + "x" * 400) for i in range(n)]
    return Batch(STREAM, SHARD, rows, [], rows[-1].sequence_number, Fence(*fence_owner_counter))


async def assert_loaded_once(direct: Warehouse, batch: Batch) -> None:
    assert await count(direct) == len(batch.rows)
    assert await direct.get_checkpoint(STREAM, SHARD) == batch.checkpoint


async def test_cut_mid_load_leaves_nothing_and_retry_loads_once(
    proxied: Warehouse, direct: Warehouse, proxy: TcpProxy
) -> None:
    fence = await take(proxied)
    batch = batch_of((fence.owner, fence.lease_counter))
    proxy.cut_after(300_000)  # of ~2 MB of rows: in the middle of COPY / LOAD DATA
    with pytest.raises(WarehouseUnavailable):
        await proxied.write_batch(batch)
    assert not proxy.armed
    assert await count(direct) == 0
    assert await direct.get_checkpoint(STREAM, SHARD) is None
    new, _ = await retry(lambda: proxied.write_batch(batch))
    assert new == ROWS
    await assert_loaded_once(direct, batch)


async def test_cut_before_commit_arrives(proxied: Warehouse, direct: Warehouse, proxy: TcpProxy) -> None:
    fence = await take(proxied)
    batch = batch_of((fence.owner, fence.lease_counter), 500)
    proxy.cut_on(b"COMMIT")
    with pytest.raises(WarehouseUnavailable):
        await proxied.write_batch(batch)
    assert proxy.cuts == 1
    assert await count(direct) == 0
    new, _ = await retry(lambda: proxied.write_batch(batch))
    assert new == 500
    await assert_loaded_once(direct, batch)


async def test_cut_after_commit_delivered(proxied: Warehouse, direct: Warehouse, proxy: TcpProxy) -> None:
    """The server commits but the client never hears it: the retry adds nothing."""
    fence = await take(proxied)
    batch = batch_of((fence.owner, fence.lease_counter), 500)
    proxy.cut_on(b"COMMIT", deliver=True)
    with pytest.raises(WarehouseUnavailable):
        await proxied.write_batch(batch)
    new, _ = await retry(lambda: proxied.write_batch(batch))
    # the retry waits on the lease row lock until the first transaction is settled, so it
    # either finds the rows there (0 new) or, had the COMMIT been lost, loads them itself
    assert new in (0, 500)
    await assert_loaded_once(direct, batch)


async def test_refused_then_restored(proxied: Warehouse, direct: Warehouse, proxy: TcpProxy) -> None:
    fence = await take(proxied)
    batch = batch_of((fence.owner, fence.lease_counter), 100)
    proxy.block()
    assert not await proxied.ping()
    with pytest.raises(WarehouseUnavailable):
        await proxied.write_batch(batch)
    with pytest.raises(WarehouseUnavailable):
        await proxied.renew_leases(STREAM, fence.owner, {SHARD: fence.lease_counter}, 10.0)
    with pytest.raises(WarehouseUnavailable):
        await proxied.list_leases(STREAM)
    assert await direct.ping()
    proxy.restore()
    renewed, _ = await retry(
        lambda: proxied.renew_leases(STREAM, fence.owner, {SHARD: fence.lease_counter}, 10)
    )
    assert list(renewed) == [SHARD]
    new, _ = await retry(lambda: proxied.write_batch(batch))
    assert new == 100
    await retry(proxied.ping)
    assert await proxied.ping()


async def test_start_while_down_then_up(server_url: str, proxy: TcpProxy, direct: Warehouse) -> None:
    proxy.block()
    wh = open_warehouse(through(server_url, proxy.port))
    try:
        with pytest.raises(WarehouseUnavailable):
            await wh.start()
        assert not await wh.ping()
        proxy.restore()
        await retry(wh.start)
        assert await wh.ping()
        assert await count(wh) == 0
    finally:
        await wh.close()


async def test_password_never_in_errors(server_url: str, proxy: TcpProxy) -> None:
    proxy.block()
    wh = open_warehouse(through(server_url, proxy.port, password="s3cret-pw"))
    try:
        with pytest.raises(WarehouseUnavailable) as caught:
            await wh.start()
        assert "s3cret-pw" not in str(caught.value)
        assert "***" in str(caught.value)
        assert "s3cret-pw" not in repr(wh)
    finally:
        await wh.close()


async def test_leases_renew_while_a_load_is_stuck(
    server_url: str, proxied: Warehouse, direct: Warehouse
) -> None:
    """Lease operations have their own connections: a batch blocked on the lease row lock
    (held here by another session) does not stop renewals of other shards."""
    from sinks import Fence

    fence = await take(proxied)
    other = await take(proxied, shard_id="shardId-000000000001")
    blocker = open_warehouse(server_url)
    await blocker.start()
    try:
        # a second writer with the same fence holds the lease row lock while it loads a big batch
        big = batch_of((fence.owner, fence.lease_counter), 3000)
        small = Batch(STREAM, SHARD, [make_row(99_999)], [], "1", Fence(fence.owner, fence.lease_counter))
        loads = asyncio.gather(blocker.write_batch(big), proxied.write_batch(small))
        for _ in range(5):
            renewed = await asyncio.wait_for(
                proxied.renew_leases(STREAM, other.owner, {"shardId-000000000001": other.lease_counter}, 10),
                2.0,
            )
            assert list(renewed) == ["shardId-000000000001"]
        await loads
        assert await count(direct) == 3001
    finally:
        await blocker.close()


async def test_reconnect_follows_a_moved_host_name(
    server_url: str, proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failover moves the warehouse's DNS name to a new primary: reconnects follow it.

    The resolver is the one fake here (DNS cannot be moved for real in a test): the name
    `primary.shardflow.test` resolves to 127.0.0.1, then to 127.0.0.2, where a second real
    proxy to the same server listens on the same port.
    """
    import socket

    real = socket.getaddrinfo
    target = {"address": "127.0.0.1"}

    def resolve(host: object, *args: object, **kwargs: object) -> object:
        if host == "primary.shardflow.test":
            host = target["address"]
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    parts = urlsplit(server_url)
    url = urlunsplit(
        (parts.scheme, f"{parts.username}@primary.shardflow.test:{proxy.port}", parts.path, "", "")
    )
    async with TcpProxy(
        parts.hostname or "127.0.0.1", parts.port or 0, listen_host="127.0.0.2", listen_port=proxy.port
    ) as standby:
        wh = open_warehouse(url)
        try:
            await wh.start()
            fence = await take(wh)
            first = batch_of((fence.owner, fence.lease_counter), 50)
            assert await wh.write_batch(first) == 50
            assert standby.connections_made == 0
            proxy.block()  # the old primary is gone
            target["address"] = "127.0.0.2"
            rows = [make_row(i) for i in range(50, 100)]
            second = Batch(STREAM, SHARD, rows, [], rows[-1].sequence_number, first.fence)
            new, _ = await retry(lambda: wh.write_batch(second))
            assert new == 50
            assert standby.connections_made > 0
            assert await count(wh) == 100
        finally:
            await wh.close()


async def test_wrong_database_or_password_is_a_config_error(server_url: str) -> None:
    """Retrying cannot fix these: ConfigError (fatal), with the password masked."""
    from processor.errors import ConfigError

    parts = urlsplit(server_url)
    missing_db = urlunsplit((parts.scheme, parts.netloc, "/sf_no_such_database", "", ""))
    wh = open_warehouse(missing_db)
    with pytest.raises(ConfigError):
        await wh.start()
    await wh.close()
    if parts.scheme == "mysql":  # PostgreSQL here trusts local connections: any password passes
        host = f"{parts.hostname}:{parts.port}"
        wrong = urlunsplit((parts.scheme, f"{parts.username}:wrong-pw@{host}", parts.path, "", ""))
        wh = open_warehouse(wrong)
        with pytest.raises(ConfigError) as caught:
            await wh.start()
        assert "wrong-pw" not in str(caught.value)
        await wh.close()
