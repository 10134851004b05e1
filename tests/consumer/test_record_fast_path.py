"""The typed record decoder gives the row the general path gives, and stands aside otherwise.

`shard_consumer.enrich.record_to_page_view` decodes a stream record with msgspec straight into
the fields its row needs; `processor.event.decode_record` + `to_page_view` is the general path.
For a record the front end writes, both give the same row; for anything else the fast path
returns None and `process_records` takes the general path, so rows and dead letters are as before.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from processor.event import DeadLetterRecord, EventError, decode_record, encode_dead_letter
from shard_consumer.enrich import record_to_page_view, to_page_view
from shard_consumer.pool import process_records

_TEXT = st.text(alphabet='aZ09:/?&=._- é\x00\\"', max_size=20)
_OPTIONAL_TEXT = st.one_of(st.none(), _TEXT)
_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        _TEXT,
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_TEXT, inner, max_size=3)),
    max_leaves=6,
)
_STAMPS = st.sampled_from(
    ["2026-11-29T04:30:06.718Z", "2026-01-01T00:00:00.000Z", "2026-01-01T00:00:00+05:00", "yesterday", ""]
)
_FIELDS: dict[str, Any] = {
    "type": st.one_of(st.sampled_from(["page", "track", "identify"]), st.none(), st.integers(0, 99)),
    "ts": st.one_of(_STAMPS, st.none(), st.integers(0, 99)),
    "url": st.one_of(
        st.none(),
        st.sampled_from(
            [
                "https://shop.example.com/products/1?utm_source=newsletter&utm_medium=email",
                "http://[::1]:80/x",
                "not a url",
                "",
            ]
        ),
        _TEXT,
    ),
    "referrer": st.one_of(st.none(), st.just("https://www.google.com/search?q=shoes"), _TEXT),
    "title": _OPTIONAL_TEXT,
    "user_id": st.one_of(_OPTIONAL_TEXT, st.integers(0, 99)),
    "anonymous_id": _OPTIONAL_TEXT,
    "session_id": _OPTIONAL_TEXT,
    "user_agent": st.one_of(
        st.none(),
        st.sampled_from(
            [
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0",
                "Googlebot/2.1 (+http://www.google.com/bot.html)",
            ]
        ),
        _TEXT,
    ),
    "ip": st.one_of(st.none(), st.sampled_from(["203.0.113.7", "2001:db8::1", "nope"])),
    "name": _OPTIONAL_TEXT,
    "properties": _JSON,
    "context": _JSON,
    "traits": _JSON,
    "extra": _JSON,
}
_events = st.fixed_dictionaries(
    {"event_id": st.one_of(_TEXT, st.integers(0, 99)), "received_at": st.one_of(_STAMPS, st.none())},
    optional=_FIELDS,
)


def _general(data: bytes, anonymize_ip: bool) -> object:
    try:
        decoded = decode_record(data)
    except EventError as exc:
        return ("decode", str(exc))
    if isinstance(decoded, DeadLetterRecord):
        return decoded
    try:
        return to_page_view(decoded, "shardId-000000000000", "7", anonymize_ip=anonymize_ip)
    except Exception as exc:
        return ("transform", type(exc).__name__)


@settings(max_examples=400, deadline=None)
@given(_events, st.booleans())
@example(
    {
        "event_id": "e1",
        "received_at": "2026-11-29T04:30:06.718Z",
        "ts": "2026-11-29T04:30:06.718Z",
        "properties": {"sku": "SKU-1", "price": 19.99},
        "ip": "203.0.113.7",
    },
    True,
)
def test_a_record_gives_the_general_paths_row_or_none(event: dict[str, Any], anonymize_ip: bool) -> None:
    data = orjson.dumps(event)
    fast = record_to_page_view(data, "shardId-000000000000", "7", anonymize_ip=anonymize_ip)
    general = _general(data, anonymize_ip)
    if fast is not None:
        assert fast == general
        assert [type(v) for v in fast] == [type(v) for v in general]  # type: ignore[attr-defined]
    else:
        assert not (
            isinstance(event.get("event_id"), str)
            and isinstance(event.get("received_at"), str)
            and event["received_at"].endswith("Z")
            and all(isinstance(event.get(k), str | None) for k in ("type", "user_id"))
            and isinstance(event.get("ts"), str | None)
            and general.__class__.__name__ == "PageView"
        ), "a plain event left the fast path"


def test_odd_records_take_the_general_path() -> None:
    letter = encode_dead_letter("ingest", "too big", b"{}", letter_id="i-1")
    for data in (b"not json", b"[1]", b'{"event_id": 1, "received_at": "x"}', letter, b"\xff"):
        assert record_to_page_view(data, "s", "1") is None
    rows, letters = process_records("s", ["1", "2", "3"], [b"not json", letter, b"[1]"], False)
    assert rows == []
    assert [letter.stage for letter in letters] == ["decode", "ingest", "decode"]


def test_a_repeated_event_id_in_a_batch_is_loaded_once_on_either_path() -> None:
    good = orjson.dumps({"event_id": "e", "received_at": "2026-11-29T04:30:06.718Z"})
    odd = orjson.dumps({"event_id": "e", "received_at": "2026-11-29T04:30:06.718Z", "dead_letter": 1})
    rows, letters = process_records("s", ["1", "2", "3"], [good, odd, good], False)
    assert [(r.event_id, r.sequence_number) for r in rows] == [("e", "1")]
    assert letters == []
