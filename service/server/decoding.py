"""Decoding a request's uploads fairly: a pixel budget from the headers, the deadline, and turns between requests.

A few tiny files can decode to gigabytes of pixels (a 143 KB black PNG is 7000 x 7000). So, per request:
every header is read first and the pixels summed against `max_request_pixels` before anything is
decoded; at most `window` of its images wait for or run in the codec pool at a time (it queues its next
one only when one of its own is done); the waiting images of all requests go in the order of their request's
arrival plus the expected decoding time of all its images (smaller requests first among those that arrive close
together, requests of a burst one after another, and none overtaken for ever); a request that would wait longer
than its time left for the images ahead of it is refused at once (503); no image is started after the request's
deadline; and after a big decode the C heap is
trimmed so that a burst's memory goes back to the system. A small request that arrives behind big ones, in one
request or in many, thus waits for the images being decoded at that moment, not for all of them.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import heapq
import itertools
import time
from collections.abc import Callable
from concurrent.futures import Executor
from concurrent.futures import Future as PoolFuture
from functools import cache, partial
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core import codec
from ..errors import ANSWERABLE, CodecBusy, DeadlineExceeded, TooManyPixels

if TYPE_CHECKING:
    from .metrics import Metrics

TRIM_PIXELS = 4_000_000  # decodes this big leave tens of MB of freed heap behind; smaller ones are not worth a trim
# The queue's estimate of decoding time, seconds per pixel: 20 megapixels a second, about Pillow's PNG speed on one
# core here (JPEG is faster). It sets how far apart in time two arrivals may be for the smaller to go first.
SECONDS_PER_PIXEL = 1 / 20e6
# ... and per byte of the file: a file's size costs time whatever its pixels (a 1 x 1 PNG padded with 30 MiB of
# private chunks took 6 s to decode), so an image is priced at the larger of the two.
SECONDS_PER_BYTE = 1 / 20e6


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None elsewhere (musl, macOS: nothing to do there)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def give_back_memory() -> None:
    """Return the freed parts of the C heap to the system (glibc keeps them otherwise, per thread arena)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _header_pixels(blobs: list[bytes], max_image_pixels: int) -> list[int]:
    counts = []
    for i, data in enumerate(blobs):
        try:
            counts.append(codec.pixel_count(data, max_image_pixels))
        except ANSWERABLE as e:
            e.message = f"images[{i}]: {e.message}"
            raise
    return counts


def _decode(i: int, data: bytes, pixels: int, size: int, resize: codec.Resize, max_pixels: int) -> np.ndarray:
    try:
        return codec.load_image(data, size, resize, max_pixels)
    except ANSWERABLE as e:
        e.message = f"images[{i}]: {e.message}"
        raise
    finally:
        if pixels >= TRIM_PIXELS:
            give_back_memory()


class DecodeQueue:
    """The codec pool's door for image decodes: at most `workers` in the pool at once, each waiting image served
    in the order of its key: by default its arrival time plus its own expected decoding time; decode_images gives
    all images of a request the request's key (see run).

    A plain pool serves its queue in arrival order, so one small photo sent after sixteen one-image
    requests of 7000 x 7000 waited for all sixteen (49 megapixels: 2.5 s of slack each, so the photo goes
    first). Smallest first alone never served the largest of a stream of photos while smaller ones kept coming
    (the bench's encode p99 at 64 clients: 2.2 s against a p50 of 91 ms); with the arrival time in the key, an
    image is overtaken only by images that arrive within its own expected decoding time, the virtual finish time
    of fair queuing (Demers, Keshav and Shenker, 1989) with each image its own flow.
    """

    def __init__(self, pool: Executor, workers: int, seconds_per_pixel: float = SECONDS_PER_PIXEL,
                 clock: Callable[[], float] = time.monotonic, metrics: Metrics | None = None,
                 seconds_per_byte: float = SECONDS_PER_BYTE) -> None:
        """metrics: where to count the waiting images (titok_codec_queue_depth), each image's wait for a thread
        (titok_codec_wait_seconds) and its decoding time (titok_codec_decode_seconds); None counts nothing."""
        self.pool = pool
        self.workers = workers
        self.seconds_per_pixel = seconds_per_pixel
        self.seconds_per_byte = seconds_per_byte
        self.clock = clock
        self.metrics = metrics
        # a heap by (arrival + expected decoding time), then arrival order; with the arrival time and the price
        self._waiting: list[tuple[float, int, Callable[[], Any], asyncio.Future[Any], float, float]] = []
        self._order = itertools.count()
        self._busy = 0
        self._backlog = 0.0  # expected seconds of the images waiting or being decoded

    def expected_wait(self) -> float:
        """Seconds a new request can expect to wait for the images ahead of it: the backlog over the threads."""
        return self._backlog / max(1, self.workers)

    def expected_seconds(self, pixels: int, nbytes: int) -> float:
        """The price of decoding one image: the larger of its pixels' and its file's bytes' expected times."""
        return max(pixels * self.seconds_per_pixel, nbytes * self.seconds_per_byte)

    def run(self, pixels: int, fn: Callable[..., Any], *args: Any, key: float | None = None,
            price: float | None = None) -> asyncio.Future[Any]:
        """fn(*args) in the pool once no image with an earlier key waits; cancelling the future before then
        skips it. pixels: the image's pixel count (from its header). key: the image's place in the queue
        (seconds on `clock`); default its arrival plus pixels x seconds_per_pixel. decode_images gives every
        image of a request the request's own key (its arrival plus all its images' expected time), so that a
        request's images go together: requests finish in order of their expected finish, rather than all of a
        burst's requests advancing image by image and all missing their deadlines. price: its expected decoding
        seconds (expected_seconds; default pixels x seconds_per_pixel), counted in the backlog until it is done."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        now = self.clock()
        price = pixels * self.seconds_per_pixel if price is None else price
        key = now + price if key is None else key
        heapq.heappush(self._waiting, (key, next(self._order), partial(fn, *args), fut, now, price))
        self._backlog += price
        self._start_next()
        return fut

    def _start_next(self) -> None:
        while self._busy < self.workers and self._waiting:
            _, _, job, fut, arrived, price = heapq.heappop(self._waiting)
            if fut.done():  # cancelled while waiting: its request has failed, timed out or gone
                self._backlog -= price
                continue
            try:
                running = self.pool.submit(_timed, job)
            except RuntimeError as e:  # the pool is shut down: the service is stopping
                self._backlog -= price
                fut.set_exception(e)
                continue
            if self.metrics:
                self.metrics.codec_wait.observe(max(0.0, self.clock() - arrived))
            self._busy += 1
            loop = fut.get_loop()
            running.add_done_callback(
                lambda done, fut=fut, loop=loop, price=price: loop.call_soon_threadsafe(self._finished, done, fut,
                                                                                        price))
        if self.metrics:
            self.metrics.codec_depth.set(len(self._waiting))

    def _finished(self, done: PoolFuture[Any], fut: asyncio.Future[Any], price: float = 0.0) -> None:
        self._busy -= 1
        self._backlog = max(0.0, self._backlog - price)
        error, result = done.exception(), None  # an error of the pool itself; a job's own comes from _timed
        if error is None:
            ok, value, seconds = done.result()
            if self.metrics:  # failed decodes cost time too
                self.metrics.codec_decode.observe(seconds)
            error, result = (None, value) if ok else (value, None)
        if not fut.done():
            if error is None:
                fut.set_result(result)
            else:
                fut.set_exception(error)
        self._start_next()


def _timed(job: Callable[[], Any]) -> tuple[bool, Any, float]:
    """In a codec thread: (True, job(), seconds) or (False, the exception it raised, seconds), the seconds being
    its thread's wall time (titok_codec_decode_seconds counts failed decodes too)."""
    t0 = time.perf_counter()
    try:
        return True, job(), time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - handed back to the awaiting request as it is
        return False, e, time.perf_counter() - t0


async def decode_images(queue: DecodeQueue, blobs: list[bytes], size: int, resize: codec.Resize, *,
                        max_image_pixels: int, max_request_pixels: int, deadline: float, window: int = 1,
                        clock: Callable[[], float] = time.monotonic) -> list[np.ndarray]:
    """Uploaded images -> uint8 (size, size, 3) each, in order; raises the first image's error, 413 or 504."""
    # On the event loop, not in the pool: a header costs microseconds, and a trip through the pool would
    # put this request behind another's big image once more before its first image is even queued.
    counts = _header_pixels(blobs, max_image_pixels)
    if sum(counts) > max_request_pixels:
        raise TooManyPixels(f"the {len(blobs)} images hold {sum(counts)} pixels in all; the limit is "
                            f"{max_request_pixels} pixels per request (TITOK_MAX_REQUEST_PIXELS)")
    results: list[np.ndarray | None] = [None] * len(blobs)
    running: dict[asyncio.Future[np.ndarray], int] = {}
    queued = 0  # images handed to the queue so far
    # Shed at admission: when the images ahead alone would outlast this request's time, a 503 now (a load balancer
    # retries elsewhere) beats decoding them only to answer 504 (under 1.4x overload every request became a 504
    # while the codec kept working for them). An idle or keeping-up codec never sheds.
    ahead = queue.expected_wait()
    if ahead > deadline - clock():
        if queue.metrics:
            queue.metrics.rejections.labels("codec_busy").inc()
        raise CodecBusy(f"the image codec is {ahead:.1f} s behind, more than this request's time left "
                        f"(TITOK_REQUEST_TIMEOUT_S); retry later or on another replica", headers={"Retry-After": "1"})
    # One key for all of this request's images: its arrival plus their expected decoding time (DecodeQueue.run)
    prices = [queue.expected_seconds(n, len(b)) for n, b in zip(counts, blobs, strict=True)]
    key = queue.clock() + sum(prices)
    try:
        while queued < len(blobs) or running:
            while queued < len(blobs) and len(running) < window:
                if clock() >= deadline:
                    break
                fut = queue.run(counts[queued], _decode, queued, blobs[queued], counts[queued], size, resize,
                                max_image_pixels, key=key, price=prices[queued])
                running[fut] = queued
                queued += 1
            left = deadline - clock()
            if left <= 0 or not running:
                undone = sum(r is None for r in results)
                raise DeadlineExceeded(f"{undone} of {len(blobs)} images were not decoded within the request "
                                       "timeout (TITOK_REQUEST_TIMEOUT_S)", rejection="deadline")
            done, _ = await asyncio.wait(running, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                results[running.pop(fut)] = fut.result()  # an undecodable image fails the request here
    finally:
        for fut in running:  # not started yet: never decoded; started: its result is dropped
            fut.cancel()
    return [r for r in results if r is not None]
