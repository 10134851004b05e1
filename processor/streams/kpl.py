"""The KPL aggregation format: many user records packed into one Kinesis record.

Layout, as documented by the Kinesis Producer Library (`aggregation-format.md`):
magic `F3 89 9A C2`, then a protobuf `AggregatedRecord`, then the MD5 of the protobuf bytes.

    message AggregatedRecord {
      repeated string partition_key_table     = 1;
      repeated string explicit_hash_key_table = 2;
      repeated Record records                 = 3;
    }
    message Record {
      required uint64 partition_key_index     = 1;
      optional uint64 explicit_hash_key_index = 2;
      required bytes  data                    = 3;
      repeated Tag    tags                    = 4;
    }

A record that does not start with the magic bytes, or whose MD5 does not match, is a plain
record (the KCL treats it the same way), so `deaggregate` never fails on foreign data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "MAGIC",
    "AggregateBuilder",
    "SubRecord",
    "aggregate",
    "deaggregate",
    "is_aggregated",
    "pack",
    "unpack",
]

MAGIC = b"\xf3\x89\x9a\xc2"
_DIGEST = 16


@dataclass(frozen=True, slots=True)
class SubRecord:
    """One user record inside an aggregated record."""

    partition_key: str
    data: bytes
    explicit_hash_key: str | None = None


def _varint_slow(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS = tuple(_varint_slow(i) for i in range(1 << 14))


def _varint(value: int) -> bytes:
    return _SMALL_VARINTS[value] if value < 16384 else _varint_slow(value)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


_KEY_TAG = _varint(1 << 3 | 2)
_HASH_KEY_TAG = _varint(2 << 3 | 2)
_RECORD_TAG = _varint(3 << 3 | 2)
_KEY_INDEX_TAG = _varint(1 << 3 | 0)
_HASH_INDEX_TAG = _varint(2 << 3 | 0)
_DATA_TAG = _varint(3 << 3 | 2)
_OVERHEAD = len(MAGIC) + _DIGEST


def _index_prefix(index: int) -> bytes:
    """A sub-record's fields before its data for partition key `index` (no explicit hash key)."""
    return _KEY_INDEX_TAG + _varint(index) + _DATA_TAG


_INDEX_PREFIXES = tuple(_index_prefix(i) for i in range(1 << 14))


class AggregateBuilder:
    """Accumulates sub-records up to a size limit, encoding each one once.

    `size` is the exact byte size of `build()` (magic + protobuf + MD5) plus the partition key of
    the aggregated record, which Kinesis counts against its 1 MiB record limit.
    """

    def __init__(self) -> None:
        self._keys: dict[str, int] = {}
        self._hash_keys: dict[str, int] = {}
        self._prefixes: dict[str | tuple[str, str], bytes] = {}
        self._parts: list[bytes] = []
        self._count = 0
        self._body = 0
        self._key_size = 0
        self.partition_key: str | None = None
        self.explicit_hash_key: str | None = None

    def __len__(self) -> int:
        return self._count

    @property
    def size(self) -> int:
        return _OVERHEAD + self._body + self._key_size

    def try_add(self, record: SubRecord, limit: int | None = None) -> bool:
        """Add `record` unless that takes `size` over `limit` (then nothing changes)."""
        return self.try_add_parts(record.partition_key, record.data, record.explicit_hash_key, limit)

    def try_add_parts(
        self, partition_key: str, data: bytes, explicit_hash_key: str | None, limit: int | None = None
    ) -> bool:
        """`try_add` without building a SubRecord first (the producer's hot path).

        A sub-record's fields before its data depend only on its key pair, so they are encoded
        once per key pair and reused (`_prefixes`); the per-record work is two varints.
        """
        ident: str | tuple[str, str] = (
            partition_key if explicit_hash_key is None else (partition_key, explicit_hash_key)
        )
        prefix = self._prefixes.get(ident)
        tables = b""
        if prefix is None:
            prefix, tables = self._prefix(partition_key, explicit_hash_key)
        size = len(data)
        size_varint = _SMALL_VARINTS[size] if size < 16384 else _varint_slow(size)
        inner = len(prefix) + len(size_varint) + size
        head = _RECORD_TAG + (_SMALL_VARINTS[inner] if inner < 16384 else _varint_slow(inner)) + prefix
        extra = len(tables) + len(head) + len(size_varint) + size
        first = self.partition_key is None
        if limit is not None:
            key_size = len(partition_key.encode()) if first else self._key_size
            if _OVERHEAD + self._body + extra + key_size > limit:
                return False
        if first:
            self.partition_key = partition_key
            self.explicit_hash_key = explicit_hash_key
            self._key_size = len(partition_key.encode())
        if tables:
            self._parts.append(tables)
            if partition_key not in self._keys:
                self._keys[partition_key] = len(self._keys)
            if explicit_hash_key is not None and explicit_hash_key not in self._hash_keys:
                self._hash_keys[explicit_hash_key] = len(self._hash_keys)
        self._prefixes[ident] = prefix
        self._parts += (head, size_varint, data)
        self._body += extra
        self._count += 1
        return True

    def _prefix(self, partition_key: str, explicit_hash_key: str | None) -> tuple[bytes, bytes]:
        """The record fields before `data` for a key pair, and the table entries it still needs
        (nothing is changed: the caller commits both once the record fits)."""
        tables = b""
        key_index = self._keys.get(partition_key)
        if key_index is None:
            key_index = len(self._keys)
            key_bytes = partition_key.encode()
            tables += _KEY_TAG + _varint(len(key_bytes)) + key_bytes
        prefix = _KEY_INDEX_TAG + _varint(key_index)
        if explicit_hash_key is not None:
            hash_index = self._hash_keys.get(explicit_hash_key)
            if hash_index is None:
                hash_index = len(self._hash_keys)
                hash_bytes = explicit_hash_key.encode()
                tables += _HASH_KEY_TAG + _varint(len(hash_bytes)) + hash_bytes
            prefix += _HASH_INDEX_TAG + _varint(hash_index)
        return prefix + _DATA_TAG, tables

    def add(self, record: SubRecord) -> None:
        self.try_add(record)

    def build(self) -> bytes:
        """The aggregated record. Protobuf allows repeated fields interleaved, so the key tables
        are written where each key first appears (parsers, AWS's included, collect them in order)."""
        body = b"".join(self._parts)
        return MAGIC + body + hashlib.md5(body).digest()


def pack(keys: Sequence[str], datas: Sequence[bytes], limit: int) -> list[tuple[bytes | None, int]]:
    """Records `(keys[i], datas[i])` (no explicit hash keys) packed in order into aggregated
    records of at most `limit` bytes as `AggregateBuilder.size` counts them.

    Each item is (aggregated record, how many user records it holds, in order), or (None, 1) for
    a record too big to be aggregated at all. The bytes equal what `AggregateBuilder.try_add`
    builds from the same records; this is its loop without a method call or a bytes
    concatenation per record (the pieces are joined once), the producer's hot path.
    """
    out: list[tuple[bytes | None, int]] = []
    small = _SMALL_VARINTS
    index_prefixes = _INDEX_PREFIXES
    record_tag = _RECORD_TAG
    key_tag = _KEY_TAG
    n = len(keys)
    start = 0
    while start < n:
        prefixes: dict[str, bytes] = {}
        parts = [MAGIC]
        budget = limit - _OVERHEAD - len(keys[start].encode())
        body = 0
        i = start
        while i < n:
            key = keys[i]
            data = datas[i]
            size = len(data)
            size_varint = small[size] if size < 16384 else _varint_slow(size)
            prefix = prefixes.get(key)
            if prefix is None:
                key_bytes = key.encode()
                index = len(prefixes)
                prefix = index_prefixes[index] if index < 16384 else _index_prefix(index)
                inner = len(prefix) + len(size_varint) + size
                inner_varint = small[inner] if inner < 16384 else _varint_slow(inner)
                key_varint = small[len(key_bytes)] if len(key_bytes) < 16384 else _varint_slow(len(key_bytes))
                grow = 2 + len(key_varint) + len(key_bytes) + len(inner_varint) + inner
                if body + grow > budget:
                    break
                prefixes[key] = prefix
                parts += (key_tag, key_varint, key_bytes, record_tag, inner_varint, prefix, size_varint, data)
            else:
                inner = len(prefix) + len(size_varint) + size
                inner_varint = small[inner] if inner < 16384 else _varint_slow(inner)
                grow = 1 + len(inner_varint) + inner
                if body + grow > budget:
                    break
                parts += (record_tag, inner_varint, prefix, size_varint, data)
            body += grow
            i += 1
        if i == start:
            out.append((None, 1))
            start += 1
            continue
        record = b"".join(parts)
        out.append((record + hashlib.md5(memoryview(record)[len(MAGIC) :]).digest(), i - start))
        start = i
    return out


def aggregate(records: Sequence[SubRecord]) -> bytes:
    """One aggregated record holding `records`, in order."""
    builder = AggregateBuilder()
    for record in records:
        builder.add(record)
    return builder.build()


def is_aggregated(data: bytes) -> bool:
    """True when `data` carries the magic bytes and a matching MD5 trailer."""
    if len(data) <= len(MAGIC) + _DIGEST or not data.startswith(MAGIC):
        return False
    body = data[len(MAGIC) : -_DIGEST]
    return hashlib.md5(body).digest() == data[-_DIGEST:]


def _read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _skip(buf: bytes, pos: int, tag: int) -> int:
    """The position after the value of a field of wire type `tag & 7` starting at `pos`."""
    wire = tag & 7
    if wire == 0:
        return _read_varint(buf, pos)[1]
    if wire == 2:
        length, pos = _read_varint(buf, pos)
        return pos + length
    if wire == 1:
        return pos + 8
    if wire == 5:
        return pos + 4
    raise ValueError(f"unsupported wire type {wire}")


def unpack(data: bytes) -> list[tuple[str, bytes, str | None]] | None:
    """(partition key, data, explicit hash key) of each sub-record of a KPL-aggregated record,
    in order; None when `data` is a plain record. The consumer's hot path: no object per field.
    """
    if not is_aggregated(data):
        return None
    try:
        return _parse(data, len(MAGIC), len(data) - _DIGEST)
    except (ValueError, IndexError, UnicodeDecodeError):
        return None


def deaggregate(data: bytes) -> list[SubRecord] | None:
    """The sub-records of a KPL-aggregated record, or None when `data` is a plain record."""
    parts = unpack(data)
    return None if parts is None else [SubRecord(k, d, h) for k, d, h in parts]


def _parse(buf: bytes, pos: int, end: int) -> list[tuple[str, bytes, str | None]]:
    """Parse the `AggregatedRecord` in `buf[pos:end]`.

    Single-byte tags and one- or two-byte lengths (nearly all of them) are read inline; anything
    else goes through `_read_varint`. Key tables may come anywhere, so indexes are resolved at the end.
    """
    keys: list[str] = []
    hash_keys: list[str] = []
    raw: list[tuple[int, int | None, bytes]] = []
    while pos < end:
        tag = buf[pos]
        pos += 1
        if tag & 0x80:
            tag, pos = _read_varint(buf, pos - 1)
        if tag & 7 != 2:
            pos = _skip(buf, pos, tag)
            continue
        length = buf[pos]
        pos += 1
        if length & 0x80:
            if buf[pos] & 0x80:
                length, pos = _read_varint(buf, pos - 1)
            else:
                length = (length & 0x7F) | buf[pos] << 7
                pos += 1
        stop = pos + length
        if stop > end:
            raise ValueError("truncated field")
        if tag == 0x1A:
            key_index = 0
            hash_index: int | None = None
            payload = b""
            while pos < stop:
                field = buf[pos]
                pos += 1
                if field == 0x08 or field == 0x10:
                    value = buf[pos]
                    pos += 1
                    if value & 0x80:
                        value, pos = _read_varint(buf, pos - 1)
                    if field == 0x08:
                        key_index = value
                    else:
                        hash_index = value
                elif field == 0x1A:
                    size = buf[pos]
                    pos += 1
                    if size & 0x80:
                        if buf[pos] & 0x80:
                            size, pos = _read_varint(buf, pos - 1)
                        else:
                            size = (size & 0x7F) | buf[pos] << 7
                            pos += 1
                    payload = buf[pos : pos + size]
                    pos += size
                else:
                    if field & 0x80:
                        field, pos = _read_varint(buf, pos - 1)
                    pos = _skip(buf, pos, field)
            if pos != stop:
                raise ValueError("sub-record overruns its length")
            raw.append((key_index, hash_index, payload))
        elif tag == 0x0A:
            keys.append(buf[pos:stop].decode())
        elif tag == 0x12:
            hash_keys.append(buf[pos:stop].decode())
        pos = stop
    if pos != end:
        raise ValueError("field overruns the record")
    return [(keys[k], d, None if h is None else hash_keys[h]) for k, h, d in raw]
