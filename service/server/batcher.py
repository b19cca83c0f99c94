"""Dynamic batching: a bounded queue of items, each with a future; one task forms batches for the model workers.

A batch closes when it holds `max_batch_size` items or when its oldest item has waited
`max_batch_delay_ms`; while every model worker is busy the queue fills by itself. With several workers
(`concurrency`, the engine's TITOK_MODEL_WORKERS) a batch starts whenever one is free, and what waits is
spread over the free ones (two idle workers and 32 items: two batches of 16, side by side). Items past their deadline
are dropped before compute, items whose request was cancelled are skipped, and a model error fails
only its own batch.

Items are grouped by shape: one queue per (op, item shape), so a batch never mixes token sequences of
different lengths (a prefix-decodable model decodes any 1 <= k <= K tokens, one k per call) and nothing
is padded. The worker always serves the queue whose oldest item is the oldest of all: a rare length is
never starved behind a common one, it waits at most for the batches of the items queued before it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import DeadlineExceeded, Draining, ModelError, QueueFull
from .metrics import Metrics

log = logging.getLogger("titok.batcher")
OPS = ("encode", "decode", "roundtrip")


class BatchEngine(Protocol):
    def submit(self, op: str, batch: np.ndarray) -> Future[np.ndarray]: ...


@dataclass(frozen=True)
class Timing:
    """Where one request's items spent their time: handed back with the results, for the timing headers."""

    queue_s: float  # until the last of its items started compute
    model_s: float  # wall time while at least one of the batches its items ran in was computing
    batch_sizes: tuple[int, ...]  # the size of each of those batches, in run order


@dataclass
class _Run:
    """One model call: its size, start (perf_counter) and duration, shared by every item in it."""

    size: int
    seconds: float = 0.0
    start: float = 0.0


@dataclass
class _Item:
    data: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued: float
    deadline: float
    started: float = field(default=0.0)
    run: _Run | None = None


class Batcher:
    def __init__(self, engine: BatchEngine, max_batch_size: int, max_batch_delay_ms: float, max_queue_size: int,
                 metrics: Metrics | None = None, clock: Callable[[], float] = time.monotonic,
                 retry_after_s: int = 1, concurrency: int = 1) -> None:
        self.engine = engine
        self.concurrency = max(1, concurrency)  # batches in the model at once (the engine's workers)
        self.max_batch_size = max_batch_size
        self.max_delay = max_batch_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.metrics = metrics or Metrics(max_batch_size)
        self.clock = clock
        self.retry_after_s = retry_after_s
        self._queues: dict[tuple[str, tuple[int, ...]], deque[_Item]] = {}  # (op, item shape) -> its items
        self._wake = asyncio.Event()
        self._stopping = False
        self._flushing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task[None] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._busy = 0  # batches in the model now

    @property
    def depth(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._worker = self._loop.create_task(self._run(), name="titok-batcher")

    def flush(self) -> None:
        """Stop waiting for batches to fill (draining); safe to call from a signal handler or another thread."""
        self._flushing = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def stop(self) -> None:
        """Refuse new items, finish every queued one, then end the worker."""
        self._stopping = True
        self._wake.set()
        if self._worker is not None:
            await self._worker

    async def submit(self, op: str, items: list[np.ndarray], timeout: float) -> list[np.ndarray]:
        """Queue the items of one request and wait for all their results, in order."""
        return (await self.submit_timed(op, items, timeout))[0]

    async def submit_timed(self, op: str, items: list[np.ndarray], timeout: float) -> tuple[list[np.ndarray], Timing]:
        """submit(), and where the items' time went."""
        if self._stopping:
            self.metrics.rejections.labels("draining").inc()
            raise Draining("the service is shutting down; retry on another replica",
                           headers={"Retry-After": str(self.retry_after_s)})
        if self.depth + len(items) > self.max_queue_size:
            self._prune()
        if self.depth + len(items) > self.max_queue_size:
            self.metrics.rejections.labels("queue_full").inc()
            raise QueueFull(f"the queue is full ({self.depth} of {self.max_queue_size} items waiting); retry later",
                            headers={"Retry-After": str(self.retry_after_s)})
        loop = asyncio.get_running_loop()
        now = self.clock()
        futures = []
        queued = []
        for data in items:
            fut: asyncio.Future[np.ndarray] = loop.create_future()
            item = _Item(data, fut, now, now + timeout)
            queued.append(item)
            futures.append(fut)
            # never removed once made: the worker may hold a reference; at most one per op and token length
            self._queues.setdefault((op, data.shape), deque()).append(item)
        self.metrics.queue_depth.set(self.depth)
        self._wake.set()
        settled = _all_or_first_error(loop, futures)
        try:
            # One future for the request, not asyncio.wait: wait() builds a waiter and a callback per item on every
            # call. A timeout cancels only `settled`; the finally below skips what is still queued.
            try:
                async with asyncio.timeout(timeout):
                    await settled
            except TimeoutError:
                self.metrics.rejections.labels("deadline").inc()
                raise DeadlineExceeded(f"not computed within the request timeout ({timeout:.3g} s were left of it "
                                       "when its items were queued)") from None
            failed = next((f for f in futures if f.done() and not f.cancelled() and f.exception() is not None), None)
            if failed is not None:
                raise failed.exception()  # type: ignore[misc]  (a model error, or dropped past the deadline)
            return [f.result() for f in futures], _timing(queued)
        finally:
            settled.cancel()
            for fut in futures:  # on error or cancellation, the rest of this request is skipped
                fut.cancel()

    def _prune(self) -> None:
        """Drop the items of cancelled requests now, so that they do not hold places in a full queue."""
        for q in self._queues.values():  # in place: the worker may hold a reference to q
            live = [item for item in q if not item.future.done()]
            if len(live) != len(q):
                self.metrics.rejections.labels("cancelled").inc(len(q) - len(live))
                q.clear()
                q.extend(live)
        self.metrics.queue_depth.set(self.depth)

    def _oldest_queue(self) -> tuple[str, tuple[int, ...]] | None:
        """The queue whose head waited longest (ties: the one that was filled first)."""
        best: tuple[str, tuple[int, ...]] | None = None
        for key, q in self._queues.items():  # dicts keep insertion order: ties go to the older queue
            if q and (best is None or q[0].enqueued < self._queues[best][0].enqueued):
                best = key
        return best

    async def _run(self) -> None:
        assert self._slots is not None
        try:
            while True:
                # A batch is formed only once a model worker is free: until then the queue fills by itself.
                await self._slots.acquire()
                if not await self._dispatch():
                    self._slots.release()
                    if self._stopping and self._oldest_queue() is None:
                        return
        finally:
            if self._running:
                await asyncio.gather(*self._running, return_exceptions=True)

    async def _dispatch(self) -> bool:
        """Form one batch and start it on a free worker (slot held); False when no batch was started."""
        while True:
            key = self._oldest_queue()
            if key is None:
                if self._stopping:
                    return False
                self._wake.clear()
                await self._wake.wait()
                continue
            op, q = key[0], self._queues[key]
            # Wait for the batch to fill, at most until the oldest item's delay has passed.
            while len(q) < self.max_batch_size and not (self._stopping or self._flushing):
                remaining = q[0].enqueued + self.max_delay - self.clock()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    break
            # Spread what waits over the free workers: with 32 items and two idle workers, two batches of 16 run
            # side by side (each on its own cores) instead of one batch of 32 on one worker while the other idles.
            free = self.concurrency - self._busy
            batch = self._take(q, min(self.max_batch_size, -(-len(q) // max(1, free))))
            self.metrics.queue_depth.set(self.depth)
            if not batch:
                return False
            self._busy += 1
            task = asyncio.get_running_loop().create_task(self._execute_and_release(op, batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            return True

    async def _execute_and_release(self, op: str, batch: list[_Item]) -> None:
        assert self._slots is not None
        try:
            await self._execute(op, batch)
        finally:
            self._busy -= 1
            self._slots.release()

    def _take(self, q: deque[_Item], limit: int) -> list[_Item]:
        batch: list[_Item] = []
        now = self.clock()
        while q and len(batch) < limit:
            item = q.popleft()
            if item.future.done():  # its request was cancelled (client gone, timed out, or a sibling failed)
                self.metrics.rejections.labels("cancelled").inc()
            elif now > item.deadline:
                self.metrics.rejections.labels("deadline").inc()
                item.future.set_exception(DeadlineExceeded("dropped before compute: the request timeout passed"))
            else:
                item.started = now
                batch.append(item)
        return batch

    async def _execute(self, op: str, batch: list[_Item]) -> None:
        for item in batch:
            self.metrics.queue_wait.labels(op).observe(max(0.0, item.started - item.enqueued))
        data = np.stack([item.data for item in batch])  # (B, H, W, 3) uint8 or (B, K) int64
        run = _Run(len(batch))
        for item in batch:
            item.run = run
        t0 = run.start = time.perf_counter()
        try:
            out: Any = await asyncio.wrap_future(self.engine.submit(op, data))
        except Exception as e:
            log.exception("model error on a %s batch of %d", op, len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(ModelError(f"the model failed on this batch ({type(e).__name__})"))
            return
        finally:
            run.seconds = time.perf_counter() - t0
            self.metrics.model_compute.labels(op).observe(run.seconds)
            self.metrics.batch_size.labels(op).observe(len(batch))
        self.metrics.items_processed.labels(op).inc(len(batch))
        if op == "decode":
            for _ in batch:
                self.metrics.decode_tokens.observe(data.shape[1])
        for item, result in zip(batch, out, strict=True):
            if not item.future.done():
                item.future.set_result(result)


def _all_or_first_error(loop: asyncio.AbstractEventLoop, futures: list[asyncio.Future[Any]]) -> asyncio.Future[None]:
    """A future done once every one of `futures` has a result, or at once when one of them fails or is cancelled.

    Like asyncio.wait(return_when=FIRST_EXCEPTION) without its per-call waiter and set; cancelling it leaves
    `futures` alone.
    """
    settled: asyncio.Future[None] = loop.create_future()
    left = len(futures)

    def one_done(fut: asyncio.Future[Any]) -> None:
        nonlocal left
        left -= 1
        if not settled.done() and (left == 0 or fut.cancelled() or fut.exception() is not None):
            settled.set_result(None)

    for fut in futures:
        fut.add_done_callback(one_done)
    if not futures:
        settled.set_result(None)
    return settled


def _timing(items: list[_Item]) -> Timing:
    runs = list({id(item.run): item.run for item in items if item.run is not None}.values())  # in run order
    return Timing(queue_s=max((max(0.0, item.started - item.enqueued) for item in items), default=0.0),
                  model_s=_covered(runs), batch_sizes=tuple(r.size for r in runs))


def _covered(runs: list[_Run]) -> float:
    """Seconds during which at least one of the runs computed: batches on two workers at once count once."""
    total, end = 0.0, float("-inf")
    for r in sorted(runs, key=lambda r: r.start):
        stop = r.start + r.seconds
        if stop > end:
            total += stop - max(r.start, end)
            end = stop
    return total
