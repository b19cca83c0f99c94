"""The job's inputs: image folders, WebDataset tar shards and Parquet files, planned as shards up front.

`plan_shards` checks every input before any work starts: a missing path, a glob that matches nothing,
or a file that is neither a tar archive nor a Parquet file is a DatasetError that names it.
`iter_records` then streams one shard's records; a truncated tar or an unreadable Parquet row group
ends that shard with an error record instead of raising, so the rest of the run goes on.

Every input member becomes a record: an image's bytes, or the reason it has none (too many bytes, a
link or device in a tar, a sample without an image, ...). No image is read before its size is known to
be within the byte limit (a tar member's header, a folder file's stat, a Parquet page's header).

A WebDataset sample's image: the key of a tar member is its path up to the first dot of its file name,
the rest is its extension (`a/001.seg.png` is field `seg.png` of sample `a/001`). The sample's image is
its member whose extension is --image-column (auto: the first of jpg, jpeg, png, webp, gif, bmp, tif,
tiff present); failing that, when exactly one member's final extension names an image format
(`22.05.png`, `clip.v2.jpg`), that member. A sample with none, or with several such members, is an error.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import stat
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..core.codec import IMAGE_EXTS

AUTO = "auto"
DEFAULT_MAX_BYTES = 32 * 1024 * 1024  # per image: the service's upload limit (TITOK_MAX_UPLOAD_BYTES)
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
    stat: str  # digest of the input's sizes and mtimes: the cheap test that it has not changed
    files: tuple[str, ...] = ()  # folder shards: image paths relative to `source` (the keys)
    column: str = AUTO  # tar: the image's extension; Parquet: the image column (resolved at planning)

    def paths(self) -> list[Path]:
        """The files whose bytes make this shard (a folder shard's images, or the one tar/Parquet file)."""
        return [Path(self.source) / f for f in self.files] if self.kind == "folder" else [Path(self.source)]


def _nonblocking(path: str, flags: int) -> int:
    """open()'s opener for files that may turn out to be FIFOs: O_NONBLOCK, so opening never waits for a writer."""
    return os.open(path, flags | os.O_NONBLOCK)


def stat_digest(paths: Sequence[Path]) -> str:
    """A digest of the files' names, sizes and modification times (no byte read): equal means unchanged."""
    parts = []
    for p in paths:
        try:
            st = p.stat()
            parts.append(f"{p}\t{st.st_size}\t{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{p}\tmissing")
    return _digest(*parts)


def content_digest(shard: Shard) -> str:
    """SHA-256 of the shard's input bytes (a folder shard: each file's key and bytes), read in 1 MiB blocks.

    A file that cannot be read contributes its error text, so the digest still differs from a readable one.
    """
    h = hashlib.sha256()
    for key, path in zip(shard.files or ("",), shard.paths(), strict=True):
        h.update(f"{key}\0".encode())
        try:
            with open(path, "rb", opener=_nonblocking) as f:  # a FIFO must not block the digest
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise OSError("not a regular file")
                while block := f.read(1 << 20):
                    h.update(block)
        except OSError as e:
            h.update(f"\0unreadable: {e}".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Record:
    """One image's bytes, or why there are none (error); key "" marks a problem with the shard itself."""

    key: str
    data: bytes | None
    error: str = ""


def too_large(nbytes: int, max_bytes: int) -> str:
    """The reason a member of `nbytes` bytes is skipped, or "" when it is within the limit."""
    if nbytes <= max_bytes:
        return ""
    return f"the image is {nbytes} bytes; the limit is {max_bytes} bytes (--max-image-bytes); not read"


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


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _kind(path: Path) -> Kind:
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise DatasetError(f"cannot read input {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(mode):
        return "folder"
    if not stat.S_ISREG(mode):  # opening a FIFO would block forever
        raise DatasetError(f"input {path} is {_file_type(mode)}, not a regular file or folder")
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


def shard_name(source: Path, stem: str) -> str:
    """The output name of an input: its stem plus 8 hex digits of its absolute path.

    Unique per input (two `00000.tar` in different folders never share a name), and the same in every run
    whatever the other inputs are, so a rerun with more inputs skips exactly the shards already done.
    """
    return f"{stem}-{_digest(source)[:8]}"


def _folder_shards(path: Path, shard_size: int) -> list[Shard]:
    files = sorted(
        (p for p in path.rglob("*")
         if p.suffix[1:].lower() in IMAGE_EXTS and not any(part.startswith(".") for part in p.relative_to(path).parts)
         and not p.is_dir()),  # a FIFO or a broken link named x.png is kept: it becomes an error record
        key=lambda p: p.relative_to(path).as_posix(),
    )
    if not files:
        raise DatasetError(f"input folder {path} holds no images ({', '.join(IMAGE_EXTS)}, searched recursively)")
    shards = []
    base = shard_name(path, path.name)
    for i in range(0, len(files), shard_size):
        part = files[i : i + shard_size]
        keys = tuple(p.relative_to(path).as_posix() for p in part)
        sizes = [p.stat().st_size if p.is_file() else 0 for p in part]
        shards.append(Shard(f"{base}-{i // shard_size:06d}", "folder", str(path), sum(sizes), stat_digest(part),
                            files=keys))
    return shards


def _bytes_type(t: object) -> bool:
    import pyarrow as pa

    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)


def _column_problem(path: Path, name: str, t: object) -> str:
    """Why column `name` of type `t` cannot hold images ("" when it can: binary, or a struct with binary bytes)."""
    import pyarrow as pa

    if _bytes_type(t):
        return ""
    if pa.types.is_struct(t):
        if t.get_field_index("bytes") < 0:  # type: ignore[attr-defined]
            return f"Parquet file {path}: column {name!r} is a struct without a 'bytes' field ({t})"
        inner = t.field("bytes").type  # type: ignore[attr-defined]
        if _bytes_type(inner):
            return ""
        return (f"Parquet file {path}: column {name!r} has the wrong type: its 'bytes' field is {inner}, "
                f"not binary image bytes ({t})")
    return f"Parquet file {path}: column {name!r} has the wrong type {t}, not binary image bytes"


def _parquet_column(path: Path, column: str) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as e:
        raise DatasetError(f"input {path} is not a readable Parquet file ({e})") from None
    if column != AUTO:
        if column not in schema.names:
            raise DatasetError(f"Parquet file {path} has no image-bytes column {column!r}; "
                               f"its columns: {', '.join(schema.names)}")
        problem = _column_problem(path, column, schema.field(column).type)
        if problem:
            raise DatasetError(problem)
        return column
    problems = []
    for name in PARQUET_IMAGE_COLUMNS:
        if name in schema.names:
            problem = _column_problem(path, name, schema.field(name).type)
            if not problem:
                return name
            problems.append(problem)
    if problems:
        raise DatasetError(problems[0])
    raise DatasetError(f"Parquet file {path}: none of the columns {', '.join(PARQUET_IMAGE_COLUMNS)} holds image "
                       f"bytes; its columns: {', '.join(schema.names)} (choose one with --image-column)")


def plan_shards(inputs: Sequence[str], shard_size: int = 10_000, image_column: str = AUTO) -> list[Shard]:
    """Check every input and cut it into shards: a folder every `shard_size` images, a file one shard each.

    Raises DatasetError naming the input: missing, not a regular file or folder (a FIFO would block the
    reader), neither a tar archive nor a Parquet file, a folder without images, a Parquet file without an
    image column of a binary type.
    """
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
        shards.append(Shard(shard_name(path, _stem(path)), kind, str(path), size, stat_digest([path]),
                            column=column))
    return shards


def iter_records(shard: Shard, max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[Record]:
    """The shard's images in order, as (key, bytes) records; problems become records with an error.

    No image over `max_bytes` is read: its size is known first (stat, tar header, Parquet page header).
    """
    if shard.kind == "folder":
        yield from _iter_folder(shard, max_bytes)
    elif shard.kind == "tar":
        yield from iter_tar(shard.source, shard.column, max_bytes)
    else:
        yield from _iter_parquet(shard, max_bytes)


def _read_regular(path: Path, max_bytes: int) -> Record:
    """A file's bytes, refusing non-regular files (a FIFO would block) and files over the byte limit."""
    key = path.name
    try:
        with open(path, "rb", opener=_nonblocking) as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                return Record(key, None, f"{_file_type(st.st_mode)}, not an image file; not read")
            reason = too_large(st.st_size, max_bytes)
            if reason:
                return Record(key, None, reason)
            data = f.read(min(st.st_size, max_bytes) + 1)  # +1: a file grown since its stat is caught
            reason = too_large(len(data), max_bytes)
            return Record(key, None, reason) if reason else Record(key, data)
    except OSError as e:
        return Record(key, None, f"cannot read the file ({e.strerror or e})")


def _iter_folder(shard: Shard, max_bytes: int) -> Iterator[Record]:
    root = Path(shard.source)
    for key in shard.files:
        yield _with_key(_read_regular(root / key, max_bytes), key)


def _with_key(record: Record, key: str) -> Record:
    return Record(key, record.data, record.error)


def _split_name(member: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the path up to the first dot of the file name, the rest its extension."""
    directory, _, base = member.removeprefix("./").rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def _special(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link (to {member.linkname}), not an image file; not followed"
    if member.islnk():
        return f"a hard link (to {member.linkname}), not an image file; not followed"
    if member.ischr() or member.isblk():
        return "a device, not an image file"
    if member.isfifo():
        return "a FIFO, not an image file"
    return f"a tar member of type {member.type!r}, not a regular file"


class _Sample:
    """The members of one WebDataset sample (consecutive in the tar): extensions, and candidate images' bytes."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.exts: list[str] = []
        self.images: dict[str, Record] = {}  # extension -> the member's bytes, or why not read


def _image_choice(sample: _Sample, column: str) -> tuple[str | None, str]:
    """(the extension of the sample's image, or None with the reason) by the module's documented rule."""
    exact = [column.lower()] if column != AUTO else list(IMAGE_EXTS)
    for ext in exact:
        if ext in sample.images:
            return ext, ""
    target = {column.lower().rpartition(".")[2]} if column != AUTO else set(IMAGE_EXTS)
    fallback = [e for e in sample.exts if e.rpartition(".")[2] in target]
    files = ", ".join(f".{e}" for e in sample.exts)
    if len(fallback) == 1:
        return fallback[0], ""
    if fallback:
        plain = f".{column}" if column != AUTO else "a plain image extension (.jpg, .png, ...)"
        return None, (f"the sample holds {len(fallback)} images ({files}) and none has {plain}: "
                      "choose one with --image-column")
    return None, f"the sample has no {f'.{column} file' if column != AUTO else 'image'} (its files: {files})"


class _StrictTarInfo(tarfile.TarInfo):
    """A header block cut short or not a header at all, after the first member, ends a tar silently in Python's
    tarfile (it reads as the end of the archive); here it is an error, so a truncated archive says so."""

    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
        try:
            return super().frombuf(buf, encoding, errors)
        except (tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as e:
            raise tarfile.SubsequentHeaderError(f"a member header is {e}") from None


def iter_tar(source: str | Path, column: str = AUTO,
             max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[Record]:
    """A WebDataset tar's samples as records, streamed: one record per sample (its image by the module's rule,
    or the reason it has none) and one per member that is no regular file; nothing over `max_bytes` is read.

    The one tar reader (the dataset job's and the training data's); a truncated or corrupt archive ends with an
    error record (key "") after the samples read so far, instead of raising.
    """
    target = {column.lower(), column.lower().rpartition(".")[2]} if column != AUTO else None
    count = 0
    seen: set[str] = set()
    sample: _Sample | None = None
    reading = False

    def close(s: _Sample) -> Record:
        ext, why = _image_choice(s, column)
        if ext is None:
            return Record(s.key, None, why)
        return _with_key(s.images[ext], s.key)

    try:
        with tarfile.open(source, mode="r|*", tarinfo=_StrictTarInfo) as tar:  # streamed: one pass, bounded memory
            for member in tar:
                tar.members = []  # tarfile keeps every TarInfo it has read (~400 bytes a member), even streamed
                if member.isdir():
                    continue
                key, ext = _split_name(member.name)
                if not member.isfile() or not key.rpartition("/")[2]:
                    reason = _special(member) if not member.isfile() else "a file name starting with a dot, no key"
                    yield Record(member.name, None, reason)
                    count += 1
                    continue
                if sample is None or key != sample.key:
                    if sample is not None:
                        yield close(sample)
                        count += 1
                    if key in seen:  # WebDataset samples are consecutive: this would be a second row with the key
                        sample = None
                        yield Record(key, None, f"member {member.name} repeats key {key!r} of an earlier sample "
                                               "(a sample's files must be consecutive in the tar)")
                        count += 1
                        continue
                    seen.add(key)
                    sample = _Sample(key)
                if ext in sample.exts:  # the same file twice in one sample: keep the first, say so of the second
                    yield Record(key, None, f"member {member.name} repeats {ext!r} of sample {key!r}; the first is "
                                            "kept")
                    count += 1
                    continue
                sample.exts.append(ext)
                final = ext.rpartition(".")[2]
                if (target is None and (ext in IMAGE_EXTS or final in IMAGE_EXTS)) or (target and (
                        ext in target or final in target)):
                    reason = too_large(member.size, max_bytes)  # the header's size: nothing read yet
                    if reason:
                        sample.images[ext] = Record(key, None, reason)
                    else:
                        reading = True  # a failure from here on leaves this sample incomplete
                        f = tar.extractfile(member)
                        sample.images[ext] = Record(key, f.read() if f else b"")
                        reading = False
            if sample is not None:
                yield close(sample)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        if sample is not None and not reading:  # whole: the failure is in the next member's header
            yield close(sample)
            count += 1
        yield Record("", None, f"the tar archive is truncated or corrupt after {count} samples ({e})")


def _iter_parquet(shard: Shard, max_bytes: int) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .parquet_pages import oversized_row_groups

    count = 0
    folder = Path(shard.source).parent
    try:
        pf = pq.ParquetFile(shard.source)
        names = pf.schema_arrow.names
        has_key = PARQUET_KEY_COLUMN in names
        skip = oversized_row_groups(shard.source, pf.metadata, shard.column, max_bytes)
        for group in range(pf.metadata.num_row_groups):
            if group in skip:
                n = pf.metadata.row_group(group).num_rows
                keys = (pf.read_row_group(group, columns=[PARQUET_KEY_COLUMN]).column(0).to_pylist() if has_key
                        else [None] * n)
                for key in keys:
                    yield Record(str(key) if key is not None else str(count), None, skip[group])
                    count += 1
                continue
            columns = [shard.column] + ([PARQUET_KEY_COLUMN] if has_key else [])
            for batch in pf.iter_batches(batch_size=64, row_groups=[group], columns=columns):
                images = batch.column(shard.column)
                paths = None
                if pa.types.is_struct(images.type):
                    if images.type.get_field_index("path") >= 0:
                        paths = images.field("path").to_pylist()
                    images = images.field("bytes")
                keys = batch.column(PARQUET_KEY_COLUMN).to_pylist() if has_key else None
                for j in range(len(images)):
                    key = str(keys[j]) if keys and keys[j] is not None else str(count)
                    count += 1
                    value = images[j]
                    if value.is_valid:
                        data = value.as_py()
                        reason = too_large(len(data), max_bytes)
                        yield Record(key, None, reason) if reason else Record(key, data)
                    elif paths and paths[j]:
                        yield _by_path(key, folder, str(paths[j]), shard.column, max_bytes)
                    else:
                        yield Record(key, None, f"column {shard.column} is null")
    except (OSError, pa.ArrowException) as e:
        yield Record("", None, f"the Parquet file is unreadable after {count} rows ({e})")


def _by_path(key: str, folder: Path, path: str, column: str, max_bytes: int) -> Record:
    """A Hugging Face Image row holding only a path: the file, resolved against the Parquet file's folder."""
    where = folder / path
    if not where.exists():
        return Record(key, None, f"column {column} holds only a path, {path!r}, and {where} does not exist")
    return _with_key(_read_regular(where, max_bytes), key)
