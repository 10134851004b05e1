"""Configuration: durations, sizes, flag > env > TOML > default, unknown keys, derived defaults."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from processor.config import parse_duration, parse_log_levels, parse_size, resolve
from processor.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("3", 3.0),
        ("2.5", 2.5),
        ("500ms", 0.5),
        ("10s", 10.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        (" 2 s ", 2.0),
        (7, 7.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "ms", "-1", "1.2.3", True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match=r"duration|negative"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1024", 1024),
        ("5MiB", 5 * 2**20),
        ("5 MiB", 5 * 2**20),
        ("1GB", 10**9),
        ("512KiB", 512 * 1024),
        ("2k", 2048),
        ("1.5MiB", 3 * 2**19),
        (4096, 4096),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "5 apples", "MiB", "-5", False])
def test_bad_sizes(text: object) -> None:
    with pytest.raises(ValueError, match=r"size|negative"):
        parse_size(text)


def test_defaults_follow_the_spec() -> None:
    s = resolve({}, env={})
    assert s.common.data_dir == Path("shardflow-data")
    assert s.common.stream == "sqlite:///shardflow-data/stream.db"
    assert s.common.warehouse == "sqlite:///shardflow-data/warehouse.db"
    assert s.common.shards == 4
    assert s.ingest.spool_dir == Path("shardflow-data/spool")
    assert (s.ingest.host, s.ingest.port) == ("127.0.0.1", 8080)
    assert s.ingest.max_body == 5 * 2**20
    assert s.ingest.fsync == "interval"
    assert s.consumer.lease_timeout == 10.0
    assert s.consumer.initial_position == "TRIM_HORIZON"
    assert resolve({}, env={}, port_default=8081).ingest.port == 8081
    assert set(s.sources.values()) == {"default"}


def test_data_dir_moves_every_default_path() -> None:
    s = resolve({"data_dir": "/var/lib/sf"}, env={})
    assert s.common.stream == "sqlite:////var/lib/sf/stream.db"
    assert s.common.warehouse == "sqlite:////var/lib/sf/warehouse.db"
    assert s.ingest.spool_dir == Path("/var/lib/sf/spool")


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    toml = tmp_path / "sf.toml"
    toml.write_text('drain_timeout = "5m"\nlease-timeout = 30\nmax_body = "1MiB"\nworkers = 3\n')
    env = {"SHARDFLOW_DRAIN_TIMEOUT": "10s", "SHARDFLOW_LEASE_TIMEOUT": "20s"}
    s = resolve({"drain_timeout": "500ms"}, env=env, config_file=str(toml))
    assert s.ingest.drain_timeout == 0.5
    assert s.consumer.lease_timeout == 20.0
    assert s.ingest.max_body == 2**20
    assert s.consumer.workers == 3
    assert s.ingest.fsync == "interval"
    assert (s.sources["drain_timeout"], s.sources["lease_timeout"], s.sources["max_body"]) == (
        "flag",
        "env",
        "file",
    )
    assert s.sources["fsync"] == "default"


def test_config_file_from_variable(tmp_path: Path) -> None:
    toml = tmp_path / "sf.toml"
    toml.write_text('[shardflow]\nshards = 8\nfsync = "always"\n')
    s = resolve({}, env={"SHARDFLOW_CONFIG": str(toml)})
    assert (s.common.shards, s.ingest.fsync) == (8, "always")


def test_repeatable_options_from_each_source(tmp_path: Path) -> None:
    toml = tmp_path / "sf.toml"
    toml.write_text('write_key = ["k1", "k2"]\ntrusted_proxy = "10.0.0.0/8"\n')
    s = resolve(
        {}, env={"SHARDFLOW_CORS_ORIGIN": "https://a.example, https://b.example"}, config_file=str(toml)
    )
    assert s.ingest.write_keys == ("k1", "k2")
    assert s.ingest.trusted_proxies == ("10.0.0.0/8",)
    assert s.ingest.cors_origins == ("https://a.example", "https://b.example")
    assert resolve({"write_key": ["a", "b"]}, env={}).ingest.write_keys == ("a", "b")


def test_booleans_and_choices() -> None:
    s = resolve({}, env={"SHARDFLOW_ANONYMIZE_IP": "yes", "SHARDFLOW_INITIAL_POSITION": "latest"})
    assert s.consumer.anonymize_ip is True
    assert s.consumer.initial_position == "LATEST"
    assert resolve({"aggregate": True}, env={"SHARDFLOW_AGGREGATE": "0"}).ingest.aggregate is True


def test_unknown_toml_key_is_rejected(tmp_path: Path) -> None:
    toml = tmp_path / "sf.toml"
    toml.write_text('drain_timout = "5s"\n')
    with pytest.raises(ConfigError, match=r"unknown option drain_timout"):
        resolve({}, env={}, config_file=str(toml))


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({"drain_timeout": "soon"}, {}, r"--drain-timeout: 'soon' is not a duration"),
        ({}, {"SHARDFLOW_MAX_BODY": "big"}, r"SHARDFLOW_MAX_BODY: 'big' is not a size"),
        ({}, {"SHARDFLOW_SHARDS": "four"}, r"SHARDFLOW_SHARDS: 'four' is not an integer"),
        ({"fsync": "sometimes"}, {}, r"--fsync: 'sometimes' is not one of always, interval, never"),
        ({"port": "70000"}, {}, r"port 70000 is out of range"),
        ({"shards": "0"}, {}, r"shards must be at least 1"),
        ({"log_level": "loud"}, {}, r"'loud' is not a log level"),
        ({"initial_position": "AT_TIMESTAMP"}, {}, r"needs --initial-timestamp"),
    ],
)
def test_bad_values_name_the_option(flags: dict[str, object], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(flags, env=env)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("shards = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve({}, env={}, config_file=str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        resolve({}, env={}, config_file=str(tmp_path / "nope.toml"))
    toml = tmp_path / "types.toml"
    toml.write_text("shards = true\n")
    with pytest.raises(ConfigError, match=r"shards in .*types.toml: True is not an integer"):
        resolve({}, env={}, config_file=str(toml))


def test_per_component_log_levels() -> None:
    assert parse_log_levels("warning,shard_consumer=debug") == {
        "": logging.WARNING,
        "shard_consumer": logging.DEBUG,
    }
    assert parse_log_levels("sinks=error") == {"": logging.INFO, "sinks": logging.ERROR}


def test_initial_timestamp_iso_or_epoch() -> None:
    s = resolve({"initial_position": "AT_TIMESTAMP", "initial_timestamp": "2026-01-01T00:00:00Z"}, env={})
    assert s.consumer.initial_timestamp == 1767225600.0
    s = resolve({"initial_position": "AT_TIMESTAMP", "initial_timestamp": "1767225600"}, env={})
    assert s.consumer.initial_timestamp == 1767225600.0
