"""Every Prometheus metric shardflow exports. The SPEC names are part of the contract."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BUFFER_EVENTS",
    "CONSUMER_MILLIS_BEHIND",
    "CONSUMER_RECORDS",
    "DEAD_LETTERS",
    "INGEST_EVENTS",
    "INGEST_REQUEST_SECONDS",
    "LEASES_HELD",
    "LEASE_EVENTS",
    "PUT_RECORDS",
    "SINK_COMMITS",
    "SINK_COMMIT_SECONDS",
    "SINK_ROWS",
    "SPOOL_BYTES",
    "WAREHOUSE_UP",
]

INGEST_EVENTS = Counter(
    "shardflow_ingest_events", "Events received by the front end, by result (accepted, rejected).", ["result"]
)
INGEST_REQUEST_SECONDS = Histogram(
    "shardflow_ingest_request_seconds",
    "Time from request start to answer in the front end.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
BUFFER_EVENTS = Gauge("shardflow_buffer_events", "Events accepted and not yet acknowledged by the stream.")
SPOOL_BYTES = Gauge("shardflow_spool_bytes", "Bytes in the on-disk spool.")
PUT_RECORDS = Counter(
    "shardflow_put_records", "Records sent with PutRecords, by result (ok, retried, failed).", ["result"]
)
CONSUMER_RECORDS = Counter(
    "shardflow_consumer_records", "Records read from the stream, per shard.", ["shard_id"]
)
CONSUMER_MILLIS_BEHIND = Gauge(
    "shardflow_consumer_millis_behind_latest", "How far each shard's reader is behind the tip.", ["shard_id"]
)
SINK_ROWS = Counter("shardflow_sink_rows", "Rows newly inserted into page_views.")
SINK_COMMIT_SECONDS = Histogram(
    "shardflow_sink_commit_seconds",
    "Duration of one rows-plus-checkpoint transaction.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
SINK_COMMITS = Counter(
    "shardflow_sink_commits", "Batch commits, by result (ok, lease_lost, retried).", ["result"]
)
LEASES_HELD = Gauge("shardflow_leases_held", "Shard leases held by this process.")
LEASE_EVENTS = Counter(
    "shardflow_lease_events", "Lease changes: taken, stolen, lost, released, renewed.", ["event"]
)
DEAD_LETTERS = Counter("shardflow_dead_letters", "Dead letters written, by stage.", ["stage"])
WAREHOUSE_UP = Gauge("shardflow_warehouse_up", "1 while the warehouse answers, 0 while it is down.")
