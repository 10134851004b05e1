"""The enrichment fast paths give exactly what the standard library gives, for any input.

`shard_consumer.enrich` splits URLs with a regular expression, reads UTM fields without
`parse_qs` and parses the stream's timestamps through a cache per second; these properties
hold them to `urlsplit`, `parse_qs` and `datetime.fromisoformat` on arbitrary text.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

from hypothesis import example, given, settings
from hypothesis import strategies as st

from processor.event import format_ts
from shard_consumer import enrich
from sinks.base import PageView

_URL_ALPHABET = "aZ09:/?#@[]%&=+._-~ \t\n\x00é" + "utm_sourcemdiampg"
_urls = st.one_of(
    st.text(alphabet=_URL_ALPHABET, max_size=60),
    st.builds(
        lambda scheme, rest: scheme + rest,
        st.sampled_from(["http://", "https://", "HTTP://", "ftp://", "//", "", " https://"]),
        st.text(alphabet=_URL_ALPHABET, max_size=60),
    ),
)


def _reference_url(url: str) -> tuple[str | None, ...]:
    try:
        parts = urlsplit(url)
        host = parts.hostname or None
    except ValueError:
        return (None,) * 5
    path = parts.path or ("/" if host else None)
    if "utm_" not in parts.query:
        return (host, path, None, None, None)
    query = parse_qs(parts.query)
    first = [query[k][0] if query.get(k) else None for k in ("utm_source", "utm_medium", "utm_campaign")]
    return (host, path, *first)


def _reference_host(url: str) -> str | None:
    try:
        return urlsplit(url).hostname or None
    except ValueError:
        return None


@settings(max_examples=1500, deadline=None)
@given(_urls)
@example("https://Shop.Example.com:8443/deals?utm_source=a&utm_source=b&utm_medium=&utm_campaign=x%20y")
@example("https://user@host/p?utm_source=a+b")
@example("http://[::1]:80/p?utm%5Fsource=z")
@example("http://[::1/p")
@example("https://h%41st/p")
@example("https://host?utm_source=a=b&utm_campaign")
@example("https://host#frag?utm_source=no")
def test_url_parts_equal_urlsplit_and_parse_qs(url: str) -> None:
    assert tuple(enrich._url_parts.__wrapped__(url)) == _reference_url(url)
    assert enrich._host.__wrapped__(url) == _reference_host(url)


@settings(max_examples=500, deadline=None)
@given(st.floats(min_value=0, max_value=4102444800, allow_nan=False))
def test_stream_timestamps_parse_as_fromisoformat(epoch: float) -> None:
    text = format_ts(epoch)
    assert enrich._parse_time.__wrapped__(text) == datetime.fromisoformat(text).astimezone(UTC)
    assert enrich._parse_time.__wrapped__(text).tzinfo is UTC


def test_other_timestamp_forms_still_parse() -> None:
    for text in ("2026-11-28T12:00:00+02:00", "2026-11-28T12:00:00.123456Z", "2026-11-28 12:00:00.123Z"):
        assert enrich._parse_time.__wrapped__(text) == datetime.fromisoformat(text).astimezone(UTC)


def test_row_fields_in_page_view_order() -> None:
    """to_page_view builds rows positionally, so the field order it assumes must be PageView's."""
    assert enrich._UrlParts._fields == PageView._fields[16:21]
    assert enrich.Agent._fields == PageView._fields[22:26]
    row = enrich.to_page_view(
        {"event_id": "e", "received_at": "2026-11-28T12:00:01.000Z", "referrer": "https://r.example/x"},
        "s",
        "7",
    )
    assert isinstance(row, PageView)
    assert (row.referrer_host, row.shard_id, row.sequence_number, row.type) == ("r.example", "s", "7", "page")
