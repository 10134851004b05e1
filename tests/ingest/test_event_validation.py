"""The one-pass validator agrees with the field-by-field one on every input: the same event, or
the same error naming the same field."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from processor import event as event_module
from processor.event import (
    OBJECT_FIELDS,
    STRING_FIELDS,
    EventError,
    Limits,
    _validate_strictly,
    encode_event,
    encode_events,
    format_ts,
    partition_key,
    validate_event,
    validate_events,
)

NOW = time.time()
LIMITS = Limits(max_string=40, max_event_id=12, max_object_keys=6, max_depth=3)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=50)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
timestamps = st.one_of(
    st.integers(int((NOW - 400 * 86400) * 1000), int((NOW + 2 * 86400) * 1000)),
    st.sampled_from(["2026-01-01T00:00:00Z", "yesterday", "", " 2020-01-01 ", True]),
)
fields = st.sampled_from([*STRING_FIELDS, *OBJECT_FIELDS, "ts", "received_at", "unknown", "x" * 70])
events = st.dictionaries(
    fields,
    st.one_of(values, timestamps, st.sampled_from(["page", "track", "bogus", " ", "e" * 13])),
    max_size=8,
)


def outcome(check: Any, raw: object) -> object:
    try:
        event = check(raw)
    except EventError as exc:
        return ("error", str(exc))
    if "event_id" not in (raw if isinstance(raw, dict) else {}) or raw.get("event_id") is None:
        event.pop("event_id")
    return ("event", event)


@settings(max_examples=600, deadline=None)
@given(raw=events | values)
def test_the_fast_path_agrees_with_the_field_by_field_check(raw: object) -> None:
    fast = outcome(lambda r: validate_event(r, received_at=NOW, ip="10.0.0.1", limits=LIMITS), raw)
    strict = outcome(lambda r: _validate_strictly(r, NOW, "10.0.0.1", None, LIMITS), raw)
    assert fast == strict


@settings(max_examples=600, deadline=None)
@given(raw=events)
def test_the_fast_path_agrees_given_the_length_of_the_text(raw: dict[str, Any]) -> None:
    """With `source_len` (the JSON text's length) short texts skip the string length checks."""
    try:
        text = orjson.dumps(raw)
    except TypeError:
        assume(False)
        raise
    limits = Limits(max_string=len(text), max_event_id=12, max_object_keys=6, max_depth=3)
    fast = outcome(
        lambda r: validate_event(r, received_at=NOW, ip="10.0.0.1", limits=limits, source_len=len(text)), raw
    )
    strict = outcome(lambda r: _validate_strictly(r, NOW, "10.0.0.1", None, limits), raw)
    assert fast == strict


field_values = st.one_of(values, timestamps, st.sampled_from(["page", "track", "bogus", " ", "e" * 13]))
same_keys = st.lists(fields, unique=True, max_size=6).flatmap(
    lambda keys: st.lists(
        st.tuples(*[field_values] * len(keys)).map(lambda vs: dict(zip(keys, vs, strict=True))), max_size=5
    )
)


@settings(max_examples=600, deadline=None)
@given(groups=st.lists(same_keys | st.lists(values, max_size=2), max_size=4), short=st.booleans())
def test_events_checked_together_agree_with_the_field_by_field_check(
    groups: list[list[object]], short: bool
) -> None:
    """A doubt about one object sends its whole group to the one-by-one path, never a wrong event."""
    raws = [raw for group in groups for raw in group]
    source_len = LIMITS.max_string if short else None
    if short:
        raws = [r for r in raws if not isinstance(r, dict) or _longest_string(r) <= LIMITS.max_string]
    got = validate_events(raws, received_at=NOW, ip="10.0.0.1", limits=LIMITS, source_len=source_len)
    assert len(got) == len(raws)
    for raw, event in zip(raws, got, strict=True):
        strict = outcome(lambda r: _validate_strictly(r, NOW, "10.0.0.1", None, LIMITS), raw)
        if event is not None:
            assert outcome(lambda r, e=event: e, raw) == strict


def _longest_string(value: object) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return max((_longest_string(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return max((_longest_string(v) for v in value), default=0)
    return 0


def test_a_good_request_is_checked_together() -> None:
    raws: list[object] = [
        {"url": f"https://a.example/{i}", "ts": 1_700_000_000_000 + i, "anonymous_id": "a"} for i in range(3)
    ]
    raws.insert(1, {"url": "https://a.example/", "type": "bogus"})
    got = validate_events(raws, received_at=1_700_000_001.5, ip="10.0.0.1", user_agent="ua")
    assert got[1] is None
    events = [event for event in got if event is not None]
    assert [event.pop("event_id") for event in events]
    assert events == [
        {
            "url": f"https://a.example/{i}",
            "anonymous_id": "a",
            "type": "page",
            "ts": f"2023-11-14T22:13:20.00{i}Z",
            "received_at": "2023-11-14T22:13:21.500Z",
            "ip": "10.0.0.1",
            "user_agent": "ua",
        }
        for i in range(3)
    ]


def test_key_orders_past_the_cache_are_still_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(event_module, "_SHAPES", {})
    monkeypatch.setattr(event_module, "_MAX_SHAPES", 0)
    good = {"url": "https://a.example/", "type": "track", "properties": {"a": 1}}
    assert validate_event(good, received_at=NOW)["type"] == "track"
    assert validate_event(dict(reversed(good.items())), received_at=NOW)["url"] == "https://a.example/"
    with pytest.raises(EventError, match=r"^type: unknown type 'x'"):
        validate_event({**good, "type": "x"}, received_at=NOW)
    assert event_module._SHAPES == {}


def test_a_good_event_keeps_its_key_order() -> None:
    """The record's bytes: the client's keys in their order, then the server's fields."""
    raw = {"title": "t", "ts": 1_700_000_000_000, "anonymous_id": "a", "received_at": 5, "event_id": "e"}
    event = validate_event(raw, received_at=1_700_000_001.5, ip="10.0.0.1", user_agent="ua")
    assert list(event) == [
        "title",
        "anonymous_id",
        "event_id",
        "type",
        "ts",
        "received_at",
        "ip",
        "user_agent",
    ]


def test_a_good_event_gets_the_server_fields() -> None:
    event = validate_event(
        {"url": "https://a.example/", "ts": 1_700_000_000_000, "user_id": None, "properties": {"a": [1]}},
        received_at=1_700_000_001.5,
        ip="10.0.0.1",
        user_agent="ua",
    )
    assert event.pop("event_id")
    assert event == {
        "url": "https://a.example/",
        "type": "page",
        "ts": "2023-11-14T22:13:20.000Z",
        "received_at": "2023-11-14T22:13:21.500Z",
        "properties": {"a": [1]},
        "ip": "10.0.0.1",
        "user_agent": "ua",
    }


@settings(max_examples=2000, deadline=None)
@given(
    seconds=st.floats(min_value=-2e9, max_value=4e9, allow_nan=False)
    | st.integers(0, 4 * 10**12).map(lambda ms: ms / 1000)
    | st.integers(0, 4 * 10**9).map(lambda s: s + 0.9999995)
)
def test_format_ts_shows_what_datetime_shows(seconds: float) -> None:
    dt = datetime.fromtimestamp(seconds, UTC)
    assert format_ts(seconds) == dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def test_events_are_encoded_together_as_one_by_one() -> None:
    events = [
        validate_event({"anonymous_id": f"a{i}", "url": "https://a.example/"}, received_at=NOW)
        for i in range(3)
    ]
    assert encode_events(events) == [(partition_key(e), encode_event(e)) for e in events]


def test_events_encoded_together_defer_any_doubt_to_one_by_one() -> None:
    good = {"anonymous_id": "a", "event_id": "e"}
    assert encode_events([good, {"user_id": "u", "event_id": "e"}]) is None
    assert encode_events([good, {"anonymous_id": "a" * 257, "event_id": "e"}]) is None
    assert encode_events([good, {"anonymous_id": "", "event_id": "e"}]) is None
    assert (
        encode_events([good, {"anonymous_id": "a", "title": "t" * 600}], Limits(max_record_bytes=500)) is None
    )
    assert encode_events([good, {"anonymous_id": "a", "x": object()}]) is None
    assert encode_events([]) == []
