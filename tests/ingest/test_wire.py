"""The msgspec fast path (`processor.wire`) agrees with the dict path on every input: the same
records where it takes a request, and where it has a doubt it takes nothing (the dict path then
decides and names the error)."""

from __future__ import annotations

import time
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from processor import wire
from processor.event import EventError, Limits, encode_event, format_ts, partition_key, validate_event
from tests.ingest.test_event_validation import LIMITS, NOW, events, same_keys, values

IP = "203.0.113.9"
AGENT = "test-agent/1.0"


def dict_path(texts: list[bytes], limits: Limits) -> list[tuple[str, dict[str, Any]]] | None:
    """What the dict path makes of each text, or None if it rejects any (or any is not JSON)."""
    out = []
    for text in texts:
        try:
            event = validate_event(
                orjson.loads(text), received_at=NOW, ip=IP, user_agent=AGENT, limits=limits
            )
            data = encode_event(event, limits)
        except (EventError, orjson.JSONDecodeError):
            return None
        out.append((partition_key(event), orjson.loads(data)))
    return out


def fast_path(texts: list[bytes], limits: Limits, *, body: bool) -> list[tuple[str, dict[str, Any]]] | None:
    context = wire.Context(NOW, format_ts(NOW), IP, AGENT, limits)
    if body:
        joined = texts[0] if len(texts) == 1 else b"[" + b",".join(texts) + b"]"
        records = wire.decode_body(joined, context)
    else:
        records = wire.decode_lines(texts, context)
    return None if records is None else [(key, orjson.loads(data)) for key, data in records]


def same(
    fast: list[tuple[str, dict[str, Any]]], slow: list[tuple[str, dict[str, Any]]], texts: list[bytes]
) -> None:
    assert len(fast) == len(slow)
    for (fast_key, fast_event), (slow_key, slow_event), text in zip(fast, slow, texts, strict=True):
        if orjson.loads(text).get("event_id") is None:  # a server-made UUIDv7 each time
            assert fast_event.pop("event_id") != slow_event.pop("event_id")
            if fast_key not in (fast_event.get("anonymous_id"), fast_event.get("user_id")):
                fast_key = slow_key
        assert fast_event == slow_event
        assert fast_key == slow_key


DAY_MS = 86400 * 1000
near_limits = st.one_of(
    st.integers(-2000, 2000).map(lambda d: int(NOW * 1000) - 366 * DAY_MS + d),
    st.integers(-2000, 2000).map(lambda d: int(NOW * 1000) + DAY_MS + d),
    st.integers(-2000, 2000).map(lambda d: (int(NOW * 1000) + d) / 1.0),
    st.sampled_from([format_ts(NOW), format_ts(NOW - 400 * 86400), "2026-13-01T00:00:00Z", None]),
)
plausible = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.text(max_size=14) | st.none(),
        "type": st.sampled_from(["page", "track", "bogus", None]),
        "anonymous_id": st.text(max_size=45) | st.none() | st.integers(-(2**40), 2**40),
        "user_id": st.text(max_size=3),
        "url": st.text(max_size=41),
        "ip": st.text(max_size=3) | st.none(),
        "user_agent": st.text(max_size=3) | st.none(),
        "ts": near_limits,
        "received_at": values,
        "properties": st.none()
        | values
        | st.dictionaries(st.text(max_size=3), values, min_size=4, max_size=9),
        "context": st.dictionaries(
            st.text(max_size=3), st.integers(-(2**40), 2**40) | st.text(max_size=3), max_size=7
        ),
    },
)
requests = st.lists(plausible, min_size=1, max_size=4) | st.lists(events, min_size=1, max_size=4)


@settings(max_examples=300)
@given(raws=requests | same_keys.filter(bool), limited=st.booleans(), body=st.booleans())
def test_the_fast_path_takes_only_what_the_dict_path_accepts_and_makes_the_same_records(
    raws: list[dict[str, Any]], limited: bool, body: bool
) -> None:
    limits = LIMITS if limited else Limits()
    texts = [orjson.dumps(raw, option=orjson.OPT_SERIALIZE_NUMPY) for raw in raws]
    fast = fast_path(texts, limits, body=body)
    slow = dict_path(texts, limits)
    if fast is not None:
        assert slow is not None, f"fast path took what the dict path refuses: {texts}"
        same(fast, slow, texts)


@given(value=values)
def test_anything_not_an_event_object_is_left_to_the_dict_path(value: object) -> None:
    if isinstance(value, dict):
        return
    text = orjson.dumps(value)
    assert wire.decode_lines([text], wire.Context(NOW, format_ts(NOW), IP, AGENT, Limits())) is None


def test_usual_requests_take_the_fast_path() -> None:
    """Page views as browsers send them, a Segment-style track with nested properties, events
    with their own ip and user agent, and ISO timestamps: none of them needs the dict path."""
    now_ms = int(NOW * 1000)
    raws: list[dict[str, Any]] = [
        {"type": "page", "url": "https://a.example/x?y=1", "anonymous_id": "a1", "ts": now_ms},
        {"type": "track", "name": "Order Completed", "user_id": "u1", "ts": now_ms - 5,
         "properties": {"total": 30.5, "products": [{"sku": "A", "qty": 2}], "coupon": None}},
        {"event_id": "e-3", "anonymous_id": "a3", "ip": "198.51.100.1", "user_agent": "own"},
        {"anonymous_id": "a4", "ts": "2026-11-29T04:00:00.123Z", "context": {"locale": "de-DE"}},
    ]  # fmt: skip
    texts = [orjson.dumps(raw) for raw in raws]
    for body in (False, True):
        fast = fast_path(texts, Limits(), body=body)
        slow = dict_path(texts, Limits())
        assert fast is not None and slow is not None
        same(fast, slow, texts)
    records = fast_path(texts, Limits(), body=False)
    assert records is not None
    assert [event["ip"] for _, event in records] == [IP, IP, "198.51.100.1", IP]
    assert [event["user_agent"] for _, event in records] == [AGENT, AGENT, "own", AGENT]
    assert records[0][1]["received_at"] == format_ts(NOW)


def test_a_request_with_one_doubtful_event_is_left_whole_to_the_dict_path() -> None:
    good = orjson.dumps({"anonymous_id": "a", "ts": int(time.time() * 1000)})
    for bad in (b'{"anonymous_id": "a", "bogus": 1}', b'{"type": "nope"}', b'{"event_id": "  "}',
                b'{"ts": true}', b"{not json", b'{"url": 5}', b'{"properties": []}'):  # fmt: skip
        assert wire.decode_lines([good, bad], wire.Context(NOW, format_ts(NOW), IP, AGENT, Limits())) is None
