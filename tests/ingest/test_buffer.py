"""The buffer hands the flusher records in one run: the longest prefix within both limits."""

from __future__ import annotations

import tracemalloc

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.buffer import Buffer
from processor.spool import Entry
from processor.streams.base import MAX_PUT_BYTES

sizes = st.sampled_from([1, 100, 600_000, 1_000_000, MAX_PUT_BYTES // 2])
records = st.lists(st.tuples(st.sampled_from("abcdefgh"), sizes), max_size=40)


def entries(spec: list[tuple[str, int]]) -> list[Entry]:
    return [Entry(1, i, key, b"", size) for i, (key, size) in enumerate(spec)]


@settings(max_examples=300, deadline=None)
@given(spec=records, max_records=st.integers(1, 12), max_bytes=st.sampled_from([1, 700_000, MAX_PUT_BYTES]))
def test_buffer_take_is_the_longest_prefix_within_both_limits(
    spec: list[tuple[str, int]], max_records: int, max_bytes: int
) -> None:
    buffer = Buffer(max_bytes=10**12)
    held = entries(spec)
    buffer.offer(held)
    taken = buffer.take(max_records, max_bytes)
    want: list[Entry] = []
    for entry in held[:max_records]:
        if want and sum(e.size for e in want) + entry.size > max_bytes:
            break
        want.append(entry)
    assert taken == want
    assert len(buffer) == len(held) - len(want)
    assert buffer.bytes == sum(e.size for e in held) - sum(e.size for e in want)


def test_a_full_buffer_holds_about_its_budget_in_memory_not_orjsons_4_kib_per_record() -> None:
    """orjson returns every record in a buffer of 4-8 KiB; a backlog must not cost that."""
    budget = 8 * 1024 * 1024
    buffer = Buffer(max_bytes=budget)
    event = {"event_id": "e", "url": "https://shop.example/" + "p" * 500, "anonymous_id": "a"}
    tracemalloc.start()
    try:
        for batch in range(200):
            fresh = [orjson.dumps(event) for _ in range(100)]
            buffer.offer(
                [Entry(1, batch * 100 + i, "a", data, len(data) + 1) for i, data in enumerate(fresh)]
            )
            del fresh
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert buffer.spilled_at is not None  # the buffer filled up: this is the backlog case
    assert buffer.bytes <= budget
    assert held < 2 * budget, f"{held / 2**20:.1f} MiB held for an {budget / 2**20:.0f} MiB buffer"
