"""The embedded stream's put check: its all-records fast path decides exactly as the record-by-record one."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.errors import InvalidRequest
from processor.streams import embedded
from processor.streams.base import MAX_HASH_KEY, MAX_RECORD_BYTES, PutRecord, hash_key
from processor.streams.embedded import _check_each, _check_put

_BIG = b"x" * MAX_RECORD_BYTES
_sizes = st.sampled_from([0, 1, 300, MAX_RECORD_BYTES - 256, MAX_RECORD_BYTES - 3, MAX_RECORD_BYTES])
_keys = st.one_of(
    st.text(max_size=3),
    st.text(alphabet="aé€", min_size=250, max_size=260),
    st.sampled_from(["k", "é", "a" * 256, "a" * 257, "visitor-1"]),
)
_explicit = st.sampled_from([None, None, 0, MAX_HASH_KEY, MAX_HASH_KEY + 1, -1])
_records = st.builds(
    lambda size, key, explicit: PutRecord(_BIG[:size], key, explicit), _sizes, _keys, _explicit
)


def _outcome(check: Callable[[list[PutRecord]], list[int]], records: list[PutRecord]) -> list[int] | str:
    try:
        keys = check(records)
    except InvalidRequest as exc:
        return f"InvalidRequest: {exc}"
    return keys


@settings(max_examples=300, deadline=None)
@given(st.lists(_records, min_size=1, max_size=8))
def test_the_fast_check_agrees_with_the_record_by_record_one(records: list[PutRecord]) -> None:
    assert _outcome(_check_put, records) == _outcome(_check_each, records)


def test_a_front_end_put_takes_the_fast_path_and_gets_the_md5_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    records = [PutRecord(b"{}", f"visitor-{i}") for i in range(500)]
    monkeypatch.setattr(embedded, "_check_each", None)
    assert _check_put(records) == [hash_key(r.partition_key) for r in records]
