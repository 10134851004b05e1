"""The fault proxy itself, in its thread mode, in front of the real MariaDB with a sync client."""

from __future__ import annotations

from urllib.parse import urlsplit

import pymysql
import pytest

from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import wait_until


def connect(port: int, url: str) -> pymysql.connections.Connection:  # type: ignore[type-arg]
    parts = urlsplit(url)
    return pymysql.connect(
        host="127.0.0.1",
        port=port,
        user=parts.username or "root",
        password=parts.password or "",
        connect_timeout=5,
        read_timeout=5,
    )


def test_cut_block_restore_in_a_thread(mysql_url: str) -> None:
    parts = urlsplit(mysql_url)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 3306).in_thread() as proxy:
        conn = connect(proxy.port, mysql_url)
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        wait_until(lambda: proxy.open_connections == 1, what="one proxied connection")
        proxy.cut()
        with pytest.raises(pymysql.err.OperationalError), conn.cursor() as cur:
            cur.execute("SELECT 1")
        assert proxy.open_connections == 0
        proxy.block()
        with pytest.raises(pymysql.err.OperationalError):
            connect(proxy.port, mysql_url)
        proxy.restore()
        again = connect(proxy.port, mysql_url)
        with again.cursor() as cur:
            cur.execute("SELECT 2")
            assert cur.fetchone() == (2,)
        again.close()
        assert proxy.connections_made == 2
