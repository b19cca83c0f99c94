"""Output shards: one Parquet file per input shard, written atomically, then a record that it is complete.

For a shard NAME the output directory holds:
    NAME.parquet       one row per image: key, tokens (fixed-size list of the smallest unsigned type that
                       holds the codebook), source, width, height; the file's metadata (key b"titok")
                       names the model, its content hash, image size, tokens, codebook size, resize mode
                       and the compute dtype of the model (float32, bfloat16, ...)
    NAME.errors.jsonl  only when some images failed: {"key", "reason"} per line
    NAME.done.json     written last: the shard is complete (rows, errors, the input's fingerprint)

Each file is written under a temporary name and renamed, so a killed run leaves no half file under a
final name; a shard without its done record is redone by the next run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .inputs import DatasetError, Shard

if TYPE_CHECKING:  # the artifact module imports torch, which the decoding workers never need
    from ..core.artifact import ModelInfo

META_KEY = b"titok"
FORMAT_VERSION = 1
PARQUET, DONE, ERRORS, TMP = ".parquet", ".done.json", ".errors.jsonl", ".tmp"
# Everything the tokens depend on: shards that differ in any of these cannot share a directory.
IDENTITY = ("model", "content_hash", "image_size", "num_tokens", "codebook_size", "resize")


def job_meta(info: ModelInfo, resize: str, compute_dtype: str = "float32") -> dict[str, Any]:
    """The footer of every shard. compute_dtype: the engine's (tokens of bf16/fp16 may differ from fp32's in a
    few positions; not part of IDENTITY), or "auto" under Ray, where each actor probes for itself."""
    return {"model": info.name, "content_hash": info.content_hash, "image_size": info.image_size,
            "num_tokens": info.num_tokens, "codebook_size": info.codebook_size,
            "token_dtype": info.token_dtype.name, "resize": resize, "compute_dtype": compute_dtype,
            "format_version": FORMAT_VERSION}


def describe(meta: dict[str, Any]) -> str:
    """A job's identity in words, for error messages."""
    return (f"model {meta.get('model')} (content hash {str(meta.get('content_hash'))[:12]}), "
            f"{meta.get('image_size')} px, {meta.get('num_tokens')} tokens, resize {meta.get('resize')}")


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


def _ours(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.is_file() and p.name.endswith((PARQUET, DONE, ERRORS, TMP))]


def prepare_output(out: Path, meta: dict[str, Any], overwrite: bool = False) -> None:
    """Create `out`, drop temporary files of killed runs, and refuse shards of another model or resize mode.

    With `overwrite`, the shards of another job are deleted instead (only this job's file types).
    """
    if out.exists() and not out.is_dir():
        raise DatasetError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    for p in out.glob(f"*{TMP}"):
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


def is_done(out: Path, shard: Shard) -> bool:
    """The shard's done record is there, its Parquet file too, and its input has not changed since."""
    try:
        record = json.loads((out / f"{shard.name}{DONE}").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return record.get("fingerprint") == shard.fingerprint and (out / f"{shard.name}{PARQUET}").is_file()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}{TMP}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # the bytes reach the disk before the name does
    os.replace(tmp, path)


@dataclass
class ShardRows:
    """One shard's results in input order; tokens arrive later than the rest (after the model's batch)."""

    shard: Shard
    keys: list[str] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    heights: list[int] = field(default_factory=list)
    tokens: list[np.ndarray | None] = field(default_factory=list)  # (K,) each
    errors: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)

    def add(self, key: str, width: int, height: int, error: str, tokens: np.ndarray | None = None) -> int | None:
        """One image, in input order: a row (its number returned; tokens may come later) or, failed, an error."""
        if error:
            self.errors.append((key, error))
            return None
        self.keys.append(key)
        self.widths.append(width)
        self.heights.append(height)
        self.tokens.append(tokens)
        return len(self.keys) - 1


def write_shard(out: Path, rows: ShardRows, meta: dict[str, Any]) -> None:
    """Errors file, then Parquet file, then done record, each atomically."""
    name, k = rows.shard.name, int(meta["num_tokens"])
    (out / f"{name}{DONE}").unlink(missing_ok=True)  # a redo: the old record must not vouch for the new file
    errors_path = out / f"{name}{ERRORS}"
    if rows.errors:
        _write_atomic(errors_path, "".join(json.dumps({"key": key, "reason": why}) + "\n"
                                           for key, why in rows.errors).encode())
    else:
        errors_path.unlink(missing_ok=True)
    dtype = np.dtype(meta["token_dtype"])
    flat = np.asarray(rows.tokens, dtype=dtype).reshape(-1)  # (N * K,)
    table = pa.table({
        "key": pa.array(rows.keys, pa.string()),
        "tokens": pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.from_numpy_dtype(dtype)), k),
        "source": pa.array([rows.shard.source] * len(rows.keys), pa.string()),
        "width": pa.array(rows.widths, pa.int32()),
        "height": pa.array(rows.heights, pa.int32()),
    }).replace_schema_metadata({META_KEY: json.dumps(meta)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    _write_atomic(out / f"{name}{PARQUET}", sink.getvalue().to_pybytes())
    record = {"shard": name, "source": rows.shard.source, "rows": len(rows.keys), "errors": len(rows.errors),
              "fingerprint": rows.shard.fingerprint, "content_hash": meta["content_hash"]}
    _write_atomic(out / f"{name}{DONE}", json.dumps(record).encode())
