"""The event model: validation of what clients send, and the bytes that travel on the stream.

An accepted event is a plain dict of the SPEC fields with exact types, encoded once with orjson.
Validation never coerces: a wrong type rejects the event with an error that names the field.
`null` counts as absent, as Segment's libraries send `"userId": null`.

On the stream a record is either an event (`{"event_id": ..., ...}`) or a dead letter
(`{"dead_letter": {"id": ..., "stage": ..., "reason": ..., "payload": ...}}`) that the front end
could not accept and the consumer files in `shardflow_dead_letters` (the front end never touches
the warehouse). The letter's `id` is its dedup key there: a record the spool re-sends after a
crash carries the same id, so it is filed once.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain, repeat
from typing import Any, Final, cast

import orjson
import uuid_utils

from processor.streams.base import MAX_RECORD_BYTES

__all__ = [
    "EVENT_TYPES",
    "MAX_KEY_CHARS",
    "OBJECT_FIELDS",
    "STRING_FIELDS",
    "DeadLetterRecord",
    "EventError",
    "Limits",
    "decode_record",
    "encode_dead_letter",
    "encode_event",
    "encode_events",
    "format_ts",
    "new_event_id",
    "parse_ts",
    "partition_key",
    "plainly_fits",
    "validate_event",
    "validate_events",
    "within_limits",
]

STRING_FIELDS: Final = (
    "event_id",
    "type",
    "url",
    "referrer",
    "title",
    "user_id",
    "anonymous_id",
    "session_id",
    "user_agent",
    "ip",
    "name",
)
OBJECT_FIELDS: Final = ("properties", "context", "traits")
KNOWN_FIELDS: Final = frozenset((*STRING_FIELDS, *OBJECT_FIELDS, "ts", "received_at"))
EVENT_TYPES: Final = frozenset(("page", "track", "identify", "screen", "group", "alias"))


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one event; beyond them the event is rejected, never truncated."""

    max_string: int = 8192
    """Characters in a string field (URLs and user agents included)."""
    max_event_id: int = 128
    max_object_keys: int = 1000
    """Keys in properties/context/traits, counted through nested objects and arrays."""
    max_depth: int = 32
    max_past_seconds: float = 366 * 24 * 3600.0
    max_future_seconds: float = 24 * 3600.0
    max_record_bytes: int = MAX_RECORD_BYTES - 512
    """Encoded event size; the stream's 1 MiB record limit less room for the partition key (a
    wider key, up to 256 characters of 4 bytes, is checked with the event by `encode_event`)."""


DEFAULT_LIMITS: Final = Limits()


class EventError(ValueError):
    """An event broke the contract. `field` names the offending field ("" for the whole event)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}" if field else problem)


def new_event_id() -> str:
    """A server-side UUIDv7: time-ordered, so warehouse indexes stay append-mostly."""
    return str(uuid_utils.uuid7())


@functools.lru_cache(maxsize=4096)
def format_ts(epoch_seconds: float) -> str:
    """ISO-8601 UTC with milliseconds and a `Z`, the one form times take on the stream.

    Exactly what `datetime.fromtimestamp(epoch_seconds, UTC)` shows, truncated to milliseconds.
    Cached, as events of a batch often share `ts`; the text of each whole second is cached too.
    """
    fraction, whole = math.modf(epoch_seconds)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        whole += 1
        micros -= 1_000_000
    elif micros < 0:
        whole -= 1
        micros += 1_000_000
    return f"{_second_text(int(whole))}{micros // 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def _second_text(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def parse_ts(value: object, field: str = "ts") -> float:
    """Epoch seconds from an ISO-8601 string or a number of epoch milliseconds."""
    if isinstance(value, bool):
        raise EventError(field, "must be an ISO-8601 string or epoch milliseconds, not a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise EventError(field, "must be a finite number of epoch milliseconds")
        return float(value) / 1000.0
    if isinstance(value, str):
        text = value.strip()
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise EventError(field, f"is not an ISO-8601 timestamp: {value[:64]!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    raise EventError(field, f"must be an ISO-8601 string or epoch milliseconds, not {_type_name(value)}")


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _count_keys(value: object, field: str, limits: Limits) -> None:
    """Bound the size and depth of a nested value without recursion (no stack to overflow)."""
    keys = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limits.max_depth:
            raise EventError(field, f"is nested deeper than {limits.max_depth} levels")
        if isinstance(item, dict):
            keys += len(item)
            if keys > limits.max_object_keys:
                raise EventError(field, f"has more than {limits.max_object_keys} fields")
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            keys += len(item)
            if keys > limits.max_object_keys:
                raise EventError(field, f"has more than {limits.max_object_keys} fields")
            stack.extend((v, depth + 1) for v in item)


@dataclass(frozen=True, slots=True)
class _Shape:
    """What the fast path checks in events whose keys come in one order (clients repeat theirs)."""

    strings: Callable[[dict[str, Any]], tuple[Any, ...]] | None
    objects: tuple[str, ...]
    ts: bool
    received_at: bool
    event_id: bool
    type: bool
    ip: bool
    user_agent: bool


_SHAPES: dict[tuple[str, ...], _Shape] = {}
_MAX_SHAPES: Final = 1024
"""Key orders remembered; past that, new ones are worked out per event (correct, only slower)."""
_ONLY_STR: Final = frozenset((str,))
_ONLY_DICT: Final = frozenset((dict,))
_ONLY_INT: Final = frozenset((int,))
_EVENT_ID: Final = operator.itemgetter("event_id")
_TYPE: Final = operator.itemgetter("type")
_TS: Final = operator.itemgetter("ts")
_NESTED: Final = frozenset((dict, list))


def _shape(keys: tuple[str, ...]) -> _Shape | None:
    """The checks for events with these keys; None when one is unknown (the strict path names it).

    Only shapes of known fields are remembered, so what the cache holds stays small.
    """
    shape = _SHAPES.get(keys)
    if shape is not None:
        return shape
    if not KNOWN_FIELDS.issuperset(keys):
        return None
    strings = tuple(k for k in keys if k in STRING_FIELDS)
    # one key more than needed, so that even a single string field comes back in a tuple
    getter = operator.itemgetter(*strings, *strings[:1]) if strings else None
    present = frozenset(keys)
    shape = _Shape(
        strings=getter,
        objects=tuple(k for k in keys if k in OBJECT_FIELDS),
        ts="ts" in present,
        received_at="received_at" in present,
        event_id="event_id" in present,
        type="type" in present,
        ip="ip" in present,
        user_agent="user_agent" in present,
    )
    if len(_SHAPES) < _MAX_SHAPES:
        _SHAPES[keys] = shape
    return shape


def validate_event(
    raw: object,
    *,
    received_at: float,
    ip: str | None = None,
    user_agent: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    received_at_text: str | None = None,
    source_len: int | None = None,
) -> dict[str, Any]:
    """The canonical event for one client object, or EventError naming the first bad field.

    `received_at` (epoch seconds), `ip` and `user_agent` come from the request; the client's
    own `ip`/`user_agent` win when given, as Segment's `context.ip` does. `received_at_text`,
    when given, is `format_ts(received_at)` computed once for the events of a request.
    `source_len`, when given, is the length of the JSON text `raw` was parsed from: no string
    in it has more characters than that text has bytes, so short texts skip the length checks.

    A good event is checked in a few C-level passes chosen by its key order (`_Shape`);
    anything in doubt (a null, a wrong type, a value near a limit) is decided by the
    field-by-field check (`_validate_strictly`), so errors always name the first bad field in
    the documented order. The result may share nested objects with `raw`.
    """
    if type(raw) is dict:
        shape = _shape(tuple(raw))
        if shape is not None:
            short = source_len is not None and source_len <= limits.max_string
            request = _Request(
                received_at, ip, user_agent, limits, received_at_text or format_ts(received_at)
            )
            events = _validate_quickly([raw], shape, request, short)
            if events is not None:
                return events[0]
    return _validate_strictly(raw, received_at, ip, user_agent, limits)


def validate_events(
    raws: Sequence[object],
    *,
    received_at: float,
    ip: str | None = None,
    user_agent: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    received_at_text: str | None = None,
    source_len: int | None = None,
) -> list[dict[str, Any] | None]:
    """`validate_event` for the objects of one request, checked together per key order.

    Each object's event, or None where a check had a doubt about the object's group: give
    those to `validate_event`, which decides (and names the error). `source_len` bounds the
    JSON text of every one of them.
    """
    events: list[dict[str, Any] | None] = [None] * len(raws)
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, raw in enumerate(raws):
        if type(raw) is dict:
            groups.setdefault(tuple(raw), []).append(index)
    short = source_len is not None and source_len <= limits.max_string
    request = _Request(received_at, ip, user_agent, limits, received_at_text or format_ts(received_at))
    for keys, indices in groups.items():
        shape = _shape(keys)
        if shape is None:
            continue
        group = [cast(dict[str, Any], raws[index]) for index in indices]
        good = _validate_quickly(group, shape, request, short)
        if good is not None:
            for index, event in zip(indices, good, strict=True):
                events[index] = event
    return events


@dataclass(frozen=True, slots=True)
class _Request:
    """What the events of one request share."""

    received_at: float
    ip: str | None
    user_agent: str | None
    limits: Limits
    received_at_text: str


def _validate_quickly(
    group: list[dict[str, Any]], shape: _Shape, request: _Request, short: bool
) -> list[dict[str, Any]] | None:
    """The events of objects with one key order when every field of every one is plainly good;
    None when the strict check must decide. Each check is one C-level pass over the group."""
    limits = request.limits
    if shape.strings is not None:
        strings = list(chain.from_iterable(map(shape.strings, group)))
        if not _ONLY_STR.issuperset(map(type, strings)) or (
            not short and max(map(len, strings)) > limits.max_string
        ):
            return None
    for key in shape.objects:
        objects = list(map(operator.itemgetter(key), group))
        if not _ONLY_DICT.issuperset(map(type, objects)):
            return None
        flat = max(map(len, objects)) <= limits.max_object_keys and _NESTED.isdisjoint(
            map(type, chain.from_iterable(map(dict.values, objects)))
        )
        # nested values are rare: then each object is counted through
        if not flat and not all(within_limits(value, limits) for value in objects):
            return None
    if shape.event_id:
        ids = list(map(_EVENT_ID, group))
        if max(map(len, ids)) > limits.max_event_id or not all(map(str.strip, ids)):
            return None
    if shape.type and not EVENT_TYPES.issuperset(map(_TYPE, group)):
        return None
    stamps: list[str | None] = [None] * len(group)
    if shape.ts:
        values = list(map(_TS, group))
        if _ONLY_INT.issuperset(map(type, values)):
            # as parse_ts does: each int is made a float, then divided
            seconds = list(map(operator.truediv, values, repeat(1000.0)))
        else:
            try:
                seconds = list(map(parse_ts, values))
            except EventError:
                return None
        if not (
            request.received_at - limits.max_past_seconds
            <= min(seconds)
            <= max(seconds)
            <= request.received_at + limits.max_future_seconds
        ):
            return None
        stamps = list(map(format_ts, seconds))
    return [_complete(raw, shape, request, ts) for raw, ts in zip(group, stamps, strict=True)]


def _complete(raw: dict[str, Any], shape: _Shape, request: _Request, ts: str | None) -> dict[str, Any]:
    """A checked object as its event: the client's fields in their order, then the server's."""
    event = raw.copy()
    if shape.ts:
        del event["ts"]
    if shape.received_at:
        del event["received_at"]
    if not shape.type:
        event["type"] = "page"
    if not shape.event_id:
        event["event_id"] = new_event_id()
    if ts is not None:
        event["ts"] = ts
    event["received_at"] = request.received_at_text
    if request.ip is not None and not shape.ip:
        event["ip"] = request.ip
    if request.user_agent is not None and not shape.user_agent:
        event["user_agent"] = request.user_agent
    return event


def within_limits(value: dict[str, Any], limits: Limits) -> bool:
    """True when `value` (with nested objects or arrays) is within the key and depth limits."""
    try:
        _count_keys(value, "", limits)
    except EventError:
        return False
    return True


def _validate_strictly(
    raw: object, received_at: float, ip: str | None, user_agent: str | None, limits: Limits
) -> dict[str, Any]:
    """Field by field in the documented order: the first bad field is the one named."""
    if not isinstance(raw, dict):
        raise EventError("", f"an event must be a JSON object, not {_type_name(raw)}")
    for key in raw:
        if key not in KNOWN_FIELDS:
            shown = key if len(key) <= 64 else key[:64] + "..."
            raise EventError(shown, "is not a known field")
    event: dict[str, Any] = {}
    for key in STRING_FIELDS:
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise EventError(key, f"must be a string, not {_type_name(value)}")
        limit = limits.max_event_id if key == "event_id" else limits.max_string
        if len(value) > limit:
            raise EventError(key, f"is longer than {limit} characters")
        event[key] = value
    kind = event.setdefault("type", "page")
    if kind not in EVENT_TYPES:
        raise EventError(
            "type", f"unknown type {kind[:64]!r}; expected one of {', '.join(sorted(EVENT_TYPES))}"
        )
    if "event_id" not in event:
        event["event_id"] = new_event_id()
    elif not event["event_id"].strip():
        raise EventError("event_id", "must not be empty")
    ts = raw.get("ts")
    if ts is not None:
        seconds = parse_ts(ts)
        if seconds < received_at - limits.max_past_seconds:
            raise EventError("ts", f"is more than {limits.max_past_seconds:.0f} s in the past")
        if seconds > received_at + limits.max_future_seconds:
            raise EventError("ts", f"is more than {limits.max_future_seconds:.0f} s in the future")
        event["ts"] = format_ts(seconds)
    event["received_at"] = format_ts(received_at)
    for key in OBJECT_FIELDS:
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise EventError(key, f"must be an object, not {_type_name(value)}")
        _count_keys(value, key, limits)
        event[key] = value
    if "ip" not in event and ip is not None:
        event["ip"] = ip
    if "user_agent" not in event and user_agent is not None:
        event["user_agent"] = user_agent
    return event


def partition_key(event: Mapping[str, Any]) -> str:
    """anonymous_id, else user_id, else event_id: one visitor's events stay in order on one shard."""
    key = event.get("anonymous_id") or event.get("user_id") or event["event_id"]
    return str(key)[:MAX_KEY_CHARS]


def encode_event(event: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The record bytes of an accepted event; EventError if it would exceed the record limit."""
    try:
        data = orjson.dumps(event)
    except TypeError as exc:
        raise EventError("", f"cannot be encoded: {exc}") from None
    if len(data) > limits.max_record_bytes:
        raise EventError("", f"is {len(data)} bytes encoded; the limit is {limits.max_record_bytes}")
    if len(data) > MAX_RECORD_BYTES - _MAX_KEY_BYTES:
        # the stream counts the partition key's UTF-8 bytes against the same 1 MiB
        key_bytes = len(partition_key(event).encode("utf-8"))
        if len(data) + key_bytes > MAX_RECORD_BYTES:
            raise EventError(
                "",
                f"is {len(data)} bytes encoded, with its {key_bytes}-byte partition key over the "
                f"stream's {MAX_RECORD_BYTES}-byte record limit",
            )
    return data


MAX_KEY_CHARS: Final = 256
"""The longest partition key, in characters (Kinesis's limit)."""
_MAX_KEY_BYTES: Final = 4 * MAX_KEY_CHARS
"""The most UTF-8 bytes a partition key takes: 256 characters of at most 4 bytes."""


def plainly_fits(records: Sequence[bytes], keys: Sequence[str], limits: Limits) -> bool:
    """Every record within the event limit and, with room for any key, the stream's; every key
    within MAX_KEY_CHARS: then none needs `encode_event`'s exact check with its own key."""
    return (
        max(map(len, records), default=0) <= min(limits.max_record_bytes, MAX_RECORD_BYTES - _MAX_KEY_BYTES)
        and max(map(len, keys), default=0) <= MAX_KEY_CHARS
    )


def encode_events(
    events: Sequence[Mapping[str, Any]], limits: Limits = DEFAULT_LIMITS
) -> list[tuple[str, bytes]] | None:
    """(partition key, record bytes) of each event, in one C-level pass over them all.

    None when any event is not plainly within the limits, or has no `anonymous_id`: then take
    them one by one with `partition_key` and `encode_event`, which names the problem.
    """
    try:
        records = list(map(orjson.dumps, events))
    except TypeError:
        return None
    keys = list(map(_ANONYMOUS_ID, events))
    if not all(keys) or not _ONLY_STR.issuperset(map(type, keys)) or not plainly_fits(records, keys, limits):
        return None
    return list(zip(keys, records, strict=True))


_ANONYMOUS_ID: Final = operator.methodcaller("get", "anonymous_id")


_MAX_DEAD_LETTER_ID: Final = 128
"""Longer ids on a record are ignored (the consumer keys the letter by stream position)."""


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    stage: str
    reason: str
    payload: str
    id: str | None = None
    """The key the front end gave the letter; None on records written before ids existed."""


def encode_dead_letter(
    stage: str,
    reason: str,
    payload: bytes | str,
    max_bytes: int = 256 * 1024,
    *,
    letter_id: str | None = None,
) -> bytes:
    """A dead-letter record for the stream; the payload is kept verbatim up to `max_bytes` of
    UTF-8, and cut further when JSON escapes would take the record past the stream's limit.

    The letter gets `letter_id`, or a new UUIDv7: encode once and keep the bytes, so every
    re-send of the record is recognised as the same letter.
    """
    text = payload.decode("utf-8", "backslashreplace") if isinstance(payload, bytes) else payload
    key = letter_id if letter_id is not None else new_event_id()
    reason = _cut(reason, _MAX_REASON_BYTES)
    budget = max_bytes
    while True:
        record = orjson.dumps(
            {"dead_letter": {"id": key, "stage": stage, "reason": reason, "payload": _cut(text, budget)}}
        )
        if len(record) <= DEFAULT_LIMITS.max_record_bytes:
            return record
        budget //= 2


_MAX_REASON_BYTES: Final = 8192


def _cut(text: str, max_bytes: int) -> str:
    """`text` within `max_bytes` of UTF-8 (whole characters), marked when it was cut."""
    if len(text) <= max_bytes // 4:
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", "ignore") + "...[truncated]"


def decode_record(data: bytes) -> dict[str, Any] | DeadLetterRecord:
    """An event dict or a dead letter from record bytes; EventError if the bytes are neither."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EventError("", f"record is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise EventError("", f"record must be a JSON object, not {_type_name(obj)}")
    letter = obj.get("dead_letter")
    if isinstance(letter, dict):
        key = letter.get("id")
        return DeadLetterRecord(
            stage=str(letter.get("stage", "ingest")),
            reason=str(letter.get("reason", "")),
            payload=str(letter.get("payload", "")),
            id=key if isinstance(key, str) and 0 < len(key) <= _MAX_DEAD_LETTER_ID else None,
        )
    if not isinstance(obj.get("event_id"), str) or not isinstance(obj.get("received_at"), str):
        raise EventError("", "record lacks event_id or received_at")
    return obj
