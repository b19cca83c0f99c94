"""A pixel flood on /encode: the request's pixel budget, its deadline over decoding, and turns between requests."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sample_images import header_only_png
from service_helpers import make_settings

from titok.core import codec
from titok.errors import DeadlineExceeded, InvalidImage, TooManyPixels
from titok.server import decoding
from titok.server.app import build_app
from titok.server.decoding import DecodeQueue


def png(size: tuple[int, int], seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", compress_level=0)
    return buf.getvalue()


def test_the_request_pixel_budget_is_checked_from_the_headers_before_anything_is_decoded() -> None:
    # Headers that claim 3000 x 3000 over junk data: decoding any of them would fail as invalid_image.
    blobs = [header_only_png(3000, 3000) for _ in range(3)]
    with ThreadPoolExecutor(1) as pool, pytest.raises(TooManyPixels) as refused:
        asyncio.run(decoding.decode_images(DecodeQueue(pool, 1), blobs, 32, "crop", max_image_pixels=50_000_000,
                                           max_request_pixels=20_000_000, deadline=float("inf")))
    assert refused.value.status == 413 and refused.value.code == "too_many_pixels"
    assert "27000000 pixels in all; the limit is 20000000 pixels per request (TITOK_MAX_REQUEST_PIXELS)" in \
        refused.value.message
    with ThreadPoolExecutor(1) as pool, pytest.raises(InvalidImage) as invalid:  # within budget: decoding starts
        asyncio.run(decoding.decode_images(DecodeQueue(pool, 1), blobs, 32, "crop", max_image_pixels=50_000_000,
                                           max_request_pixels=30_000_000, deadline=float("inf")))
    assert invalid.value.message.startswith("images[0]: the PNG image could not be decoded")


class SteppingPool(Executor):
    """Runs each job at once and moves a fake clock 10 s forward: every decode takes '10 s'."""

    def __init__(self) -> None:
        self.now = 0.0
        self.jobs = 0

    def submit(self, fn, /, *args, **kwargs) -> Future:
        fut: Future = Future()
        fut.set_result(fn(*args, **kwargs))
        self.now += 10
        self.jobs += 1
        return fut


def test_no_image_is_decoded_once_the_deadline_has_passed() -> None:
    pool = SteppingPool()
    blobs = [png((40, 40), i) for i in range(4)]
    # image 0 runs from t=0 to 10, image 1 from t=10 to 20 (past the deadline: dropped), 2 and 3 never start
    with pytest.raises(DeadlineExceeded, match="3 of 4 images were not decoded within the request timeout") as e:
        asyncio.run(decoding.decode_images(DecodeQueue(pool, 1), blobs, 32, "crop", max_image_pixels=10**9,
                                           max_request_pixels=10**9, deadline=15.0, clock=lambda: pool.now))
    assert e.value.status == 504 and pool.jobs == 2
    pool = SteppingPool()
    out = asyncio.run(decoding.decode_images(DecodeQueue(pool, 1), blobs, 32, "crop", max_image_pixels=10**9,
                                             max_request_pixels=10**9, deadline=45.0, clock=lambda: pool.now))
    assert len(out) == 4 and all(a.shape == (32, 32, 3) for a in out)


def record_decodes(monkeypatch, names: dict[bytes, str],
                   seconds: float = 0.0) -> tuple[list[str], threading.Event, threading.Event]:
    """Every decode appends its image's name; the first one waits until the test releases it. seconds: how long
    each later decode takes at least (a photo's decode, not a 48 px PNG's tenth of a millisecond)."""
    order: list[str] = []
    first_started, release = threading.Event(), threading.Event()
    real = codec.load_image

    def recording(data: bytes, *args):
        order.append(names[data])
        if len(order) == 1:
            first_started.set()
            assert release.wait(30)
        elif seconds:
            time.sleep(seconds)
        return real(data, *args)

    monkeypatch.setattr(codec, "load_image", recording)
    return order, first_started, release


LIMITS = {"max_image_pixels": 10**9, "max_request_pixels": 10**9, "deadline": float("inf")}


@pytest.mark.parametrize("split", [False, True], ids=["one request of 5 big", "5 requests of 1 big"])
def test_a_small_request_behind_big_ones_waits_for_the_image_being_decoded_not_all(monkeypatch, split) -> None:
    big = [png((64, 64), i) for i in range(5)]
    small = png((40, 40), 99)
    order, first_started, release = record_decodes(monkeypatch, {b: f"big{i}" for i, b in enumerate(big)}
                                                   | {small: "small"})

    async def scenario() -> list[list]:
        with ThreadPoolExecutor(1) as pool:
            queue = DecodeQueue(pool, 1, seconds_per_pixel=1e-3)  # these 64 x 64 PNGs stand for 7000 x 7000 ones
            bigs = [asyncio.ensure_future(decoding.decode_images(queue, blobs, 32, "crop", **LIMITS))
                    for blobs in ([[b] for b in big] if split else [big])]
            await asyncio.to_thread(first_started.wait, 30)  # big0 is being decoded, the rest wait
            b = asyncio.ensure_future(decoding.decode_images(queue, [small], 32, "crop", **LIMITS))
            await asyncio.sleep(0)  # b reads its header and queues its image
            release.set()
            return [await t for t in (*bigs, b)]

    outs = asyncio.run(scenario())
    assert order == ["big0", "small", "big1", "big2", "big3", "big4"]
    assert sum(len(o) for o in outs) == 6


def test_a_window_of_two_keeps_two_images_of_a_request_in_the_pool() -> None:
    with ThreadPoolExecutor(2) as pool:
        out = asyncio.run(decoding.decode_images(DecodeQueue(pool, 2), [png((40, 40), i) for i in range(5)], 32, "crop",
                                                 max_image_pixels=10**9, max_request_pixels=10**9,
                                                 deadline=float("inf"), window=2))
    expected = [codec.load_image(png((40, 40), i), 32) for i in range(5)]
    assert all(np.array_equal(a, b) for a, b in zip(out, expected, strict=True))  # in upload order


def test_over_http_the_budget_is_a_413_and_a_decoding_past_the_deadline_a_504(tiny_artifact: Path) -> None:
    settings = make_settings(tiny_artifact, max_request_pixels=5_000_000, max_upload_bytes=8 * 1024 * 1024)
    with TestClient(build_app(settings), raise_server_exceptions=False) as client:
        files = [("images", (f"{i}.png", header_only_png(2000, 2000), "image/png")) for i in range(2)]
        r = client.post("/encode", files=files)
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_pixels"
        assert "TITOK_MAX_REQUEST_PIXELS" in r.json()["error"]["message"]
        assert client.get("/info").json()["limits"]["max_request_pixels"] == 5_000_000
    slow = make_settings(tiny_artifact, request_timeout_s=0.001, max_upload_bytes=8 * 1024 * 1024)
    with TestClient(build_app(slow), raise_server_exceptions=False) as client:
        big = png((1000, 1000))  # 3 MB of pixels: decoding takes far longer than 1 ms
        r = client.post("/encode", files=[("images", (f"{i}.png", big, "image/png")) for i in range(2)])
        assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
        assert "images were not decoded within the request timeout" in r.json()["error"]["message"]
        # counted among the refusals, as the batcher's deadlines are (it was in titok_requests_total alone)
        assert 'titok_rejections_total{reason="deadline"} 1.0' in client.get("/metrics").text


def test_memory_of_big_decodes_goes_back_to_the_system(tmp_path: Path) -> None:
    """Three 3000 x 3000 decodes in a codec thread (36 MB of pixels each): glibc alone keeps ~50 MB of them."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's")
    script = textwrap.dedent("""
        import io
        from concurrent.futures import ThreadPoolExecutor
        from PIL import Image
        from titok.server import decoding

        def rss_mb():
            return int(next(ln for ln in open("/proc/self/status") if ln.startswith("VmRSS")).split()[1]) / 1024

        buf = io.BytesIO()
        Image.new("RGB", (3000, 3000)).save(buf, "PNG")
        before = rss_mb()
        with ThreadPoolExecutor(1) as pool:
            for _ in range(3):
                pool.submit(decoding._decode, 0, buf.getvalue(), 9_000_000, 32, "crop", 10**9).result()
            print(rss_mb() - before)
    """)
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) < 20, out.stdout  # MB still held after the decodes


@pytest.mark.parametrize(("seconds_per_pixel", "expected"), [
    (1e-3, ["blocker", "small, earlier", "big", "small, later"]),  # the big image's 1 s of slack, then its turn
    (1.0, ["blocker", "small, earlier", "small, later", "big"]),  # slack beyond the test: smallest first
], ids=["fair finish time", "smallest first"])
def test_an_image_is_overtaken_only_by_those_that_arrive_within_its_expected_decoding_time(seconds_per_pixel,
                                                                                          expected) -> None:
    """The queue's key is arrival + pixels x seconds_per_pixel: a big image waits for smaller ones that arrive
    within its own expected decoding time, not for every smaller one that keeps arriving (which starved the
    largest photos of a stream: the bench's encode p99)."""
    order: list[str] = []
    gate = threading.Event()
    now = [0.0]

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            queue = DecodeQueue(pool, 1, seconds_per_pixel=seconds_per_pixel, clock=lambda: now[0])
            jobs = [queue.run(1, lambda: (gate.wait(30), order.append("blocker")))]  # holds the one worker
            for t, pixels, name in ((0.0, 1000, "big"), (0.5, 100, "small, earlier"), (1.5, 100, "small, later")):
                now[0] = t
                jobs.append(queue.run(pixels, order.append, name))
            gate.set()
            await asyncio.gather(*jobs)

    asyncio.run(scenario())
    assert order == expected


def test_a_burst_of_requests_is_decoded_request_by_request_not_image_by_image(monkeypatch) -> None:
    """Every image of a request shares the request's key (its arrival plus all its images' expected time), so
    three 3-image requests sent together are decoded one request after another. Image by image, each request
    advanced a third at a time and, under a deadline, all of them missed it (a hostile pass: 24 requests of 4
    large PNGs, 2 answered and 22 x 504 while the codec decoded 54 images).

    Each decode takes 20 ms here, as a photo's does: a request queues its next image when its coroutine wakes
    after the last one (two turns of the event loop), so an image decoded faster than that (a 48 px PNG, 0.1 ms)
    let another request's image start first in one CI run in three: harmless for images that small."""
    blobs = {f"r{r}i{i}": png((48, 48), 10 * r + i) for r in range(3) for i in range(3)}
    blocker = png((40, 40), 99)
    order, first_started, release = record_decodes(monkeypatch, {b: n for n, b in blobs.items()} | {blocker: "b"},
                                                   seconds=0.02)

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            queue = DecodeQueue(pool, 1)
            hold = asyncio.ensure_future(decoding.decode_images(queue, [blocker], 32, "crop", **LIMITS))
            await asyncio.to_thread(first_started.wait, 30)  # the one codec thread is busy: the rest queue
            requests = []
            for r in range(3):
                requests.append(asyncio.ensure_future(decoding.decode_images(  # window: threads + 1, as /encode
                    queue, [blobs[f"r{r}i{i}"] for i in range(3)], 32, "crop", **LIMITS, window=2)))
                await asyncio.sleep(0.01)  # r0, r1, r2 arrive in this order
            release.set()
            await asyncio.gather(hold, *requests)

    asyncio.run(scenario())
    assert order == ["b"] + [f"r{r}i{i}" for r in range(3) for i in range(3)]


def test_an_image_is_priced_by_its_bytes_as_well_as_its_pixels() -> None:
    """A 1 x 1 PNG padded with 30 MiB of private chunks took 6 s to decode (a hostile pass): priced by its
    pixels alone it went first; priced by its bytes too, it waits behind a photo."""
    queue = DecodeQueue(ThreadPoolExecutor(1), 1)
    padded, photo = queue.expected_seconds(1, 30 * 2**20), queue.expected_seconds(512 * 512, 400_000)
    assert padded > 1.0 > photo > 0.01
    queue.pool.shutdown()


def test_a_failed_decode_is_timed_like_a_good_one() -> None:
    """titok_codec_decode_seconds counts every decode the codec ran, the ones that fail too (a truncated PNG
    takes nearly a full decode before its 400): its count equals titok_codec_wait_seconds'."""
    from titok.server.metrics import Metrics

    def fail() -> None:
        raise ValueError("truncated")

    async def scenario(metrics: Metrics) -> list:
        with ThreadPoolExecutor(1) as pool:
            queue = DecodeQueue(pool, 1, metrics=metrics)
            return await asyncio.gather(queue.run(1, lambda: 7), queue.run(1, fail), return_exceptions=True)

    metrics = Metrics()
    ok, failed = asyncio.run(scenario(metrics))
    assert ok == 7 and isinstance(failed, ValueError)
    samples = {s.name: s.value for m in metrics.registry.collect() for s in m.samples}
    assert samples["titok_codec_decode_seconds_count"] == samples["titok_codec_wait_seconds_count"] == 2
    assert samples["titok_codec_queue_depth"] == 0


def test_a_request_is_refused_with_503_when_the_codec_backlog_alone_outlasts_its_time() -> None:
    """Shedding at admission: under 1.4x overload every request became a 504 while the codec kept decoding for
    them (a hostile pass). A request whose images would wait longer than its time left for the images ahead is
    refused at once with 503 codec_busy and Retry-After; an idle codec never refuses, whatever the request."""
    from titok.errors import CodecBusy
    from titok.server.metrics import Metrics

    gate = threading.Event()

    async def scenario(metrics: Metrics) -> None:
        with ThreadPoolExecutor(1) as pool:
            queue = DecodeQueue(pool, 1, metrics=metrics)
            big = png((64, 64), 1)
            # idle: a request far costlier than its time is still taken (nothing is ahead of it)
            assert queue.expected_wait() == 0
            held = queue.run(1, gate.wait, 30, price=100.0)  # 100 s of expected work ahead of anyone else
            assert queue.expected_wait() == 100.0
            with pytest.raises(CodecBusy, match="the image codec is 100.0 s behind") as e:
                await decoding.decode_images(queue, [big], 32, "crop", max_image_pixels=10**9,
                                             max_request_pixels=10**9, deadline=time.monotonic() + 30)
            assert e.value.status == 503 and e.value.headers["Retry-After"] == "1"
            gate.set()
            await held
            assert queue.expected_wait() == 0
            out = await decoding.decode_images(queue, [big], 32, "crop", max_image_pixels=10**9,
                                               max_request_pixels=10**9, deadline=time.monotonic() + 30)
            assert out[0].shape == (32, 32, 3)

    metrics = Metrics()
    asyncio.run(scenario(metrics))
    samples = {(s.name, tuple(s.labels.items())): s.value for m in metrics.registry.collect() for s in m.samples}
    assert samples[("titok_rejections_total", (("reason", "codec_busy"),))] == 1
