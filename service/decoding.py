"""Decoding a request's uploads fairly: a pixel budget from the headers, the deadline, and turns between requests.

A few tiny files can decode to gigabytes of pixels (a 143 KB black PNG is 7000 x 7000). So, per request:
every header is read first and the pixels summed against `max_request_pixels` before anything is
decoded; at most `window` of its images are in the codec pool at a time, so a request that arrives
behind a big one queues behind one of its images, not all of them (the pool serves its queue in order,
and each request queues its next image only when one of its own is done); no image is started after
the request's deadline; and after a big decode the C heap is trimmed so that a burst's memory goes back
to the system.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time
from collections.abc import Callable
from concurrent.futures import Executor
from functools import cache

import numpy as np

from . import codec
from .errors import DeadlineExceeded, ServiceError, TooManyPixels

TRIM_PIXELS = 4_000_000  # decodes this big leave tens of MB of freed heap behind; smaller ones are not worth a trim


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
        except ServiceError as e:
            e.message = f"images[{i}]: {e.message}"
            raise
    return counts


def _decode(i: int, data: bytes, pixels: int, size: int, resize: codec.Resize, max_pixels: int) -> np.ndarray:
    try:
        return codec.load_image(data, size, resize, max_pixels)
    except ServiceError as e:
        e.message = f"images[{i}]: {e.message}"
        raise
    finally:
        if pixels >= TRIM_PIXELS:
            give_back_memory()


async def decode_images(pool: Executor, blobs: list[bytes], size: int, resize: codec.Resize, *,
                        max_image_pixels: int, max_request_pixels: int, deadline: float, window: int = 1,
                        clock: Callable[[], float] = time.monotonic) -> list[np.ndarray]:
    """Uploaded images -> uint8 (size, size, 3) each, in order; raises the first image's error, 413 or 504."""
    loop = asyncio.get_running_loop()
    # On the event loop, not in the pool: a header costs microseconds, and a trip through the pool would
    # queue this request behind another's big image once more before its first image is even queued.
    counts = _header_pixels(blobs, max_image_pixels)
    if sum(counts) > max_request_pixels:
        raise TooManyPixels(f"the {len(blobs)} images hold {sum(counts)} pixels in all; the limit is "
                            f"{max_request_pixels} pixels per request (TITOK_MAX_REQUEST_PIXELS)")
    results: list[np.ndarray | None] = [None] * len(blobs)
    running: dict[asyncio.Future[np.ndarray], int] = {}
    queued = 0  # images handed to the pool so far
    try:
        while queued < len(blobs) or running:
            while queued < len(blobs) and len(running) < window:
                if clock() >= deadline:
                    break
                fut = loop.run_in_executor(pool, _decode, queued, blobs[queued], counts[queued], size, resize,
                                           max_image_pixels)
                running[fut] = queued
                queued += 1
            left = deadline - clock()
            if left <= 0 or not running:
                undone = sum(r is None for r in results)
                raise DeadlineExceeded(f"{undone} of {len(blobs)} images were not decoded within the request "
                                       "timeout (TITOK_REQUEST_TIMEOUT_S)")
            done, _ = await asyncio.wait(running, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                results[running.pop(fut)] = fut.result()  # an undecodable image fails the request here
    finally:
        for fut in running:  # not started yet: never decoded; started: its result is dropped
            fut.cancel()
    return [r for r in results if r is not None]
