"""The same job on Ray Data, across the machines of a Ray cluster (`titok tokenize --ray`).

    shards -> flat_map(read + decode, CPU tasks) -> map_batches(Tokenizer: the artifact loaded once per
    actor; num_gpus, concurrency) -> groupby(shard).map_groups(write the shard atomically)

The readers, the codec and the writer are the single-machine job's own, so both write the same Parquet
layout with the same metadata, and the done records make a rerun skip complete shards here too. Every
node needs titok-service installed and the inputs and output directory at the same paths (a shared
file system).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..core.budgets import Budget, encode_with_budget
from ..core.codec import Resize
from ..core.engine import Engine
from .decode import decode_records
from .inputs import DatasetError, Shard, iter_records
from .local import JobOptions
from .progress import Summary
from .writer import ERRORS, ShardRows, is_done, write_shard


def _read_and_decode(item: dict[str, Any], size: int, resize: Resize, max_pixels: int) -> Iterator[dict[str, Any]]:
    """One shard -> one row per image (failed ones keep their reason and zero pixels), in input order.

    A generator: Ray Data cuts its output into blocks as it goes, so a large shard never sits in memory whole.
    """
    spec = json.loads(item["spec"])
    shard = Shard(**{**spec, "files": tuple(spec["files"])})
    blank = np.zeros((size, size, 3), np.uint8)
    for n, record in enumerate(iter_records(shard)):
        (d,) = decode_records([record], size, resize, max_pixels)
        yield {"shard": item["shard"], "row": n, "key": d.key, "pixels": blank if d.pixels is None else d.pixels,
               "width": d.width, "height": d.height, "error": d.error}


class Tokenizer:
    """A Ray Data actor: loads the artifact once, then encodes batches of decoded images.

    Under a budget ({"num_tokens": k} or {"target_psnr": dB}, as in the job's metadata) the rows still carry
    K token slots (Ray batches are rectangular), with each row's length in `num_tokens` and, for a target,
    its `psnr` and `reached`; _write_group keeps the first num_tokens of each.
    """

    def __init__(self, model: str, device: str, dtype: str, budget: dict[str, float] | None = None) -> None:
        self.engine = Engine.load(model, device, dtype)
        self.budget = Budget(**(budget or {}))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["error"] == ""
        n, K = len(ok), self.engine.num_tokens  # noqa: N806
        tokens = np.zeros((n, K), np.int64)  # (n, K); failed rows stay 0, unused
        lengths, psnr, reached = np.full(n, K, np.int32), np.zeros(n, np.float32), np.zeros(n, bool)
        if ok.any():
            done = encode_with_budget(self.engine.run, np.ascontiguousarray(batch["pixels"][ok]), self.budget)
            for row, t in zip(np.flatnonzero(ok), done.tokens, strict=True):
                tokens[row, :len(t)], lengths[row] = t, len(t)
            if done.psnr is not None:
                psnr[ok], reached[ok] = done.psnr, done.reached
        return {**{k: v for k, v in batch.items() if k != "pixels"}, "tokens": tokens, "num_tokens": lengths,
                "psnr": psnr, "reached": reached}


def _write_group(batch: dict[str, np.ndarray], out: str, meta: dict[str, Any],
                 shards: list[Shard]) -> dict[str, np.ndarray]:
    """All of one shard's rows -> its Parquet file, errors file and done record."""
    order = np.argsort(batch["row"], kind="stable")
    i = int(batch["shard"][0])
    rows = ShardRows(shards[i])
    for n in order:
        row = rows.add(str(batch["key"][n]), int(batch["width"][n]), int(batch["height"][n]), str(batch["error"][n]),
                       batch["tokens"][n][:int(batch["num_tokens"][n])])
        if row is not None and "target_psnr" in (meta.get("budget") or {}):
            rows.quality[row] = (float(batch["psnr"][n]), bool(batch["reached"][n]))
    write_shard(Path(out), rows, meta)
    return {"shard": np.array([i]), "rows": np.array([len(rows.keys)]), "errors": np.array([len(rows.errors)])}


def run_ray(shards: list[Shard], model: Path, device: str, dtype: str, meta: dict[str, Any], opts: JobOptions,
            address: str | None = None, concurrency: int = 1, num_gpus: float = 0) -> Summary:
    """Tokenize every shard not yet complete in `opts.out` on Ray (a running instance, `address`, or a local one)."""
    try:
        import ray
    except ImportError:
        raise DatasetError("--ray needs Ray Data: pip install 'titok-service[ray]'") from None
    start = time.perf_counter()
    todo = [s for s in shards if not is_done(opts.out, s)]
    summary = Summary(shards_skipped=len(shards) - len(todo))
    if todo:
        if not ray.is_initialized():
            ray.init(address=address)
        items = [{"shard": i, "spec": json.dumps(asdict(s))} for i, s in enumerate(todo)]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.flat_map(_read_and_decode, fn_kwargs={"size": int(meta["image_size"]), "resize": opts.resize,
                                                      "max_pixels": opts.max_pixels})
        ds = ds.map_batches(Tokenizer, fn_constructor_kwargs={"model": str(model), "device": device, "dtype": dtype,
                                                              "budget": meta.get("budget")},
                            batch_size=opts.batch_size, batch_format="numpy", concurrency=concurrency,
                            num_gpus=num_gpus)
        results = ds.groupby("shard").map_groups(_write_group, batch_format="numpy", fn_kwargs={
            "out": str(opts.out), "meta": meta, "shards": todo}).take_all()
        written = {int(r["shard"]): r for r in results}
        for i, shard in enumerate(todo):
            if i not in written:  # no record at all (an empty tar): nothing went through the pipeline
                write_shard(opts.out, ShardRows(shard), meta)
                written[i] = {"rows": 0, "errors": 0}
            summary.images += int(written[i]["rows"])
            summary.errors += int(written[i]["errors"])
            if written[i]["errors"]:
                summary.error_files.append(str(opts.out / f"{shard.name}{ERRORS}"))
        summary.shards_written = len(todo)
    summary.seconds = time.perf_counter() - start
    return summary
