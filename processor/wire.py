"""The fast path from client JSON to stream records, for requests whose every event is plainly good.

msgspec decodes each JSON text straight into a typed struct, checking field names, types and
string lengths in C, and encodes the completed event again in C: no dict per event, no Python
pass per field. Whatever it has any doubt about (an unknown field, a wrong type, a null where
that matters, a limit near, a text that is not JSON) makes the whole request take the dict path
(`processor.event.validate_events`), which decides and names the first bad field. A good event
is the same event on either path; only the order of its fields on the stream may differ.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from itertools import chain, repeat
from typing import Annotated, Any, Final, NamedTuple

import msgspec

from processor.event import (
    EVENT_TYPES,
    OBJECT_FIELDS,
    STRING_FIELDS,
    EventError,
    Limits,
    format_ts,
    new_event_id,
    parse_ts,
    plainly_fits,
    within_limits,
)

__all__ = ["Context", "Records", "decode_body", "decode_lines"]

Records = list[tuple[str, bytes]]
"""(partition key, record bytes) of each event, in the request's order."""

_DECODE_ERRORS: Final = (msgspec.MsgspecError, ValueError, RecursionError, OverflowError)
_ENCODE: Final = msgspec.json.Encoder().encode
_NESTED: Final = frozenset((dict, list))
_ONLY_INT: Final = frozenset((int,))


_Scalar = str | int | float | bool | None


class _Shape:
    """The struct types for one set of `Limits`, and their decoders.

    Two of each: `flat` types object fields (properties, context, traits) as objects of plain
    values with at most `max_object_keys` keys, so a usual event needs no check in Python;
    `nested` takes any object, whose keys and depth Python then counts (`within_limits`).
    """

    def __init__(self, limits: Limits) -> None:
        text = Annotated[str, msgspec.Meta(max_length=limits.max_string)]
        event_id = Annotated[str, msgspec.Meta(max_length=limits.max_event_id)]
        fields: list[tuple[str, Any, Any]] = [
            (name, (event_id if name == "event_id" else text) | None, None) for name in STRING_FIELDS
        ]
        fields += [("ts", int | float | str | None, None), ("received_at", msgspec.Raw | None, None)]
        flat = Annotated[dict[str, _Scalar], msgspec.Meta(max_length=limits.max_object_keys)]
        self.flat_line, self.flat_body = self._decoders(
            fields + [(n, flat | None, None) for n in OBJECT_FIELDS]
        )
        self.nested_line, self.nested_body = self._decoders(
            fields + [(n, dict[str, Any] | None, None) for n in OBJECT_FIELDS]
        )

    @staticmethod
    def _decoders(
        fields: list[tuple[str, Any, Any]],
    ) -> tuple[Callable[[bytes], Any], Callable[[bytes], Any]]:
        # gc=False: decoded JSON holds no reference cycles, and a request's worth of them should
        # not make the collector walk each one.
        struct = msgspec.defstruct(
            "ClientEvent", fields, forbid_unknown_fields=True, omit_defaults=True, gc=False
        )
        one = msgspec.json.Decoder(struct).decode
        many = msgspec.json.Decoder(list[struct] | struct).decode  # type: ignore[valid-type]
        return one, many


@functools.cache
def _shape(limits: Limits) -> _Shape:
    return _Shape(limits)


class Context(NamedTuple):
    """What the events of one request share: when and from where it came, and the limits."""

    received_at: float
    received_at_text: str
    ip: str | None
    user_agent: str | None
    limits: Limits


def decode_lines(lines: Sequence[bytes], context: Context) -> Records | None:
    """The records of NDJSON `lines` (none empty), or None when the dict path must decide."""
    if not lines:
        return None
    shape = _shape(context.limits)
    return _decode(lambda decode: list(map(decode, lines)), shape.flat_line, shape.nested_line, context)


def decode_body(body: bytes, context: Context) -> Records | None:
    """The records of a JSON body (one event object or an array of them), or None as above."""

    def events(decode: Callable[[bytes], Any]) -> list[Any]:
        value = decode(body)
        return value if isinstance(value, list) else [value]

    shape = _shape(context.limits)
    return _decode(events, shape.flat_body, shape.nested_body, context)


def _decode(
    events_of: Callable[[Callable[[bytes], Any]], list[Any]],
    flat: Callable[[bytes], Any],
    nested: Callable[[bytes], Any],
    context: Context,
) -> Records | None:
    """`events_of(flat)`, else `events_of(nested)` with the object fields counted, completed."""
    try:
        events = events_of(flat)
    except _DECODE_ERRORS:
        try:
            events = events_of(nested)
        except _DECODE_ERRORS:
            return None
        if not _objects_within(events, context.limits):
            return None
    return _complete(events, context) if events else None


def _complete(events: list[Any], context: Context) -> Records | None:
    """Check what the struct could not, fill in the server's fields, encode; None on any doubt."""
    received_at, received_at_text, ip, user_agent, limits = context
    if None in map(_TYPE, events):
        for event in events:
            if event.type is None:
                event.type = "page"
    if not EVENT_TYPES.issuperset(map(_TYPE, events)):
        return None
    if None in map(_EVENT_ID, events):
        for event in events:
            if event.event_id is None:
                event.event_id = new_event_id()
    if not all(map(str.strip, map(_EVENT_ID, events))):
        return None
    stamps = _stamps(events, received_at, limits)
    if stamps is None:
        return None
    if _any_set(events, _IP) or _any_set(events, _USER_AGENT):
        for event, stamp in zip(events, stamps, strict=True):
            event.ts = stamp
            event.received_at = received_at_text
            if event.ip is None:
                event.ip = ip
            if event.user_agent is None:
                event.user_agent = user_agent
    else:
        for event, stamp in zip(events, stamps, strict=True):
            event.ts = stamp
            event.received_at = received_at_text
            event.ip = ip
            event.user_agent = user_agent
    records = list(map(_ENCODE, events))
    keys = [e.anonymous_id or e.user_id or e.event_id for e in events]
    return list(zip(keys, records, strict=True)) if plainly_fits(records, keys, limits) else None


def _any_set(events: list[Any], field: Callable[[Any], object]) -> bool:
    """Whether any event has the field (an empty string counts: the client's own wins)."""
    return len(events) != list(map(field, events)).count(None)


_EVENT_ID: Final = operator.attrgetter("event_id")
_TYPE: Final = operator.attrgetter("type")
_TS: Final = operator.attrgetter("ts")
_IP: Final = operator.attrgetter("ip")
_USER_AGENT: Final = operator.attrgetter("user_agent")


def _objects_within(events: list[Any], limits: Limits) -> bool:
    """Every object field of every event within the key and depth limits."""
    for name in OBJECT_FIELDS:
        objects = [o for o in map(operator.attrgetter(name), events) if o is not None]
        if objects and not _within(objects, limits):
            return False
    return True


def _within(objects: list[dict[str, Any]], limits: Limits) -> bool:
    """Every object within the key and depth limits (flat ones in one C-level pass)."""
    if max(map(len, objects)) <= limits.max_object_keys and _NESTED.isdisjoint(
        map(type, chain.from_iterable(map(dict.values, objects)))
    ):
        return True
    return all(within_limits(value, limits) for value in objects)


def _stamps(events: list[Any], received_at: float, limits: Limits) -> list[str | None] | None:
    """Each event's `ts` as the stream's ISO text (None where absent); None if any is in doubt."""
    values = list(map(_TS, events))
    present = [v for v in values if v is not None] if None in values else values
    if not present:
        return values
    try:
        if _ONLY_INT.issuperset(map(type, present)):
            seconds = list(map(operator.truediv, present, repeat(1000.0)))
        else:
            seconds = list(map(parse_ts, present))
    except (EventError, OverflowError):
        return None
    if not (
        received_at - limits.max_past_seconds
        <= min(seconds)
        <= max(seconds)
        <= received_at + limits.max_future_seconds
    ):
        return None
    texts: list[str | None] = list(map(format_ts, seconds))
    if present is values:
        return texts
    found = iter(texts)
    return [None if v is None else next(found) for v in values]
