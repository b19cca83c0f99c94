"""Reading a tokenized directory back, for a training loop or for a look at the reconstructions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from .inputs import DatasetError
from .writer import DONE, PARQUET, RECORDS, describe, done_path, is_ragged, same_job, shard_meta


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

    `num_tokens` is the model's K. A job run under a budget (`budget`: {"num_tokens": k} or {"target_psnr": dB})
    has shorter rows: k each for num_tokens (load_tokens gives (N, k)), each its own length for target_psnr
    (load_ragged_tokens); size arrays from what those return, not from `num_tokens`.
    Raises DatasetError when there is no complete shard, or when two shards come from different jobs.
    """
    return _complete_with_meta(directory)[1]


def _new_keys(directory: str | Path, path: Path, shard_keys: list[str], first_shard: dict[str, str]) -> list[str]:
    """The shard's keys, once each is known to be new; DatasetError naming a key found twice and its shards."""
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
    return shard_keys


def read_tokens(directory: str | Path) -> tuple[dict[str, Any], list[str], np.ndarray]:
    """(job metadata, keys, tokens (N, K)) of a `titok tokenize` output directory; see load_tokens."""
    paths, meta = _complete_with_meta(directory)
    if is_ragged(meta):
        raise DatasetError(f"{directory} holds tokens of different lengths per row ({describe(meta)}); load them "
                           "with load_ragged_tokens (flat ids and offsets)")
    keys: list[str] = []
    parts: list[np.ndarray] = []
    first_shard: dict[str, str] = {}
    for path in paths:
        table = pq.read_table(path, columns=["key", "tokens"])
        tokens = table.column("tokens").combine_chunks()
        k = tokens.type.list_size
        keys += _new_keys(directory, path, table.column("key").to_pylist(), first_shard)
        parts.append(tokens.flatten().to_numpy(zero_copy_only=False).reshape(-1, k))  # (n, K)
    return meta, keys, np.concatenate(parts)


def load_tokens(directory: str | Path) -> tuple[list[str], np.ndarray]:
    """Load every complete shard of a `titok tokenize` output directory.

    Returns (keys, tokens): keys[i] is row i's key (the WebDataset key, the path relative to its input
    folder, or the Parquet key), tokens is (N, K) of the smallest unsigned type holding the codebook,
    in shard-name order, then row order. Raises DatasetError for a directory mixing shards of different
    models (or resize modes): tokens are only meaningful with the codebook that made them
    (read_dir_meta(directory) names it); and for a key found twice (naming it and its shards).
    A `--num-tokens k` directory gives (N, k); a `--target-psnr` one is refused: see load_ragged_tokens.
    """
    _, keys, tokens = read_tokens(directory)
    return keys, tokens


def read_ragged(directory: str | Path) -> tuple[dict[str, Any], list[str], np.ndarray, np.ndarray]:
    """(job metadata, keys, flat ids (M,), offsets int64 (N + 1,)) of any tokenized directory; see
    load_ragged_tokens."""
    paths, meta = _complete_with_meta(directory)
    keys: list[str] = []
    flats: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    first_shard: dict[str, str] = {}
    for path in paths:
        table = pq.read_table(path, columns=["key", "tokens"])
        tokens = table.column("tokens").combine_chunks()  # fixed-size or variable-length lists
        keys += _new_keys(directory, path, table.column("key").to_pylist(), first_shard)
        flats.append(tokens.flatten().to_numpy(zero_copy_only=False))
        lengths.append(tokens.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64))
    flat = np.concatenate(flats) if flats else np.empty(0, np.dtype(meta["token_dtype"]))
    offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64)
    return meta, keys, flat, offsets


def load_ragged_tokens(directory: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Load every complete shard of a tokenized directory whose rows may differ in length (`--target-psnr`).

    Returns (keys, ids, offsets): row i's tokens are ids[offsets[i]:offsets[i + 1]], the first tokens of its
    encoding (what a prefix-decodable model decodes); ids is (M,) of the smallest unsigned type holding the
    codebook, offsets int64 (N + 1,) with offsets[0] = 0 and offsets[-1] = M (Arrow's own list layout).
    Raises DatasetError as load_tokens does (mixed jobs, a key found twice).
    Works for fixed-length directories too (offsets step by K). Each row's psnr and reached columns, and the
    policy in read_dir_meta(directory)["budget"], are in the same Parquet files.
    """
    _, keys, ids, offsets = read_ragged(directory)
    return keys, ids, offsets
