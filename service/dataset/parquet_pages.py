"""Parquet page headers, read without decompressing a page: the dataset job's byte bound on Parquet cells.

A Parquet reader decompresses a whole page to read any value in it, so a 56 KB file holding one
zstd-compressed 1 GB value costs 1 GB before a single cell can be measured. Each page's header states its
uncompressed size and its number of values; a page larger than `(max_bytes + 4) * values` must hold a
value over the limit (4: a value's length prefix). Such a page larger than PAGE_BUDGET times the limit
is never decompressed: its row group is not read (each of its rows is listed); a smaller one is read, and
its cells over the limit are skipped one by one. Page headers are
Thrift compact-protocol structs (parquet-format's PageHeader); pyarrow does not expose them, hence this
small reader.
"""

from __future__ import annotations

import struct
from typing import IO, Any

_STOP, _TRUE, _FALSE, _I8, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)
_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 5, 7, 8  # PageHeader's fields holding num_values (their field 1)


PAGE_BUDGET = 4  # a page up to this many times the byte limit is read, and its oversized cells skipped one by one


class _Malformed(Exception):
    pass


def _byte(f: IO[bytes]) -> int:
    b = f.read(1)
    if not b:
        raise _Malformed("end of file inside a page header")
    return b[0]


def _varint(f: IO[bytes]) -> int:
    shift = result = 0
    while True:
        b = _byte(f)
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise _Malformed("varint too long")


def _zigzag(f: IO[bytes]) -> int:
    n = _varint(f)
    return (n >> 1) ^ -(n & 1)


def _value(f: IO[bytes], ttype: int, depth: int = 0) -> Any:
    if depth > 16:
        raise _Malformed("nesting too deep")
    if ttype in (_TRUE, _FALSE):
        return ttype == _TRUE
    if ttype == _I8:
        return _byte(f)
    if ttype in (_I16, _I32, _I64):
        return _zigzag(f)
    if ttype == _DOUBLE:
        return struct.unpack("<d", f.read(8))[0]
    if ttype == _BINARY:
        n = _varint(f)
        if n > 1 << 26:
            raise _Malformed("a header field over 64 MiB")
        f.seek(n, 1)
        return None
    if ttype in (_LIST, _SET):
        head = _byte(f)
        size, etype = head >> 4, head & 0x0F
        if size == 15:
            size = _varint(f)
        for _ in range(size):
            _byte(f) if etype in (_TRUE, _FALSE) else _value(f, etype, depth + 1)
        return None
    if ttype == _MAP:
        size = _varint(f)
        if size:
            kv = _byte(f)
            for _ in range(size):
                _value(f, kv >> 4, depth + 1)
                _value(f, kv & 0x0F, depth + 1)
        return None
    if ttype == _STRUCT:
        fields: dict[int, Any] = {}
        last = 0
        while (head := _byte(f)) != _STOP:
            delta, ftype = head >> 4, head & 0x0F
            fid = last + delta if delta else _zigzag(f)
            fields[fid] = _value(f, ftype, depth + 1)
            last = fid
        return fields
    raise _Malformed(f"unknown Thrift type {ttype}")


def page_sizes(f: IO[bytes], start: int, length: int) -> list[tuple[int, int]]:
    """(uncompressed bytes, values) of each page of the column chunk at [start, start + length) of file `f`."""
    pages = []
    pos, end = start, start + length
    while pos < end:
        f.seek(pos)
        header = _value(f, _STRUCT)
        values = next((h.get(1, 0) for k in (_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2)
                       if isinstance(h := header.get(k), dict)), 0)
        uncompressed, compressed = header.get(2), header.get(3)
        if not isinstance(uncompressed, int) or not isinstance(compressed, int) or compressed < 0:
            raise _Malformed("a page header without its sizes")
        pages.append((uncompressed, values))
        pos = f.tell() + compressed
    return pages


def oversized_row_groups(path: str, metadata: Any, column: str, max_bytes: int) -> dict[int, str]:
    """{row group: reason} for the row groups whose column `column` (a top-level name) holds a page that must
    contain a value over `max_bytes` and is over PAGE_BUDGET times `max_bytes` decompressed. Headers that
    cannot be parsed are left to the Parquet reader to judge.

    `metadata` is pyarrow's FileMetaData of the file at `path`.
    """
    leaf = next((i for i in range(metadata.num_columns)
                 if metadata.schema.column(i).path in (column, f"{column}.bytes")), None)
    if leaf is None:
        return {}
    found: dict[int, str] = {}
    with open(path, "rb") as f:
        for group in range(metadata.num_row_groups):
            chunk = metadata.row_group(group).column(leaf)
            start = chunk.data_page_offset
            if chunk.has_dictionary_page and chunk.dictionary_page_offset:
                start = min(start, chunk.dictionary_page_offset)
            try:
                pages = page_sizes(f, start, chunk.total_compressed_size)
            except (_Malformed, OSError, struct.error):
                continue
            for uncompressed, values in pages:
                if uncompressed > (max_bytes + 4) * max(values, 1) and uncompressed > PAGE_BUDGET * max_bytes:
                    found[group] = (f"row group {group} of column {column} holds a page of {uncompressed} bytes "
                                    f"decompressed for {values} value(s): some value is over the limit of "
                                    f"{max_bytes} bytes (--max-image-bytes); the row group was not read")
                    break
    return found
