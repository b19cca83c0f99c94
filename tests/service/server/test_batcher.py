"""Dynamic batching, tested deterministically: hold the engine, enqueue, release, assert the batches."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest

from titok.errors import DeadlineExceeded, Draining, ModelError, QueueFull
from titok.server.batcher import Batcher


class HeldEngine:
    """Echoes its input; every batch waits at `gate`, so the queue fills while the engine is held."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.fail_next = False
        self._thread = ThreadPoolExecutor(max_workers=1)

    def submit(self, op: str, batch: np.ndarray) -> Future[np.ndarray]:
        return self._thread.submit(self._run, batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append([int(x) for x in batch[:, 0]])
        self.entered.set()
        assert self.gate.wait(timeout=30), "test never released the engine"
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        return batch.copy()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def items(*values: int) -> list[np.ndarray]:
    return [np.array([v, v], dtype=np.int64) for v in values]


def sizes(engine: HeldEngine) -> list[int]:
    return [len(b) for b in engine.batches]


async def until(condition) -> None:
    """Yield to the loop until `condition()` holds (no sleeps: each step lets ready tasks run)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def hold(batcher: Batcher, engine: HeldEngine, value: int = 0) -> asyncio.Task:
    """Start one single-item request and wait until the engine is busy with it."""
    task = asyncio.ensure_future(batcher.submit("decode", items(value), timeout=30))
    await asyncio.to_thread(engine.entered.wait, 30)
    return task


def make(engine: HeldEngine, max_batch: int = 4, queue: int = 64, delay_ms: float = 0.0, **kw) -> Batcher:
    batcher = Batcher(engine, max_batch, delay_ms, queue, **kw)
    batcher.start()
    return batcher


def test_items_queued_while_the_engine_is_busy_form_full_batches() -> None:
    async def scenario() -> None:
        engine = HeldEngine()
        batcher = make(engine, max_batch=4)
        first = await hold(batcher, engine)
        others = [asyncio.ensure_future(batcher.submit("decode", items(v), timeout=30)) for v in range(1, 10)]
        await until(lambda: batcher.depth == 9)
        engine.gate.set()
        results = await asyncio.gather(first, *others)
        assert sizes(engine) == [1, 4, 4, 1]
        assert [int(r[0][0]) for r in results] == list(range(10))
        assert batcher.metrics.batch_size.labels("decode")._sum.get() == 10  # noqa: SLF001
        await batcher.stop()

    asyncio.run(scenario())


def test_a_request_larger_than_the_batch_is_split_and_answered_in_order() -> None:
    async def scenario() -> None:
        engine = HeldEngine()
        batcher = make(engine, max_batch=4)
        first = await hold(batcher, engine, value=100)
        big = asyncio.ensure_future(batcher.submit("decode", items(*range(10)), timeout=30))
        await until(lambda: batcher.depth == 10)
        engine.gate.set()
        await first
        out = await big
        assert sizes(engine) == [1, 4, 4, 2]
        assert [int(r[0]) for r in out] == list(range(10))
        await batcher.stop()

    asyncio.run(scenario())


def test_each_request_gets_its_own_queue_wait_model_time_and_batch_sizes() -> None:
    async def scenario() -> None:
        engine = HeldEngine()
        clock = FakeClock()
        batcher = make(engine, max_batch=4, clock=clock)
        first = await hold(batcher, engine)
        b = asyncio.ensure_future(batcher.submit_timed("decode", items(1, 2, 3), timeout=30))
        c = asyncio.ensure_future(batcher.submit_timed("decode", items(4, 5), timeout=30))
        await until(lambda: batcher.depth == 5)
        clock.now += 2.5  # b and c wait 2.5 s (fake) for the held batch
        engine.gate.set()
        await first
        (_, tb), (out_c, tc) = await b, await c
        assert sizes(engine) == [1, 4, 1]
        assert tb.batch_sizes == (4,) and tc.batch_sizes == (4, 1)  # c's second item spilled into the next batch
        assert tb.queue_s == pytest.approx(2.5) and tc.queue_s == pytest.approx(2.5)
        assert 0 < tb.model_s < tc.model_s  # c's items ran in both batches: their model times add up
        assert [int(r[0]) for r in out_c] == [4, 5]
        await batcher.stop()

    asyncio.run(scenario())


def test_a_full_batch_closes_without_waiting_for_the_delay() -> None:
    async def scenario() -> None:
        engine = HeldEngine()
        engine.gate.set()
        batcher = make(engine, max_batch=4, delay_ms=600_000)  # a delay the test would notice
        out = await batcher.submit("decode", items(1, 2, 3, 4), timeout=30)
        assert sizes(engine) == [4] and len(out) == 4
        await batcher.stop()

    asyncio.run(scenario())


def test_a_partial_batch_closes_after_the_delay() -> None:
    async def scenario() -> None:
        engine = HeldEngine()
        engine.gate.set()
        batcher = make(engine, max_batch=8, delay_ms=20)
        a = asyncio.ensure_future(batcher.submit("decode", items(1, 2), timeout=30))
        b = asyncio.ensure_future(batcher.submit("decode", items(3), timeout=30))
        await asyncio.gather(a, b)
        assert sizes(engine) == [3]
        await batcher.stop()

    asyncio.run(scenario())


def test_a_full_queue_refuses_at_once_with_retry_after() -> None:
    async def scenario() -> None:
        engine = HeldEngine()
        batcher = make(engine, max_batch=4, queue=4)
        first = await hold(batcher, engine)
        queued = asyncio.ensure_future(batcher.submit("decode", items(1, 2, 3), timeout=30))
        await until(lambda: batcher.depth == 3)
        with pytest.raises(QueueFull) as refused:
            await batcher.submit("decode", items(4, 5), timeout=30)
        assert refused.value.headers["Retry-After"] == "1"
        assert refused.value.status == 503
        assert batcher.metrics.rejections.labels("queue_full")._value.get() == 1  # noqa: SLF001
        engine.gate.set()
        await asyncio.gather(first, queued)
        assert sizes(engine) == [1, 3]
        await batcher.stop()

    asyncio.run(scenario())


def test_items_past_their_deadline_are_dropped_before_compute() -> None:
    async def scenario() -> None:
        engine, clock = HeldEngine(), FakeClock()
        batcher = make(engine, max_batch=4, clock=clock)
        first = await hold(batcher, engine)
        late = asyncio.ensure_future(batcher.submit("decode", items(1, 2), timeout=5))
        await until(lambda: batcher.depth == 2)
        clock.now += 6  # the deadline passes while the engine is busy
        fresh = asyncio.ensure_future(batcher.submit("decode", items(3), timeout=5))
        await until(lambda: batcher.depth == 3)
        engine.gate.set()
        await first
        with pytest.raises(DeadlineExceeded) as dropped:
            await late
        assert dropped.value.status == 504
        assert [int(r[0]) for r in await fresh] == [3]
        assert engine.batches == [[0], [3]]  # the expired items never reached the model
        await batcher.stop()

    asyncio.run(scenario())


def test_cancelled_requests_are_skipped() -> None:
    async def scenario() -> None:
        engine = HeldEngine()
        batcher = make(engine, max_batch=4)
        first = await hold(batcher, engine)
        gone = asyncio.ensure_future(batcher.submit("decode", items(1, 2), timeout=30))
        kept = asyncio.ensure_future(batcher.submit("decode", items(3), timeout=30))
        await until(lambda: batcher.depth == 3)
        gone.cancel()  # what the route does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await gone
        engine.gate.set()
        await first
        assert [int(r[0]) for r in await kept] == [3]
        assert engine.batches == [[0], [3]]
        assert batcher.metrics.rejections.labels("cancelled")._value.get() == 2  # noqa: SLF001
        await batcher.stop()

    asyncio.run(scenario())


def test_a_model_error_fails_only_its_batch_and_the_next_batch_works() -> None:
    async def scenario() -> None:
        engine = HeldEngine()
        engine.fail_next = True
        batcher = make(engine, max_batch=4)
        doomed = await hold(batcher, engine)
        after = asyncio.ensure_future(batcher.submit("decode", items(1, 2), timeout=30))
        await until(lambda: batcher.depth == 2)
        engine.gate.set()
        with pytest.raises(ModelError) as failed:
            await doomed
        assert failed.value.status == 500
        assert [int(r[0]) for r in await after] == [1, 2]
        assert sizes(engine) == [1, 2]
        await batcher.stop()

    asyncio.run(scenario())


def test_encode_and_decode_items_never_share_a_batch() -> None:
    async def scenario() -> None:
        engine = HeldEngine()
        batcher = make(engine, max_batch=8)
        first = await hold(batcher, engine)
        enc = asyncio.ensure_future(batcher.submit("encode", items(1, 2), timeout=30))
        dec = asyncio.ensure_future(batcher.submit("decode", items(3), timeout=30))
        await until(lambda: batcher.depth == 3)
        engine.gate.set()
        await asyncio.gather(first, enc, dec)
        assert engine.batches == [[0], [1, 2], [3]]  # oldest queue first
        await batcher.stop()

    asyncio.run(scenario())


def test_stop_finishes_queued_work_and_refuses_new_work() -> None:
    async def scenario() -> None:
        engine = HeldEngine()
        batcher = make(engine, max_batch=4, delay_ms=600_000)
        first = asyncio.ensure_future(batcher.submit("decode", items(0, 0, 0, 0), timeout=30))  # a full batch
        await asyncio.to_thread(engine.entered.wait, 30)
        queued = asyncio.ensure_future(batcher.submit("decode", items(1, 2), timeout=30))
        await until(lambda: batcher.depth == 2)
        stopping = asyncio.ensure_future(batcher.stop())
        await asyncio.sleep(0)
        with pytest.raises(Draining):
            await batcher.submit("decode", items(9), timeout=30)
        engine.gate.set()
        await asyncio.gather(first, queued, stopping)
        assert sizes(engine) == [4, 2]  # the long delay was not waited for while stopping

    asyncio.run(scenario())


def test_cancelled_items_do_not_hold_places_in_a_full_queue() -> None:
    async def scenario() -> None:
        engine = HeldEngine()
        batcher = make(engine, max_batch=4, queue=3)
        first = await hold(batcher, engine)
        gone = asyncio.ensure_future(batcher.submit("decode", items(1, 2, 3), timeout=30))
        await until(lambda: batcher.depth == 3)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        kept = asyncio.ensure_future(batcher.submit("decode", items(4, 5), timeout=30))  # fits once pruned
        await until(lambda: batcher.depth == 2)
        engine.gate.set()
        await first
        assert [int(r[0]) for r in await kept] == [4, 5]
        assert engine.batches == [[0], [4, 5]]
        await batcher.stop()

    asyncio.run(scenario())


# Token sequences of different lengths (prefix-decodable models): grouped by length, the oldest head first.

def seq(value: int, length: int) -> np.ndarray:
    return np.full(length, value, np.int64)


def test_items_of_different_lengths_never_share_a_batch_and_a_rare_length_is_not_starved() -> None:
    async def scenario() -> None:
        engine, clock = HeldEngine(), FakeClock()
        batcher = make(engine, max_batch=4, clock=clock)
        first = await hold(batcher, engine)  # length 2, value 0: the engine is busy with it
        lengths: dict[int, int] = {}

        def submit(length: int, *values: int) -> asyncio.Future:
            lengths.update({v: length for v in values})
            clock.now += 1  # each request a second after the one before
            return asyncio.ensure_future(batcher.submit("decode", [seq(v, length) for v in values], timeout=30))

        common_before = submit(8, 1, 2, 3, 4, 5)
        await until(lambda: batcher.depth == 5)
        rare = submit(3, 90)
        await until(lambda: batcher.depth == 6)
        common_after = [submit(8, v, v + 1, v + 2, v + 3) for v in (10, 20, 30)]  # more of the common length
        await until(lambda: batcher.depth == 18)
        engine.gate.set()
        await asyncio.gather(first, common_before, rare, *common_after)
        # One length per batch, each filled from its own queue; the rare item runs as soon as no older item
        # waits: after the two batches that hold the 5 items queued before it, ahead of 13 newer ones.
        assert engine.batches == [[0], [1, 2, 3, 4], [5, 10, 11, 12], [90], [13, 20, 21, 22], [23, 30, 31, 32],
                                  [33]]
        for batch in engine.batches[1:]:
            assert len({lengths[v] for v in batch}) == 1
        assert batcher.metrics.decode_tokens._sum.get() == 2 + 8 * 17 + 3  # noqa: SLF001
        await batcher.stop()

    asyncio.run(scenario())


def test_one_request_with_mixed_lengths_gets_each_result_in_its_own_place() -> None:
    async def scenario() -> None:
        engine = HeldEngine()
        batcher = make(engine, max_batch=4)
        first = await hold(batcher, engine)
        mixed = asyncio.ensure_future(batcher.submit(
            "decode", [seq(1, 4), seq(2, 2), seq(3, 4), seq(4, 1), seq(5, 2)], timeout=30))
        await until(lambda: batcher.depth == 5)
        engine.gate.set()
        await first
        out = await mixed
        assert [(int(r[0]), len(r)) for r in out] == [(1, 4), (2, 2), (3, 4), (4, 1), (5, 2)]
        assert sorted(map(sorted, engine.batches[1:])) == [[1, 3], [2, 5], [4]]  # by length, never mixed
        await batcher.stop()

    asyncio.run(scenario())


class CountingEngine(HeldEngine):
    """HeldEngine on `workers` threads that records how many batches it ran at once."""

    def __init__(self, workers: int) -> None:
        super().__init__()
        self._thread = ThreadPoolExecutor(max_workers=workers)
        self._lock = threading.Lock()
        self.inside = 0
        self.most_inside = 0
        self.two_inside = threading.Event()

    def _run(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            if self.inside >= 2:
                self.two_inside.set()
        try:
            return super()._run(batch)
        finally:
            with self._lock:
                self.inside -= 1


def test_with_two_workers_a_second_batch_runs_while_the_first_is_held() -> None:
    async def scenario() -> None:
        engine = CountingEngine(workers=2)
        batcher = make(engine, max_batch=4, concurrency=2)
        first = await hold(batcher, engine, 0)  # batch [0] holds one worker
        second = asyncio.ensure_future(batcher.submit("decode", items(1, 2), timeout=30))
        assert await asyncio.to_thread(engine.two_inside.wait, 30)  # started on the other worker, not queued
        third = asyncio.ensure_future(batcher.submit("decode", items(3, 4, 5), timeout=30))
        await until(lambda: batcher.depth == 3)  # both workers busy: the third request waits in the queue
        engine.gate.set()
        results = await asyncio.gather(first, second, third)
        assert engine.most_inside == 2
        assert sorted(map(sorted, engine.batches[:2])) == [[0], [1, 2]]
        assert sorted(v for b in engine.batches[2:] for v in b) == [3, 4, 5]  # in one batch or spread over two
        assert [[int(r[0]) for r in res] for res in results] == [[0], [1, 2], [3, 4, 5]]
        await batcher.stop()

    asyncio.run(scenario())


def test_one_worker_never_runs_two_batches_at_once_even_on_a_wider_engine() -> None:
    async def scenario() -> None:
        engine = CountingEngine(workers=4)
        batcher = make(engine, max_batch=2)  # concurrency defaults to 1
        first = await hold(batcher, engine, 0)
        rest = [asyncio.ensure_future(batcher.submit("decode", items(v), timeout=30)) for v in range(1, 6)]
        await until(lambda: batcher.depth == 5)
        engine.gate.set()
        await asyncio.gather(first, *rest)
        assert engine.most_inside == 1
        assert sizes(engine) == [1, 2, 2, 1]
        await batcher.stop()

    asyncio.run(scenario())


def test_stop_waits_for_every_running_batch_of_every_worker() -> None:
    async def scenario() -> None:
        engine = CountingEngine(workers=2)
        batcher = make(engine, max_batch=4, concurrency=2)
        first = await hold(batcher, engine, 0)
        second = asyncio.ensure_future(batcher.submit("decode", items(1), timeout=30))
        assert await asyncio.to_thread(engine.two_inside.wait, 30)
        stopping = asyncio.ensure_future(batcher.stop())
        for _ in range(50):
            await asyncio.sleep(0)
        assert not stopping.done()  # two batches still in the model
        engine.gate.set()
        await asyncio.gather(first, second, stopping)
        assert engine.inside == 0

    asyncio.run(scenario())


def test_what_waits_is_spread_over_the_free_workers() -> None:
    async def scenario() -> None:
        engine = CountingEngine(workers=2)
        batcher = make(engine, max_batch=8, delay_ms=600_000, concurrency=2)
        request = asyncio.ensure_future(batcher.submit("decode", items(*range(6)), timeout=30))
        await until(lambda: batcher.depth == 6)  # not a full batch: it waits for the (long) delay
        batcher.flush()  # stop waiting: two idle workers share the six items
        assert await asyncio.to_thread(engine.two_inside.wait, 30)
        engine.gate.set()
        result = await request
        assert sizes(engine) == [3, 3] and sorted(map(sorted, engine.batches)) == [[0, 1, 2], [3, 4, 5]]
        assert [int(r[0]) for r in result] == list(range(6))
        await batcher.stop()

    asyncio.run(scenario())


def test_model_time_of_a_request_counts_overlapping_batches_once() -> None:
    from titok.server.batcher import _covered, _Run

    runs = [_Run(2, seconds=1.0, start=10.0), _Run(1, seconds=1.0, start=10.5),  # side by side: 10.0-11.5
            _Run(3, seconds=0.5, start=12.0), _Run(1, seconds=0.1, start=12.1)]  # the second inside the first
    assert _covered(runs) == pytest.approx(1.5 + 0.5)
    assert _covered([]) == 0.0
