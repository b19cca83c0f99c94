"""Output shards: one Parquet file per input shard, written atomically, then a record that it is complete.

For a shard NAME the output directory holds:
    NAME.parquet              one row per image: key, tokens (fixed-size list of the smallest unsigned type
                              that holds the codebook), source, width, height; the file's metadata (key
                              b"titok") names the model, its content hash, image size, tokens, codebook
                              size, resize mode, the compute dtype of the model (float32, bfloat16, ...),
                              and the token budget when one was given (`budget`: {"num_tokens": k} or
                              {"target_psnr": dB}). num_tokens=k: tokens is a fixed-size list of k.
                              target_psnr: tokens is a variable-length list (list<uint16> for a 4096
                              codebook), with the columns num_tokens (int32, the row's length), psnr
                              (float32, dB at that length) and reached (bool, false where the image kept
                              all K tokens without reaching the target)
    .titok/NAME.errors.jsonl  only when some images failed: {"key", "reason"} per line
    .titok/NAME.done.json     written last: the shard is complete (rows, errors, the input's size-and-mtime
                              digest and its SHA-256)

Only the Parquet files sit at the top, so `pyarrow.dataset.dataset(DIR)` and
`datasets.load_dataset("parquet", data_dir=DIR)` read the directory as it is (both skip hidden folders).
Each file is written under a temporary name in .titok/ and renamed, so a killed run leaves no half file
under a final name; a shard without its done record is redone by the next run.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .inputs import DatasetError, Shard, content_digest, stat_digest

if TYPE_CHECKING:  # the artifact module imports torch, which the decoding workers never need
    from ..core.artifact import ModelInfo
    from ..core.budgets import Budget

META_KEY = b"titok"
FORMAT_VERSION = 2
PARQUET, DONE, ERRORS, TMP = ".parquet", ".done.json", ".errors.jsonl", ".tmp"
RECORDS = ".titok"  # the done records, errors files and temporary files: hidden from Parquet readers
# Everything the tokens depend on: shards that differ in any of these cannot share a directory.
# A directory written without a budget has no "budget" key, as before budgets existed.
IDENTITY = ("model", "content_hash", "image_size", "num_tokens", "codebook_size", "resize", "budget")


def job_meta(info: ModelInfo, resize: str, budget: Budget | None = None,
             compute_dtype: str = "float32") -> dict[str, Any]:
    """The footer of every shard. budget: num_tokens / target_psnr (part of the job's identity). compute_dtype:
    the engine's (tokens of bf16/fp16 may differ from fp32's in a few positions; not part of IDENTITY); under Ray
    "auto" only on GPUs, whose rule (bf16 where supported) every actor applies alike."""
    meta = {"model": info.name, "content_hash": info.content_hash, "image_size": info.image_size,
            "num_tokens": info.num_tokens, "codebook_size": info.codebook_size,
            "token_dtype": info.token_dtype.name, "resize": resize, "compute_dtype": compute_dtype,
            "format_version": FORMAT_VERSION}
    if budget is not None and budget.num_tokens is not None:
        meta["budget"] = {"num_tokens": budget.num_tokens}
    elif budget is not None and budget.target_psnr is not None:
        meta["budget"] = {"target_psnr": budget.target_psnr}
    return meta


def describe(meta: dict[str, Any]) -> str:
    """A job's identity in words, for error messages."""
    budget = meta.get("budget")
    policy = ", ".join(f"{k}={v:g}" for k, v in budget.items()) if isinstance(budget, dict) else "all tokens"
    return (f"model {meta.get('model')} (content hash {str(meta.get('content_hash'))[:12]}), "
            f"{meta.get('image_size')} px, {meta.get('num_tokens')} tokens, resize {meta.get('resize')}, {policy}")


def is_ragged(meta: dict[str, Any]) -> bool:
    """Whether the job's rows have tokens of their own lengths (a target_psnr budget)."""
    return "target_psnr" in (meta.get("budget") or {})


def row_tokens(meta: dict[str, Any]) -> int:
    """The tokens per row of a fixed-length job: num_tokens=k's k, else the model's K."""
    return int((meta.get("budget") or {}).get("num_tokens") or meta["num_tokens"])


def same_job(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in IDENTITY)


def shard_meta(path: Path) -> dict[str, Any]:
    """The job metadata stored in one output shard's Parquet footer."""
    try:
        raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
        meta = json.loads(raw) if raw else None
    except (OSError, pa.ArrowException, json.JSONDecodeError) as e:
        raise DatasetError(f"{path} is not a readable tokenized shard ({e})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{path} is a Parquet file without titok metadata, not a tokenized shard")
    return meta


def records_dir(out: Path) -> Path:
    return out / RECORDS


def done_path(out: Path, name: str) -> Path:
    return out / RECORDS / f"{name}{DONE}"


def errors_path(out: Path, name: str) -> Path:
    return out / RECORDS / f"{name}{ERRORS}"


def _ours(out: Path) -> list[Path]:
    files = [p for p in out.iterdir() if p.is_file() and p.name.endswith(PARQUET)]
    records = records_dir(out)
    if records.is_dir():
        files += [p for p in records.iterdir() if p.is_file() and p.name.endswith((DONE, ERRORS, TMP))]
    return files


def prepare_output(out: Path, meta: dict[str, Any], overwrite: bool = False) -> None:
    """Create `out`, drop temporary files of killed runs, and refuse shards of another model or resize mode.

    With `overwrite`, the shards of another job are deleted instead (only this job's file types).
    """
    if out.exists() and not out.is_dir():
        raise DatasetError(f"--out {out} exists and is not a directory")
    records_dir(out).mkdir(parents=True, exist_ok=True)
    for p in records_dir(out).glob(f"*{TMP}"):
        p.unlink()
    for p in sorted(out.glob(f"*{PARQUET}")):
        other = shard_meta(p)
        if same_job(other, meta):
            continue
        if not overwrite:
            raise DatasetError(f"{out} holds shards of {describe(other)} (e.g. {p.name}); this run is "
                               f"{describe(meta)}; choose another --out, or pass --overwrite to delete them")
        for q in _ours(out):
            q.unlink()
        return


@dataclass(frozen=True)
class InputState:
    """What a done record says of its input: `stat` (sizes and mtimes, free to check) and `sha256` (its bytes)."""

    stat: str
    sha256: str

    @classmethod
    def of(cls, shard: Shard) -> InputState:
        """Taken before the shard is read: an input changed while it was read is judged changed next time."""
        return cls(stat_digest(shard.paths()), content_digest(shard))


def is_done(out: Path, shard: Shard) -> bool:
    """The shard's done record and Parquet file are there, and its input is the one they were made from.

    Unchanged sizes and mtimes settle it without reading the input; otherwise the input's SHA-256 must
    equal the recorded one (a tar padded to the same size, a file touched but not changed). A shard
    found unchanged by its digest gets its record's stat refreshed, so the next run takes the cheap path.
    """
    path = done_path(out, shard.name)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if not isinstance(record, dict) or not (out / f"{shard.name}{PARQUET}").is_file():
        return False
    if record.get("stat") == stat_digest(shard.paths()):
        return True
    if not record.get("sha256") or record["sha256"] != content_digest(shard):  # an old record: no digest
        return False
    _write_atomic(path, json.dumps({**record, "stat": stat_digest(shard.paths())}).encode())
    return True


def _write_atomic(path: Path, data: bytes) -> None:
    records = path.parent if path.parent.name == RECORDS else path.parent / RECORDS  # same file system: a rename
    tmp = records / f"{path.name}.{os.getpid()}{TMP}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # the bytes reach the disk before the name does
    os.replace(tmp, path)


class ShardRows:
    """One shard's results in input order, held compactly: keys, sizes and a (rows, K) token array of the
    output's token type (copies: nothing of the model's output batches is kept). Tokens may arrive later
    than the rest (after the model's batch), through `set_tokens`.
    """

    def __init__(self, shard: Shard, num_tokens: int, token_dtype: str | np.dtype, state: InputState | None = None,
                 ragged: bool = False) -> None:
        self.shard, self.state = shard, state
        self.keys: list[str] = []
        self.widths = array("i")
        self.heights = array("i")
        # Fixed length: (rows, K) grown by doubling, the first len(keys) rows used. Ragged (a target_psnr
        # budget): one compact (k_i,) copy per row in `ragged`, with (psnr, reached) per row in `quality`.
        self.tokens = np.zeros((0 if ragged else 16, num_tokens), np.dtype(token_dtype))
        self.ragged: list[np.ndarray | None] | None = [] if ragged else None
        self.quality: dict[int, tuple[float, bool]] = {}
        self.errors: list[tuple[str, str]] = []  # (key, reason)

    def add(self, key: str, width: int, height: int, error: str, tokens: np.ndarray | None = None) -> int | None:
        """One image, in input order: a row (its number returned; tokens may come later) or, failed, an error."""
        if error:
            self.errors.append((key, error))
            return None
        row = len(self.keys)
        if self.ragged is not None:
            self.ragged.append(None)
        elif row == len(self.tokens):
            self.tokens = np.concatenate([self.tokens, np.zeros_like(self.tokens)])
        self.keys.append(key)
        self.widths.append(width)
        self.heights.append(height)
        if tokens is not None:
            self.set_tokens(row, tokens)
        return row

    def set_tokens(self, row: int, tokens: np.ndarray, quality: tuple[float, bool] | None = None) -> None:
        """Copy one image's token IDs, (K,) (or (k_i,) for a ragged shard, with its (psnr, reached)), into the
        shard's rows; nothing of the caller's array is kept."""
        if self.ragged is None:
            self.tokens[row] = tokens
            return
        self.ragged[row] = np.array(tokens, dtype=self.tokens.dtype)
        if quality is not None:
            self.quality[row] = quality


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Ctrl-C waits for the block to end (then raises KeyboardInterrupt as usual): a shard's Parquet file and its
    done record are written together or not at all. Only the main thread can hold signals; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def write_shard(out: Path, rows: ShardRows, meta: dict[str, Any]) -> None:
    """Errors file, then Parquet file, then done record, each atomically."""
    name, k = rows.shard.name, row_tokens(meta)
    done_path(out, name).unlink(missing_ok=True)  # a redo: the old record must not vouch for the new file
    errors = errors_path(out, name)
    if rows.errors:
        _write_atomic(errors, "".join(json.dumps({"key": key, "reason": why}) + "\n"
                                      for key, why in rows.errors).encode())
    else:
        errors.unlink(missing_ok=True)
    dtype = np.dtype(meta["token_dtype"])
    n = len(rows.keys)
    columns = {"key": pa.array(rows.keys, pa.string())}
    if rows.ragged is not None:
        lengths = np.array([len(t) for t in rows.ragged], np.int32)  # type: ignore[arg-type]
        flat = np.concatenate([*rows.ragged, np.empty(0, dtype)]).astype(dtype)  # type: ignore[list-item]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        columns["tokens"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.from_numpy_dtype(dtype)))
    else:
        flat = np.ascontiguousarray(rows.tokens[:n], dtype=dtype).reshape(-1)  # (N * K,)
        columns["tokens"] = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.from_numpy_dtype(dtype)), k)
    columns.update(source=pa.array([rows.shard.source] * n, pa.string()),
                   width=pa.array(np.frombuffer(rows.widths, np.int32) if n else [], pa.int32()),
                   height=pa.array(np.frombuffer(rows.heights, np.int32) if n else [], pa.int32()))
    if rows.ragged is not None:
        columns.update(num_tokens=pa.array(lengths, pa.int32()),
                       psnr=pa.array([rows.quality[i][0] for i in range(n)], pa.float32()),
                       reached=pa.array([rows.quality[i][1] for i in range(n)], pa.bool_()))
    table = pa.table(columns).replace_schema_metadata({META_KEY: json.dumps(meta)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    state = rows.state or InputState.of(rows.shard)
    with _sigint_deferred():
        _write_atomic(out / f"{name}{PARQUET}", sink.getvalue().to_pybytes())
        record = {"shard": name, "source": rows.shard.source, "rows": n, "errors": len(rows.errors),
                  "stat": state.stat, "sha256": state.sha256, "content_hash": meta["content_hash"],
                  "format_version": FORMAT_VERSION}
        _write_atomic(done_path(out, name), json.dumps(record).encode())
