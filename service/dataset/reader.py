"""Reading a tokenized directory back, for a training loop or for a look at the reconstructions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from .inputs import DatasetError
from .writer import DONE, PARQUET, RECORDS, describe, done_path, same_job, shard_meta


def complete_shards(directory: str | Path) -> list[Path]:
    """The Parquet files of the shards whose done record is there, by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"no such directory: {directory}")
    return sorted(p for p in directory.glob(f"*{PARQUET}") if done_path(directory, p.name[: -len(PARQUET)]).is_file())


def _complete_with_meta(directory: str | Path) -> tuple[list[Path], dict[str, Any]]:
    """The complete shards and the job metadata they all share (each footer read once)."""
    paths = complete_shards(directory)
    if not paths:
        raise DatasetError(f"{directory} holds no complete tokenized shard (*{PARQUET} with its {RECORDS}/*{DONE})")
    first = shard_meta(paths[0])
    for p in paths[1:]:
        other = shard_meta(p)
        if not same_job(first, other):
            raise DatasetError(f"{directory} mixes shards of different jobs: {paths[0].name} is {describe(first)}, "
                               f"{p.name} is {describe(other)}")
    return paths, first


def read_dir_meta(directory: str | Path) -> dict[str, Any]:
    """The job metadata every complete shard of `directory` shares (model, content hash, sizes, resize mode).

    Raises DatasetError when there is no complete shard, or when two shards come from different jobs.
    """
    return _complete_with_meta(directory)[1]


def read_tokens(directory: str | Path) -> tuple[dict[str, Any], list[str], np.ndarray]:
    """(job metadata, keys, tokens (N, K)) of a `titok tokenize` output directory; see load_tokens."""
    paths, meta = _complete_with_meta(directory)
    keys: list[str] = []
    parts: list[np.ndarray] = []
    first_shard: dict[str, str] = {}
    for path in paths:
        table = pq.read_table(path, columns=["key", "tokens"])
        tokens = table.column("tokens").combine_chunks()
        k = tokens.type.list_size
        shard_keys = table.column("key").to_pylist()
        repeated = []
        for key in shard_keys:
            if key in first_shard:
                repeated.append(key)
            else:
                first_shard[key] = path.name
        if repeated:
            raise DatasetError(f"{directory} holds {len(repeated)} key(s) twice, e.g. {repeated[0]!r} in "
                               f"{first_shard[repeated[0]]} and {path.name} ({', '.join(map(repr, repeated[:5]))}): "
                               "keys must name one image each (two inputs with the same relative paths?)")
        keys += shard_keys
        parts.append(tokens.flatten().to_numpy(zero_copy_only=False).reshape(-1, k))  # (n, K)
    return meta, keys, np.concatenate(parts)


def load_tokens(directory: str | Path) -> tuple[list[str], np.ndarray]:
    """Load every complete shard of a `titok tokenize` output directory.

    Returns (keys, tokens): keys[i] is row i's key (the WebDataset key, the path relative to its input
    folder, or the Parquet key), tokens is (N, K) of the smallest unsigned type holding the codebook,
    in shard-name order, then row order. Raises DatasetError for a directory mixing shards of different
    models (or resize modes): tokens are only meaningful with the codebook that made them
    (read_dir_meta(directory) names it); and for a key found twice (naming it and its shards).
    """
    _, keys, tokens = read_tokens(directory)
    return keys, tokens
