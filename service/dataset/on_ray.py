"""The same job on Ray Data, across the machines of a Ray cluster (`titok tokenize --ray`).

    shards -> flat_map(read + decode, 1-CPU tasks) -> map_batches(Tokenizer actors: the artifact loaded
    once per actor; ActorPoolStrategy(size=--concurrency), num_gpus) -> the driver, which writes each
    shard as soon as all its rows are in (atomically, then its done record)

The readers, the codec and the writer are the single-machine job's own, so both write the same Parquet
layout with the same metadata, and the done records make a rerun skip complete shards here too.

What the nodes need: titok-service installed, and the inputs at the same absolute paths (a shared file
system); the driver resolves every path before anything starts. The model's bytes travel through Ray's
object store (no node needs the file), and only the driver writes the output directory.

No silent hang: at start the cluster must hold the actors plus one CPU for reading (else a
DatasetError says what it lacks), and a run that makes no progress for `stall_timeout_s` (a lost node,
an actor that cannot be placed) stops with a message; the shards finished so far are kept.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import tempfile
import threading
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
from .progress import Progress, Summary
from .writer import InputState, ShardRows, errors_path, is_done, is_ragged, row_tokens, write_shard

READ_CPUS = 1  # each read-and-decode task; at least this much must stay free beside the actors


def _read_and_decode(item: dict[str, Any], size: int, resize: Resize, max_pixels: int,
                     max_bytes: int) -> Iterator[dict[str, Any]]:
    """One shard -> one row per record (failed ones keep their reason and zero pixels), then an end row.

    The end row (`end` = the shard's record count, -1 on every other row) carries the input's state,
    taken before reading, for the done record. A generator: Ray Data cuts its output into blocks as it
    goes, so a large shard never sits in memory whole. An input missing on this node raises (Ray retries
    the task, then fails the run): it must never be recorded as an empty shard.
    """
    spec = json.loads(item["spec"])
    shard = Shard(**{**spec, "files": tuple(spec["files"])})
    if not Path(shard.source).exists():
        raise FileNotFoundError(f"input {shard.source} does not exist on node {socket.gethostname()}: every node "
                                "needs the inputs at the same absolute path (a shared file system)")
    state = InputState.of(shard)
    blank = np.zeros((size, size, 3), np.uint8)
    n = -1
    for n, record in enumerate(iter_records(shard, max_bytes)):
        (d,) = decode_records([record], size, resize, max_pixels)
        yield {"shard": item["shard"], "row": n, "key": d.key, "pixels": blank if d.pixels is None else d.pixels,
               "width": d.width, "height": d.height, "error": d.error, "end": -1, "stat": "", "sha256": ""}
    yield {"shard": item["shard"], "row": n + 1, "key": "", "pixels": blank, "width": 0, "height": 0, "error": "",
           "end": n + 1, "stat": state.stat, "sha256": state.sha256}


class Tokenizer:
    """A Ray Data actor: loads the artifact once (its bytes from the object store), then encodes batches.

    Under a budget ({"num_tokens": k} or {"target_psnr": dB}, as in the job's metadata) the rows still carry
    K token slots (Ray batches are rectangular), with each row's length in `num_tokens` and, for a target,
    its `psnr` and `reached`; the driver's collector keeps the first num_tokens of each.
    """

    def __init__(self, model: list[Any], device: str, dtype: str, budget: dict[str, float] | None = None) -> None:
        import ray

        self.budget = Budget(**(budget or {}))
        with tempfile.TemporaryDirectory(prefix="titok-model-") as tmp:
            path = Path(tmp) / "model.pt"
            path.write_bytes(ray.get(model[0]))
            self.engine = Engine.load(path, device, dtype)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = (batch["error"] == "") & (batch["end"] < 0)
        n, K = len(ok), self.engine.num_tokens  # noqa: N806
        tokens = np.zeros((n, K), np.int64)  # (n, K); failed and end rows stay 0, unused
        lengths, psnr, reached = np.full(n, K, np.int32), np.zeros(n, np.float32), np.zeros(n, bool)
        if ok.any():
            done = encode_with_budget(self.engine.run, np.ascontiguousarray(batch["pixels"][ok]), self.budget)
            for row, t in zip(np.flatnonzero(ok), done.tokens, strict=True):
                tokens[row, :len(t)], lengths[row] = t, len(t)
            if done.psnr is not None:
                psnr[ok], reached[ok] = done.psnr, done.reached
        return {**{k: v for k, v in batch.items() if k != "pixels"}, "tokens": tokens, "num_tokens": lengths,
                "psnr": psnr, "reached": reached}


def check_cluster(resources: dict[str, float], concurrency: int, num_gpus: float) -> None:
    """Refuse a plan the cluster cannot hold: the actors' CPUs and GPUs plus one CPU for reading.

    Raises DatasetError saying what the cluster lacks.
    """
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    actor_cpus = 1.0 * concurrency
    if cpus < actor_cpus + READ_CPUS:
        raise DatasetError(f"the Ray cluster has {cpus:g} CPUs; --concurrency {concurrency} tokenizer actors hold "
                           f"{actor_cpus:g} and reading needs {READ_CPUS} more: add CPUs (ray start --num-cpus) or "
                           "lower --concurrency")
    if gpus < num_gpus * concurrency:
        raise DatasetError(f"the Ray cluster has {gpus:g} GPUs; --concurrency {concurrency} actors with --num-gpus "
                           f"{num_gpus:g} need {num_gpus * concurrency:g}")


class _Collector:
    """Rows arriving in any order -> each shard written, in its row order, once all its rows are in."""

    def __init__(self, todo: list[Shard], meta: dict[str, Any], out: Path, summary: Summary,
                 progress: Progress) -> None:
        self.todo, self.meta, self.out, self.summary, self.progress = todo, meta, out, summary, progress
        # shard -> row -> (key, width, height, error, tokens, (psnr, reached) under a target_psnr budget)
        self.rows: dict[int, dict[int, tuple[str, int, int, str, np.ndarray | None, tuple[float, bool] | None]]] = {}
        self.ends: dict[int, tuple[int, InputState]] = {}
        self.written: set[int] = set()
        self.dtype = np.dtype(meta["token_dtype"])
        self.scored = is_ragged(meta)  # a target_psnr budget: each row's psnr and reached are kept

    def take(self, batch: dict[str, np.ndarray]) -> None:
        touched = set()
        images = 0
        for j in range(len(batch["shard"])):
            i, row, end = int(batch["shard"][j]), int(batch["row"][j]), int(batch["end"][j])
            touched.add(i)
            if end >= 0:
                self.ends[i] = (end, InputState(str(batch["stat"][j]), str(batch["sha256"][j])))
                continue
            error = str(batch["error"][j])
            # a compact copy of the row's (k,) tokens (k = K without a budget)
            tokens = None if error else batch["tokens"][j][:int(batch["num_tokens"][j])].astype(self.dtype)
            quality = (float(batch["psnr"][j]), bool(batch["reached"][j])) if self.scored and not error else None
            images += not error
            self.rows.setdefault(i, {})[row] = (str(batch["key"][j]), int(batch["width"][j]),
                                                int(batch["height"][j]), error, tokens, quality)
        self.progress.update(images=images)
        for i in sorted(touched):
            self._write_if_complete(i)

    def _write_if_complete(self, i: int) -> None:
        if i not in self.ends or len(self.rows.get(i, {})) < self.ends[i][0]:
            return
        count, state = self.ends.pop(i)
        got = self.rows.pop(i, {})
        shard = self.todo[i]
        rows = ShardRows(shard, row_tokens(self.meta), self.dtype, state, ragged=self.scored)
        for n in range(count):
            key, width, height, error, tokens, quality = got[n]
            row = rows.add(key, width, height, error)
            if row is not None:
                rows.set_tokens(row, tokens, quality)
        write_shard(self.out, rows, self.meta)
        self.written.add(i)
        self.summary.images += len(rows.keys)
        self.summary.errors += len(rows.errors)
        self.summary.shards_written += 1
        if rows.errors:
            self.summary.error_files.append(str(errors_path(self.out, shard.name)))
        self.progress.update(nbytes=shard.size_bytes, shards=1)


def _pump(batches: Iterator[dict[str, np.ndarray]], inbox: queue.Queue[Any]) -> None:
    try:
        for batch in batches:
            inbox.put(("batch", batch))
        inbox.put(("done", None))
    except BaseException as e:  # noqa: BLE001 - handed to the driver's thread, which reports it
        inbox.put(("error", e))


def run_ray(shards: list[Shard], model: Path, device: str, dtype: str, meta: dict[str, Any], opts: JobOptions,
            address: str | None = None, concurrency: int = 1, num_gpus: float = 0,
            stall_timeout_s: float = 600.0) -> Summary:
    """Tokenize every shard not yet complete in `opts.out` on Ray (a running instance, `address`, or a local one).

    Each shard is written by this process as soon as its rows are in, so a run that fails keeps every
    finished shard. Raises DatasetError when the cluster cannot hold the plan, when a task fails (an input
    missing on a node), or when no row arrives for `stall_timeout_s` seconds. A Ray this function started
    is shut down on the way out; a caller's own Ray is left to the caller, who should shut it down after a
    stall (the stalled execution is still running in it).
    """
    try:
        import ray
    except ImportError:
        raise DatasetError("--ray needs Ray Data: pip install 'titok-service[ray]'") from None
    start = time.perf_counter()
    todo = [s for s in shards if not is_done(opts.out, s)]
    summary = Summary(shards_skipped=len(shards) - len(todo))
    if not todo:
        return summary
    # A stray Ray call on the way out (Ctrl-C, a failure) must not start a new local instance.
    os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False  # the job's own bar says it once
    progress = Progress(sum(s.size_bytes for s in todo), len(todo))
    collector = _Collector(todo, meta, opts.out, summary, progress)
    pumping = False  # Ray Data's threads are running: from then on, shutting Ray down races them
    try:
        check_cluster(ray.cluster_resources(), concurrency, num_gpus)
        model_ref = ray.put(Path(model).read_bytes())
        items = [{"shard": i, "spec": json.dumps(asdict(s))} for i, s in enumerate(todo)]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.flat_map(_read_and_decode, num_cpus=READ_CPUS, fn_kwargs={
            "size": int(meta["image_size"]), "resize": opts.resize, "max_pixels": opts.max_pixels,
            "max_bytes": opts.max_bytes})
        ds = ds.map_batches(Tokenizer, fn_constructor_kwargs={"model": [model_ref], "device": device, "dtype": dtype,
                                                              "budget": meta.get("budget")},
                            batch_size=opts.batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=concurrency), num_cpus=1, num_gpus=num_gpus)
        inbox: queue.Queue[Any] = queue.Queue(maxsize=8)
        threading.Thread(target=_pump, args=(ds.iter_batches(batch_size=None, batch_format="numpy"), inbox),
                         name="ray-rows", daemon=True).start()
        pumping = True
        while True:
            try:
                kind, value = inbox.get(timeout=stall_timeout_s)
            except queue.Empty:
                raise DatasetError(
                    f"no progress for {stall_timeout_s:g} s ({summary.shards_written} of {len(todo)} shards written, "
                    f"kept): the cluster now has {ray.available_resources().get('CPU', 0):g} free CPUs of "
                    f"{ray.cluster_resources().get('CPU', 0):g}; a node may be lost or the actors cannot be "
                    "placed (see --ray-stall-timeout)") from None
            if kind == "done":
                break
            if kind == "error":
                raise DatasetError(f"the Ray run failed ({summary.shards_written} of {len(todo)} shards written, "
                                   f"kept): {_first_line(value)}") from None
            collector.take(value)
        for i, shard in enumerate(todo):  # every shard ends with its end row, so this is a bug if it fires
            if i not in collector.written:
                raise DatasetError(f"the Ray run ended without all rows of shard {shard.name}")
    except KeyboardInterrupt:
        # No ray.shutdown() here: Ray Data's executor thread would go on calling a disconnected Ray. The caller
        # exits at once; the cluster cleans up after a driver that is gone.
        _quiet_ray()
        progress.close()
        raise
    except BaseException as e:
        _quiet_ray()
        progress.close()
        if started_here and pumping:
            # As for Ctrl-C: a ray.shutdown() under Ray Data's running threads can end the process (exit 1)
            # before the error is said; the caller says it, then exits at once (exit_hard).
            e.exit_hard = True  # type: ignore[attr-defined]
        elif started_here:
            ray.shutdown()
        raise
    progress.close()
    if started_here:
        ray.shutdown()
    summary.seconds = time.perf_counter() - start
    return summary


def _quiet_ray() -> None:
    """The run failed and says so in one message: Ray Data's executor thread, still going, must not add its
    tracebacks (it logs one for each call it makes into a Ray that is shutting down)."""
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def _first_line(e: BaseException) -> str:
    """A Ray task error's own message (Ray wraps it in a traceback of the remote task)."""
    text = str(e)
    for line in text.splitlines():
        if "FileNotFoundError" in line or "DatasetError" in line:
            return line.strip()
    return text.strip().splitlines()[-1] if text.strip() else type(e).__name__
