"""Small datasets made on the spot: image folders, WebDataset tars, Parquet files; and output readers."""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from titok.core.engine import Engine
from titok.dataset.inputs import plan_shards
from titok.dataset.local import JobOptions, run_local
from titok.dataset.progress import Summary
from titok.dataset.writer import job_meta, prepare_output


def photo(seed: int, size: tuple[int, int] = (48, 36), fmt: str = "PNG") -> bytes:
    """A distinct small picture: smooth colour ramps plus noise, so every seed gives other tokens."""
    rng = np.random.default_rng(seed)
    w, h = size
    ramp = np.linspace(0, 1, w)[None, :, None] * rng.uniform(0, 255, 3) + np.linspace(0, 1, h)[:, None, None] * 60
    a = np.clip(ramp + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def write_tar(path: Path, members: Sequence[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_parquet(path: Path, columns: dict[str, list[Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def tokenize(inputs: Sequence[str | Path], out: Path, engine: Engine, *, shard_size: int = 4, workers: int = 0,
             resize: str = "crop", batch_size: int = 4, overwrite: bool = False, image_column: str = "auto",
             max_pixels: int = 50_000_000, max_bytes: int = 32 * 1024 * 1024) -> Summary:
    """What `titok tokenize` does, in this process, with an engine loaded once for the whole test module."""
    shards = plan_shards([str(p) for p in inputs], shard_size, image_column)
    meta = job_meta(engine.model_info, resize)
    prepare_output(out, meta, overwrite)
    return run_local(shards, engine, meta, JobOptions(out, resize, batch_size, workers, max_pixels, max_bytes))  # type: ignore[arg-type]


def rows(out: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Every row of every output shard, by (source, key)."""
    found = {}
    for path in sorted(out.glob("*.parquet")):
        for r in pq.read_table(path).to_pylist():
            found[(r["source"], r["key"])] = r
    return found


def plain(name: str) -> str:
    """An output file's name without the 8 hex digits of its input's path: `train-0000-1a2b3c4d.parquet` ->
    `train-0000.parquet`, `pics-1a2b3c4d-000001.done.json` -> `pics-000001.done.json`."""
    return re.sub(r"-[0-9a-f]{8}(?=[.-]|$)", "", name, count=1)


def record(out: Path, plain_name: str) -> Path:
    """The file of `out` (a Parquet shard) or of out/.titok (done records, errors files) named `plain_name`."""
    found = [p for d in (out, out / ".titok") if d.is_dir() for p in d.iterdir() if plain(p.name) == plain_name]
    assert len(found) == 1, (plain_name, sorted(p.name for p in out.rglob("*")))
    return found[0]


def done_names(out: Path) -> list[str]:
    """The plain names of the shards recorded complete."""
    return sorted(plain(p.name).removesuffix(".done.json") for p in (out / ".titok").glob("*.done.json"))
