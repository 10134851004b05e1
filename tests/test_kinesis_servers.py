"""The loopback Kinesis-compatible servers start and answer."""

from __future__ import annotations

from tests.support.kinesalite import kinesalite, moto_server
from tests.support.net import port_open


def test_kinesalite_starts() -> None:
    with kinesalite() as endpoint:
        host, port = endpoint.removeprefix("http://").split(":")
        assert port_open(host, int(port))


def test_moto_starts() -> None:
    with moto_server() as endpoint:
        host, port = endpoint.removeprefix("http://").split(":")
        assert port_open(host, int(port))
