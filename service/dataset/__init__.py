"""The offline dataset job, a door onto the core (artifact + codec + engine) beside the HTTP service.

    titok tokenize INPUT... --out DIR      folders, WebDataset tars, Parquet -> Parquet shards of tokens
    load_tokens(DIR) -> (keys, tokens)     for a training loop
    load_ragged_tokens(DIR) -> (keys, ids, offsets)   rows of their own lengths (--target-psnr)

inputs (planning and reading), decode (the codec in worker processes), writer (atomic shards and their
done records), local (one machine), on_ray (Ray Data), reader (loading back), cli, bench.
"""

from .reader import load_ragged_tokens, load_tokens, read_dir_meta

__all__ = ["load_ragged_tokens", "load_tokens", "read_dir_meta"]
