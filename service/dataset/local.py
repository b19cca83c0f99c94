"""The job on one machine: worker processes decode, one device runs full batches, shards are written in order.

The main process reads each shard's records and hands chunks of them to a pool of worker processes,
which decode with the service's codec (service/dataset/decode.py). Decoded images fill (B, S, S, 3)
batch buffers; the engine's model thread runs one full batch while the next one fills (on CUDA the
buffers are pinned, so the copy to the device is asynchronous). Batches span shard boundaries; a shard
is written as soon as its last image has its tokens.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.budgets import Budget, BudgetedTokens, encode_with_budget
from ..core.codec import Resize
from ..core.cpus import available_cpus
from ..core.engine import Engine
from .decode import Decoded, decode_records, exit_with_parent
from .inputs import DEFAULT_MAX_BYTES, Record, Shard, iter_records
from .progress import Progress, Summary
from .writer import InputState, ShardRows, errors_path, is_done, is_ragged, row_tokens, write_shard

Owner = tuple[int, int]  # (shard number, row in that shard)


@dataclass(frozen=True)
class JobOptions:
    out: Path
    resize: Resize = "crop"
    batch_size: int = 32
    workers: int = field(default_factory=available_cpus)  # decoding processes; 0 decodes in the main process
    max_pixels: int = 50_000_000
    max_bytes: int = DEFAULT_MAX_BYTES  # per image, checked before it is read (the service's upload limit)
    chunk: int = 16  # images per decoding task: large enough to amortise the pickling, small enough to keep order
    budget: Budget = Budget()  # num_tokens / target_psnr (prefix-decodable models); unset: all K tokens


class _Inline(Executor):
    """workers=0: decode in the calling process (debugging, tiny inputs)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        f: Future[Any] = Future()
        f.set_result(fn(*args, **kwargs))
        return f


def _pool(workers: int) -> Executor:
    if workers == 0:
        return _Inline()
    # spawn, not fork: the parent holds the model and its threads; the workers import the codec only.
    # Not forkserver either: its workers are not the job's children and outlive a killed job.
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=exit_with_parent)


def _chunks(shards: list[Shard], n: int, max_bytes: int,
            started: Callable[[int, InputState], None]) -> Iterator[tuple[int, list[Record], bool]]:
    """(shard number, up to n records, whether the shard ends here), shard after shard.

    `started(i, state)` is told each shard's input state, taken before any of its records is read.
    """
    for i, shard in enumerate(shards):
        started(i, InputState.of(shard))
        buf: list[Record] = []
        for record in iter_records(shard, max_bytes):
            buf.append(record)
            if len(buf) == n:
                yield i, buf, False
                buf = []
        yield i, buf, True


def _buffer(engine: Engine, rows: int) -> np.ndarray:
    shape = (rows, engine.image_size, engine.image_size, 3)
    if str(engine.device).startswith("cuda"):
        import torch

        return torch.empty(shape, dtype=torch.uint8).pin_memory().numpy()  # page-locked: async host->device copy
    return np.empty(shape, np.uint8)


class _Batches:
    """Two (B, S, S, 3) buffers: one on the model while the other fills; tokens go to `deliver`."""

    def __init__(self, engine: Engine, batch_size: int, deliver: Callable[[list[Owner], Any], None],
                 budget: Budget | None = None) -> None:
        budget = budget or Budget()
        self.engine, self.deliver, self.budget = engine, deliver, budget
        # A budget takes several model calls per batch (a target's prefix decodes): one thread runs them in turn,
        # so that decoding goes on meanwhile, as it does while a plain batch is on the model thread.
        self.budgeted = ThreadPoolExecutor(1, thread_name_prefix="titok-budget") if budget.is_set else None
        self.buffers = [_buffer(engine, batch_size) for _ in range(2)]
        self.current, self.filled = 0, 0
        self.owners: list[Owner] = []
        self.in_flight: tuple[Future[Any], list[Owner]] | None = None

    def add(self, pixels: np.ndarray, owner: Owner) -> None:
        self.buffers[self.current][self.filled] = pixels
        self.owners.append(owner)
        self.filled += 1
        if self.filled == len(self.buffers[self.current]):
            self.submit()

    def submit(self) -> None:
        """Send the filling buffer to the model thread (after the previous batch is back: its buffer is reused)."""
        if self.filled == 0:
            return
        self.wait()
        batch = self.buffers[self.current][: self.filled]  # (n, S, S, 3) -> tokens (n, K)
        if self.budgeted is not None:  # -> BudgetedTokens
            self.in_flight = (self.budgeted.submit(encode_with_budget, self.engine.run, batch, self.budget),
                              self.owners)
        else:
            self.in_flight = (self.engine.submit("encode", batch), self.owners)
        self.current, self.filled, self.owners = 1 - self.current, 0, []

    def wait(self) -> None:
        if self.in_flight is not None:
            future, owners = self.in_flight
            self.in_flight = None
            self.deliver(owners, future.result())

    def flush(self) -> None:
        self.submit()
        self.wait()

    def close(self) -> None:
        if self.budgeted is not None:
            self.budgeted.shutdown(wait=True)


class _Job:
    def __init__(self, shards: list[Shard], engine: Engine, meta: dict[str, Any], opts: JobOptions,
                 summary: Summary, progress: Progress | None = None) -> None:
        self.shards, self.meta, self.opts, self.summary = shards, meta, opts, summary
        self.rows: dict[int, ShardRows] = {}
        self.states: dict[int, InputState] = {}
        self.read_bytes: dict[int, int] = {}  # image bytes of the shard counted in the progress bar so far
        self.waiting: dict[int, int] = {}  # images of the shard still without tokens
        self.ended: set[int] = set()
        self.next_to_write = 0
        self.batches = _Batches(engine, opts.batch_size, self.deliver, opts.budget)
        self.progress = progress or Progress(sum(s.size_bytes for s in shards), len(shards))

    def take(self, i: int, decoded: list[Decoded], last: bool) -> None:
        if i not in self.rows:
            self.rows[i] = ShardRows(self.shards[i], row_tokens(self.meta), self.meta["token_dtype"],
                                     self.states.pop(i, None), ragged=is_ragged(self.meta))
        rows = self.rows[i]
        for d in decoded:
            row = rows.add(d.key, d.width, d.height, d.error)  # tokens come back with the model's batch
            if row is not None and d.pixels is not None:
                self.waiting[i] = self.waiting.get(i, 0) + 1
                self.batches.add(d.pixels, (i, row))
        nbytes = sum(d.nbytes for d in decoded)
        if last:
            self.ended.add(i)
            # The rest of the input's bytes (a tar's headers and other files, a Parquet file's other columns):
            # the bar counts input bytes, so a finished shard counts whole.
            nbytes = max(self.shards[i].size_bytes - self.read_bytes.pop(i, 0), 0)
        else:
            self.read_bytes[i] = self.read_bytes.get(i, 0) + nbytes
        self.progress.update(nbytes=nbytes)
        self.write_finished()

    def deliver(self, owners: list[Owner], result: np.ndarray | BudgetedTokens) -> None:
        scored = isinstance(result, BudgetedTokens) and result.psnr is not None
        tokens = result.tokens if isinstance(result, BudgetedTokens) else result  # (n, K) or n (k_i,)
        for n, ((i, row), t) in enumerate(zip(owners, tokens, strict=True)):  # each row copied out of the batch
            quality = (float(result.psnr[n]), bool(result.reached[n])) if scored else None  # type: ignore[union-attr,index]
            self.rows[i].set_tokens(row, t, quality)
            self.waiting[i] -= 1
        self.progress.update(images=len(owners))

    def write_finished(self) -> None:
        """Write, in order, every shard whose images all have their tokens."""
        while self.next_to_write in self.ended and not self.waiting.get(self.next_to_write):
            rows = self.rows.pop(self.next_to_write)
            write_shard(self.opts.out, rows, self.meta)
            self.summary.images += len(rows.keys)
            self.summary.errors += len(rows.errors)
            self.summary.shards_written += 1
            if rows.errors:
                self.summary.error_files.append(str(errors_path(self.opts.out, rows.shard.name)))
            self.progress.update(shards=1)
            self.next_to_write += 1


def run_local(shards: list[Shard], engine: Engine, meta: dict[str, Any], opts: JobOptions,
              progress: Progress | None = None) -> Summary:
    """Tokenize every shard not yet complete in `opts.out` (prepare_output must have accepted it).

    `progress` (default: a bar on stderr) is told of images, input bytes and shards as they are done.
    """
    start = time.perf_counter()
    todo = [s for s in shards if not is_done(opts.out, s)]
    summary = Summary(shards_skipped=len(shards) - len(todo))
    job = _Job(todo, engine, meta, opts, summary, progress)
    window: deque[tuple[int, bool, Future[list[Decoded]]]] = deque()
    depth = max(2, 4 * opts.workers)  # decoded chunks ahead of the model: bounded, so memory is too
    pool = _pool(opts.workers)
    try:
        for i, records, last in _chunks(todo, opts.chunk, opts.max_bytes, job.states.__setitem__):
            args = (records, engine.image_size, opts.resize, opts.max_pixels)
            window.append((i, last, pool.submit(decode_records, *args)))
            if len(window) >= depth:
                i, last, future = window.popleft()
                job.take(i, future.result(), last)
        while window:
            i, last, future = window.popleft()
            job.take(i, future.result(), last)
        job.batches.flush()
        job.write_finished()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        job.batches.close()
        job.progress.close()
    summary.seconds = time.perf_counter() - start
    return summary
