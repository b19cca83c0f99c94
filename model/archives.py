"""Readers for the two containers the photo set's pictures hide in (stdlib only).

GCompris keeps its pictures inside Qt binary resource bundles (``.rcc``) and Enlightenment its
wallpapers inside Eet files (``.edj``). zstd-compressed ``.rcc`` entries need the optional
``zstandard`` package; without it they are listed as skipped, not read.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

# Qt binary resources (.rcc)

RCC_COMPRESSED = 0x01  # zlib (qCompress: 4-byte big-endian uncompressed size, then a zlib stream)
RCC_DIRECTORY = 0x02
RCC_COMPRESSED_ZSTD = 0x04


class RccError(ValueError):
    pass


@dataclass
class RccContents:
    files: dict[str, bytes] = field(default_factory=dict)  # path inside the bundle (no leading /) -> bytes
    skipped_zstd: list[str] = field(default_factory=list)  # zstd entries left out: `zstandard` is not installed


def _zstd_decompress(payload: bytes) -> bytes | None:
    try:
        import zstandard  # optional
    except ImportError:
        return None
    return zstandard.ZstdDecompressor().decompressobj().decompress(payload)


def read_rcc(blob: bytes, wanted: Iterable[str] | None = None) -> RccContents:
    """The files of a Qt binary resource bundle (format versions 1 to 3).

    Layout: ``"qres"``, then big-endian u32 version, tree offset, data offset, names offset (and, from
    version 3, u32 feature flags). Tree nodes are 14 bytes (version 1) or 22 (later: + u64 mtime):
    u32 name offset, u16 flags, then for a directory u32 child count and u32 index of the first child,
    for a file u16 territory, u16 language and u32 data offset. A name is u16 length, u32 hash and
    that many UTF-16BE code units; data is a u32 size and that many bytes. Node 0 is the root directory.

    wanted: paths (without a leading /) to decompress; None for all. When a path occurs more than once
    (one entry per locale), the last one in tree order wins.
    """
    if blob[:4] != b"qres":
        raise RccError("not a Qt resource file (no 'qres' magic)")
    if len(blob) < 20:
        raise RccError("truncated header")
    version, tree, data, names = struct.unpack_from(">IIII", blob, 4)
    if version not in (1, 2, 3):
        raise RccError(f"unsupported format version {version}")
    node_size = 14 if version == 1 else 22
    want = None if wanted is None else {w.lstrip("/") for w in wanted}
    out = RccContents()

    def u16(off: int) -> int:
        return struct.unpack_from(">H", blob, off)[0]

    def u32(off: int) -> int:
        return struct.unpack_from(">I", blob, off)[0]

    def name_at(off: int) -> str:
        o = names + off
        n = u16(o)
        raw = blob[o + 6:o + 6 + 2 * n]
        if len(raw) != 2 * n:
            raise RccError(f"name at {o} runs past the end of the file")
        return raw.decode("utf-16-be")

    def payload_at(off: int) -> bytes:
        p = data + off
        size = u32(p)
        raw = blob[p + 4:p + 4 + size]
        if len(raw) != size:
            raise RccError(f"data at {p} runs past the end of the file")
        return raw

    def walk(index: int, prefix: str, depth: int) -> None:
        if depth > 64:
            raise RccError("directory tree too deep (a cycle?)")
        o = tree + index * node_size
        if o + node_size > len(blob):
            raise RccError(f"tree node {index} lies past the end of the file")
        flags = u16(o + 4)
        path = f"{prefix}/{name_at(u32(o))}" if index else ""
        if flags & RCC_DIRECTORY:
            count, first = u32(o + 6), u32(o + 10)
            for child in range(first, first + count):
                walk(child, path, depth + 1)
            return
        rel = path.lstrip("/")
        if want is not None and rel not in want:
            return
        payload = payload_at(u32(o + 10))
        if flags & RCC_COMPRESSED:
            if len(payload) < 4:
                raise RccError(f"{rel}: compressed entry too short")
            payload = zlib.decompress(payload[4:])
        elif flags & RCC_COMPRESSED_ZSTD:
            decoded = _zstd_decompress(payload)
            if decoded is None:
                out.skipped_zstd.append(rel)
                out.files.pop(rel, None)
                return
            payload = decoded
        out.files[rel] = payload

    try:
        walk(0, "", 0)
    except struct.error as exc:
        raise RccError(f"truncated file: {exc}") from exc
    except zlib.error as exc:
        raise RccError(f"bad zlib data: {exc}") from exc
    return out


# --------------------------------------------------------------------------------------------------
# Enlightenment Eet (.edj)

EET_MAGIC_FILE = 0x1EE70F42


class EetError(ValueError):
    pass


def largest_jpeg_in_edj(blob: bytes) -> tuple[str, bytes] | None:
    """(entry name, JPEG bytes) of the largest JPEG among an .edj file's ``edje/images/*`` entries.

    Eet layout: big-endian u32 magic, directory entry count, dictionary entry count, then per entry six
    u32: data offset, stored size, uncompressed size, name offset, name size, flags (bit 0: compressed).
    Compressed entries that are not zlib (LZ4) are skipped; ties keep the first entry.
    """
    if len(blob) < 12:
        raise EetError("truncated header")
    magic, count, _ = struct.unpack_from(">III", blob, 0)
    if magic != EET_MAGIC_FILE:
        raise EetError(f"not an Eet file (magic {magic:#x})")
    if 12 + 24 * count > len(blob):
        raise EetError(f"directory of {count} entries runs past the end of the file")
    best: tuple[str, bytes] | None = None
    for i in range(count):
        off, size, _dsize, name_off, name_size, flags = struct.unpack_from(">6I", blob, 12 + 24 * i)
        name = blob[name_off:name_off + name_size].rstrip(b"\0").decode("latin-1")
        if not name.startswith("edje/images/"):
            continue
        payload = blob[off:off + size]
        if flags & 1:
            try:
                payload = zlib.decompress(payload)
            except zlib.error:
                continue
        if payload[:3] == b"\xff\xd8\xff" and (best is None or len(payload) > len(best[1])):
            best = (name, payload)
    return best
