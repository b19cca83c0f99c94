"""The job's inputs: image folders, WebDataset tar shards and Parquet files, planned as shards up front.

`plan_shards` checks every input before any work starts: a missing path, a glob that matches nothing,
or a file that is neither a tar archive nor a Parquet file is a DatasetError that names it.
`iter_records` then streams one shard's records; a truncated tar or an unreadable Parquet row group
ends that shard with an error record instead of raising, so the rest of the run goes on.
"""

from __future__ import annotations

import glob
import hashlib
import re
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from ..core.codec import IMAGE_EXTS

AUTO = "auto"
# img2dataset names the column after the encode format; Hugging Face datasets use "image" (a struct with bytes).
PARQUET_IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp", "image", "img")
PARQUET_KEY_COLUMN = "key"
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")

Kind = Literal["folder", "tar", "parquet"]


class DatasetError(Exception):
    """A problem with the job's inputs or output directory, found before the work it would spoil."""


@dataclass(frozen=True)
class Shard:
    """One unit of input, written as one output shard `name`.parquet."""

    name: str  # output file stem, unique within a run
    kind: Kind
    source: str  # absolute path of the folder, tar or Parquet file
    size_bytes: int  # input bytes, for the progress bar
    fingerprint: str  # changes when the input does: a done shard whose input changed is redone
    files: tuple[str, ...] = ()  # folder shards: image paths relative to `source` (the keys)
    column: str = AUTO  # tar: the image's extension; Parquet: the image column (resolved at planning)


@dataclass(frozen=True)
class Record:
    """One image's bytes, or why there are none (error); key "" marks a problem with the shard itself."""

    key: str
    data: bytes | None
    error: str = ""


def expand_braces(pattern: str) -> list[str]:
    """Bash-style braces: `a-{000..002}.tar` -> a-000.tar, a-001.tar, a-002.tar; `{x,y}` -> x, y.

    A group without `..` or `,` stays literal (a folder may be called `{tmp}`).
    """
    for m in _BRACE.finditer(pattern):
        items = _brace_items(m.group(1))
        if items is not None:
            head, tail = pattern[: m.start()], pattern[m.end() :]
            return [head + item + rest for item in items for rest in expand_braces(tail)]
    return [pattern]


def _brace_items(body: str) -> list[str] | None:
    rng = _RANGE.fullmatch(body)
    if rng:
        a, b = rng.groups()
        width = len(a) if len(a) > 1 and a.lstrip("-").startswith("0") else 0  # {000..099} keeps its zeros
        lo, hi = int(a), int(b)
        step = 1 if hi >= lo else -1
        return [f"{i:0{width}d}" for i in range(lo, hi + step, step)]
    return body.split(",") if "," in body else None


def resolve_inputs(inputs: Sequence[str]) -> list[Path]:
    """Every path that the arguments name, braces and globs expanded, in order, without repeats."""
    paths: dict[Path, None] = {}
    for raw in inputs:
        for pattern in expand_braces(raw):
            if any(c in pattern for c in "*?["):
                matches = sorted(glob.glob(pattern, recursive=True))
                if not matches:
                    raise DatasetError(f"input {raw!r}: nothing matches {pattern!r}")
            else:
                if not Path(pattern).exists():
                    raise DatasetError(f"input {raw!r}: no such file or folder: {pattern}")
                matches = [pattern]
            paths.update((Path(m).resolve(), None) for m in matches)
    return list(paths)


def _kind(path: Path) -> Kind:
    if path.is_dir():
        return "folder"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head == b"PAR1":
            return "parquet"
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError as e:
        raise DatasetError(f"cannot read input {path}: {e}") from None
    raise DatasetError(f"input {path} is neither a folder, a tar archive (WebDataset shard) nor a Parquet file")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".tar.gz", ".tgz", ".tar", ".parquet"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _digest(*parts: object) -> str:
    return hashlib.sha1("\n".join(map(str, parts)).encode()).hexdigest()[:12]


def _folder_shards(path: Path, shard_size: int) -> list[Shard]:
    files = sorted(
        (p for p in path.rglob("*")
         if p.suffix[1:].lower() in IMAGE_EXTS and not any(part.startswith(".") for part in p.relative_to(path).parts)
         and p.is_file()),
        key=lambda p: p.relative_to(path).as_posix(),
    )
    if not files:
        raise DatasetError(f"input folder {path} holds no images ({', '.join(IMAGE_EXTS)}, searched recursively)")
    shards = []
    for i in range(0, len(files), shard_size):
        part = files[i : i + shard_size]
        keys = tuple(p.relative_to(path).as_posix() for p in part)
        sizes = [p.stat().st_size for p in part]
        shards.append(Shard(f"{path.name}-{i // shard_size:06d}", "folder", str(path), sum(sizes),
                            _digest(*keys, *sizes), files=keys))
    return shards


def _parquet_column(path: Path, column: str) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as e:
        raise DatasetError(f"input {path} is not a readable Parquet file ({e})") from None

    def holds_bytes(name: str) -> bool:
        t = schema.field(name).type
        return (pa.types.is_binary(t) or pa.types.is_large_binary(t)
                or (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0))

    if column != AUTO:
        if column not in schema.names or not holds_bytes(column):
            raise DatasetError(f"Parquet file {path} has no image-bytes column {column!r}; "
                               f"its columns: {', '.join(schema.names)}")
        return column
    for name in PARQUET_IMAGE_COLUMNS:
        if name in schema.names and holds_bytes(name):
            return name
    raise DatasetError(f"Parquet file {path}: none of the columns {', '.join(PARQUET_IMAGE_COLUMNS)} holds image "
                       f"bytes; its columns: {', '.join(schema.names)} (choose one with --image-column)")


def plan_shards(inputs: Sequence[str], shard_size: int = 10_000, image_column: str = AUTO) -> list[Shard]:
    """Check every input and cut it into shards: a folder every `shard_size` images, a file one shard each."""
    if shard_size < 1:
        raise DatasetError(f"--shard-size must be at least 1, not {shard_size}")
    shards: list[Shard] = []
    for path in resolve_inputs(inputs):
        kind = _kind(path)
        if kind == "folder":
            shards += _folder_shards(path, shard_size)
            continue
        size = path.stat().st_size
        column = _parquet_column(path, image_column) if kind == "parquet" else image_column
        shards.append(Shard(_stem(path), kind, str(path), size, _digest(size), column=column))
    # Two inputs with the same name (a/x.tar, b/x.tar) get their source's digest appended, so neither overwrites.
    counts = Counter(s.name for s in shards)
    return [replace(s, name=f"{s.name}-{_digest(s.source)[:8]}") if counts[s.name] > 1 else s for s in shards]


def iter_records(shard: Shard) -> Iterator[Record]:
    """The shard's images in order, as (key, bytes) records; problems become records with an error."""
    if shard.kind == "folder":
        root = Path(shard.source)
        for key in shard.files:
            try:
                yield Record(key, (root / key).read_bytes())
            except OSError as e:
                yield Record(key, None, f"cannot read the file ({e.strerror or e})")
    elif shard.kind == "tar":
        yield from iter_tar(shard.source, shard.column)
    else:
        yield from _iter_parquet(shard)


def _split_name(member: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the path up to the first dot of the file name, the rest its extension."""
    directory, _, base = member.removeprefix("./").rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def iter_tar(source: str | Path, column: str = AUTO) -> Iterator[Record]:
    """A WebDataset tar's images as records, streamed: each sample's first image (or its `column` extension).

    The one tar reader (the dataset job's and the training data's); a truncated or corrupt archive ends with an
    error record (key "") after the images read so far, instead of raising.
    """
    wanted = (lambda ext: ext in IMAGE_EXTS) if column == AUTO else (lambda ext: ext == column.lower())
    count, last_key = 0, None
    try:
        with tarfile.open(source, mode="r|*") as tar:  # streamed: one pass, no index, bounded memory
            for member in tar:
                key, ext = _split_name(member.name)
                if not member.isfile() or not wanted(ext) or key == last_key or key.rpartition("/")[2] == "":
                    continue  # a sample's other files (.txt, .json, .cls, a second image) are not ours
                last_key = key
                f = tar.extractfile(member)
                yield Record(key, f.read() if f else b"")
                count += 1
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        yield Record("", None, f"the tar archive is truncated or corrupt after {count} images ({e})")


def _iter_parquet(shard: Shard) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    count = 0
    try:
        pf = pq.ParquetFile(shard.source)
        has_key = PARQUET_KEY_COLUMN in pf.schema_arrow.names
        columns = [shard.column] + ([PARQUET_KEY_COLUMN] if has_key else [])
        for batch in pf.iter_batches(batch_size=256, columns=columns):
            images = batch.column(shard.column)
            if pa.types.is_struct(images.type):
                images = images.field("bytes")
            keys = batch.column(PARQUET_KEY_COLUMN).to_pylist() if has_key else None
            for j, data in enumerate(images.to_pylist()):
                key = str(keys[j]) if keys and keys[j] is not None else str(count)
                count += 1
                yield Record(key, data) if data is not None else Record(key, None, f"column {shard.column} is null")
    except (OSError, pa.ArrowException) as e:
        yield Record("", None, f"the Parquet file is unreadable after {count} rows ({e})")
