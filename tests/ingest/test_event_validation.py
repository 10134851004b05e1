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
    format_ts,
    validate_event,
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
