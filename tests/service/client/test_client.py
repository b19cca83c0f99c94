"""The client library against live servers: inputs of every kind, chunking, a 503 retried, a 401, errors."""

from __future__ import annotations

import asyncio
import email.utils
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from sample_images import float_samples, float_tiff, save, two_halves
from service_helpers import FakeEngine, make_settings, serving

from titok.client import AsyncTitokClient, Retry, TitokClient, TitokError
from titok.server.app import build_app

KEY = "client-key-0123456789abcdef"
FAST = Retry(attempts=3, backoff_s=0.01, max_wait_s=0.05)  # for connection errors, where no Retry-After comes


def requests_to(url: str, endpoint: str, status: str) -> float:
    text = httpx.get(f"{url}/metrics", headers={"X-API-Key": KEY}).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "titok_requests_total" and s.labels == {"endpoint": endpoint, "status": status})


def noise(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def keyed_url(tiny_artifact: Path) -> Iterator[str]:
    with serving(build_app(make_settings(tiny_artifact, api_keys=(KEY,)))) as url:
        yield url


def test_every_kind_of_input_gives_the_tokens_of_its_bytes(live_url: str, tmp_path: Path) -> None:
    photo = two_halves(64, 32)
    png = save(photo, "PNG")
    path = tmp_path / "photo.png"
    path.write_bytes(png)
    at_size = noise((32, 32), 1)  # already the model's size: sent as pixels wherever the server takes arrays
    with TitokClient(live_url) as client:
        tokens = client.encode([path, str(path), png, photo, np.asarray(photo), at_size, np.asarray(at_size)])
        formats = client.info()["formats"]
        assert {"image/*", "multipart/form-data"} <= set(formats["/encode"])
        assert "application/json" in formats["/decode"]
        assert client.server.arrays == ("application/x-npy" in formats["/encode"] and
                                        "application/x-npy" in formats["/decode"])
    assert tokens.shape == (7, 8) and tokens.dtype == np.int64
    direct = httpx.post(f"{live_url}/encode", content=png, headers={"content-type": "image/png"}).json()["tokens"]
    assert all(row == direct[0] for row in tokens[:5].tolist())
    assert tokens[5].tolist() == tokens[6].tolist()
    direct = httpx.post(f"{live_url}/encode", content=save(at_size, "PNG"), headers={"content-type": "image/png"})
    assert tokens[5].tolist() == direct.json()["tokens"][0]


@pytest.mark.parametrize("arrays", [None, False])
def test_any_pil_image_gives_the_tokens_of_its_file(live_url: str, tmp_path: Path, arrays: bool | None) -> None:
    cmyk = tmp_path / "cmyk.jpg"
    cmyk.write_bytes(save(two_halves(48, 40).convert("CMYK"), "JPEG", quality=95))
    grey_float = tmp_path / "float.tiff"
    grey_float.write_bytes(float_tiff())
    with TitokClient(live_url, arrays=arrays) as client:
        for path in (cmyk, grey_float):
            by_path = client.encode(path)
            assert client.encode(Image.open(path)).tolist() == by_path.tolist(), path  # was a bare OSError
            loaded = Image.open(path)
            loaded.load()  # no longer its file: converted here by the service's own codec
            assert client.encode(loaded).tolist() == by_path.tolist(), path
        assert client.encode(Image.fromarray(float_samples())).tolist() == client.encode(grey_float).tolist()
        assert client.encode(float_samples()).tolist() == client.encode(grey_float).tolist()
        in_memory = [two_halves().convert(mode) for mode in ("CMYK", "F", "YCbCr", "LAB", "HSV", "I", "I;16",
                                                             "La", "RGBa", "PA", "1")]
        assert client.encode(in_memory).shape == (len(in_memory), 8)


@pytest.mark.parametrize(("item", "words"), [
    (np.zeros((8, 8), np.complex64), "complex64"),
    (np.zeros((8, 8, 5), np.uint8), r"not \(8, 8, 5\)"),
    (np.zeros((2, 8, 8, 3, 1), np.uint8), "not"),
])
def test_images_that_cannot_be_sent_are_titok_errors(live_url: str, item: np.ndarray, words: str) -> None:
    with TitokClient(live_url) as client, pytest.raises(TitokError, match=words) as e:
        client.encode(item)
    assert e.value.code == "invalid_image" and e.value.status is None


def test_resize_mode_and_single_inputs(live_url: str) -> None:
    png = save(two_halves(64, 32), "PNG")
    with TitokClient(live_url) as client:
        for mode in ("crop", "pad", "stretch"):
            direct = httpx.post(f"{live_url}/encode", params={"resize": mode}, content=png,
                                headers={"content-type": "image/png"}).json()["tokens"]
            assert client.encode(png, resize=mode).tolist() == direct
        batch = np.stack([np.asarray(noise((32, 32), s)) for s in range(3)])  # (3, 32, 32, 3): three images
        assert client.encode(batch).shape == (3, 8)
        assert client.encode([]).shape == (0, 8)


def test_large_inputs_go_in_chunks_within_the_server_limits(live_url: str) -> None:
    # The test server takes 4 images and 256 KiB per request; 10 small images need 3 requests, and 3 noise
    # PNGs of ~120 KB each need 2 (their bytes, not their count, set the cut).
    small = [save(noise((40, 40), s), "PNG") for s in range(10)]
    big = [save(noise((200, 200), s), "PNG") for s in range(3)]
    assert 100_000 < len(big[0]) < 128 * 1024
    with TitokClient(live_url) as client:
        singles = [client.encode(b)[0].tolist() for b in small[:3]]
        before = requests_to(live_url, "/encode", "200")
        tokens = client.encode(small)
        assert requests_to(live_url, "/encode", "200") - before == 3
        assert tokens.shape == (10, 8) and tokens[:3].tolist() == singles
        before = requests_to(live_url, "/encode", "200")
        assert client.encode(big).shape == (3, 8)
        assert requests_to(live_url, "/encode", "200") - before == 2
        before = requests_to(live_url, "/decode", "200")
        images = client.decode(np.concatenate([tokens, tokens]), as_array=True)
        assert requests_to(live_url, "/decode", "200") - before == 5  # 20 sequences, 4 a request
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images[:10], images[10:])


def test_images_go_in_requests_within_the_servers_pixel_limit(tiny_artifact: Path) -> None:
    """TITOK_MAX_REQUEST_PIXELS is a limit /info states like the others: five 300 x 300 images (a few KB each) under a
    limit of 200,000 pixels a request go as three requests (2 + 2 + 1), not one 413 for the whole call."""
    flat = [save(Image.new("RGB", (300, 300), (40 * s, 90, 200)), "PNG") for s in range(5)]
    settings = make_settings(tiny_artifact, max_request_pixels=200_000, max_image_pixels=100_000)
    with serving(build_app(settings)) as url, TitokClient(url) as client:
        before = requests_to(url, "/encode", "200")
        tokens = client.encode(flat)
        assert requests_to(url, "/encode", "200") - before == 3
        assert tokens.tolist() == [client.encode(b)[0].tolist() for b in flat]


def test_a_path_that_cannot_be_read_is_a_titok_error_before_anything_is_sent(live_url: str, tmp_path: Path) -> None:
    with TitokClient(live_url) as client:
        before = requests_to(live_url, "/encode", "200")
        with pytest.raises(TitokError, match=r"refused before sending invalid_image: cannot read .*nope.png: No such"):
            client.encode([save(noise((40, 40), 0), "PNG"), tmp_path / "nope.png"])
        assert requests_to(live_url, "/encode", "200") == before


def test_decode_returns_pil_images_or_an_array_equal_to_the_servers_png(live_url: str) -> None:
    seq = list(range(8))
    png = httpx.post(f"{live_url}/decode", json={"tokens": seq}).content
    with TitokClient(live_url) as client:
        images = client.decode(seq)
        array = client.decode(np.asarray([seq, seq], dtype=np.uint16), as_array=True)
    assert len(images) == 1 and images[0].size == (32, 32) and images[0].mode == "RGB"
    expected = np.asarray(Image.open(io.BytesIO(png)))
    assert np.array_equal(np.asarray(images[0]), expected) and np.array_equal(array[1], expected)


def test_server_errors_carry_code_message_request_id_and_status(live_url: str) -> None:
    with TitokClient(live_url, arrays=False) as client:  # the JSON path's words (the .npy path has its own)
        with pytest.raises(TitokError) as e:
            client.decode([[1, 2, 3]])
        assert (e.value.status, e.value.code) == (422, "invalid_tokens")
        assert "has 3 tokens; the model takes exactly 8" in e.value.message and len(e.value.request_id or "") == 32
        with pytest.raises(TitokError) as e:
            client.encode([b"not an image"])
        assert (e.value.status, e.value.code) == (400, "invalid_image")
        with pytest.raises(TitokError, match="not prefix-decodable"):
            client.decode([[1, 2], [3]])  # ragged: a prefix-decodable model's; this one refuses, saying why
        with pytest.raises(TitokError, match="must be an integer token id; 0.5 \\(float\\) is not one") as e:
            client.decode([[0.5] * 8])
        assert (e.value.code, e.value.status) == ("invalid_tokens", None)  # refused before sending
        with pytest.raises(TypeError, match="cannot send"):
            client.encode([3.5])


@pytest.mark.parametrize(("tokens", "words"), [
    ([[1.5, 2]], "tokens[0][0] must be an integer token id; 1.5 (float) is not one"),
    ([[1, True]], "tokens[0][1] must be an integer token id; True (bool) is not one"),
    ([[2**70, 1]], f"tokens[0][0] must be a token id that fits in 64 bits; {2**70} does not"),
    (np.array([2**64 - 1], np.uint64), f"tokens must be a token id that fits in 64 bits; {2**64 - 1} does not"),
    (np.array([[0.5]]), "tokens must be an integer token id; 0.5 (float) is not one"),
    (np.array(5), "tokens must be (N, k) or (k,), not of shape ()"),
    ("abc", "tokens must be integer token ids, not a str"),
    (None, "tokens must be an integer token id; None (NoneType) is not one"),
    ([[1, 2], [3, "x"]], "tokens[1][1] must be an integer token id; 'x' (str) is not one"),
    ([[1, 2], [3]], None),  # ragged: for a prefix-decodable model; the server says whether this one is
    ([[1, 2], [[3]]], "tokens[1] must be a flat sequence of integers, not of shape (1, 1)"),
    ([[1, 2], [3, 4.5, 5]], "tokens[1][1] must be an integer token id; 4.5 (float) is not one"),
    ([[1, 2], 3], "tokens[1] is 3 where tokens[0] is a sequence: send one sequence of ids, or a list of sequences"),
    ([np.bool_(True), 1, 2], "tokens[0] must be an integer token id; True (bool) is not one"),
    (np.ones((1, 400), bool), "tokens must be an integer token id; True (bool) is not one"),  # no array repr
    ([1, [2]], "tokens[1] is a sequence where tokens[0] is one id"),
])
def test_tokens_that_are_no_ids_are_titok_errors_before_sending(tokens: Any, words: str | None) -> None:
    """The README's promise: every failure of a call is a TitokError; these never reach a server (none runs)."""
    from titok.client.core import token_sequences

    if words is None:
        assert [a.tolist() for a in token_sequences(tokens)] == tokens
        return
    with pytest.raises(TitokError) as e:
        token_sequences(tokens)
    assert (e.value.code, e.value.status) == ("invalid_tokens", None)
    assert e.value.message.startswith(words), e.value.message
    with TitokClient("http://127.0.0.1:9", retry=FAST) as client, pytest.raises(TitokError) as e:
        client.decode(tokens)
    assert e.value.code == "invalid_tokens"  # not connection_error: refused before a connection was tried


def test_integer_tokens_of_any_integer_dtype_pass_as_int64() -> None:
    from titok.client.core import token_sequences

    for tokens in ([[1, 2]], np.array([[1, 2]], np.uint16), np.array([1, 2], np.int32), [(1, 2)]):
        got = token_sequences(tokens)
        assert isinstance(got, np.ndarray) and got.dtype == np.int64 and got.tolist() == [[1, 2]]
    ragged = token_sequences([[1, 2], np.array([3], np.uint8), []])
    assert [a.tolist() for a in ragged] == [[1, 2], [3], []] and all(a.dtype == np.int64 for a in ragged)


def test_a_server_that_is_not_this_service_is_named_not_dumped(tmp_path: Path) -> None:
    """`python -m http.server` at the URL: a TitokError saying so, not 200 characters of its HTML page."""
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with TitokClient(url, retry=FAST) as client, pytest.raises(TitokError) as e:
            client.decode([[1, 2]])
        assert (e.value.status, e.value.code) == (404, "http_404")
        assert e.value.message.startswith(f"GET {url}/info answered 404 File not found with text/html ("), e.value
        assert "not a titok service's JSON error: is the URL that of a titok service" in e.value.message
        assert "<" not in e.value.message  # no HTML
        (tmp_path / "a").mkdir()
        (tmp_path / "a" / "info").write_text("<html>a page</html>")  # a 200, but a page
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / "info").write_text("{}")  # a 200, JSON, but not /info's
        for path, words in (("a", "answered 200 with application/octet-stream, not JSON"),
                            ("b", "GET /info answered without a titok service's fields (KeyError")):
            with TitokClient(f"{url}/{path}", retry=FAST) as client, pytest.raises(TitokError) as e:
                client.decode([[1, 2]])
            assert e.value.code == "not_titok" and words in e.value.message, e.value.message
            assert "is the URL that of a titok service?" in e.value.message
    finally:
        server.shutdown()
        server.server_close()


def test_an_unreachable_service_is_a_titok_error_after_the_retries() -> None:
    with TitokClient("http://127.0.0.1:9", retry=FAST) as client, pytest.raises(TitokError) as e:
        client.encode([b"x"])
    assert e.value.code == "connection_error" and e.value.status is None and "cannot reach" in e.value.message


def test_api_key_from_the_argument_or_the_environment(keyed_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TITOK_API_KEY", raising=False)
    with TitokClient(keyed_url) as client, pytest.raises(TitokError) as e:
        client.encode([save(noise((32, 32), 0), "PNG")])
    assert (e.value.status, e.value.code) == (401, "unauthorized") and e.value.request_id
    with TitokClient(keyed_url, api_key="wrong-key-0123456789abcdef") as client, pytest.raises(TitokError) as e:
        client.info()
    assert e.value.status == 401 and "not accepted" in e.value.message
    with TitokClient(keyed_url, api_key=KEY) as client:
        assert client.encode([save(noise((32, 32), 0), "PNG")]).shape == (1, 8)
    monkeypatch.setenv("TITOK_API_KEY", KEY)
    with TitokClient(keyed_url) as client:
        assert len(client.decode([0] * 8)) == 1


def held_server() -> tuple[FakeEngine, Any]:
    engine = FakeEngine()
    app = build_app(make_settings(Path("unused.pt"), max_queue_size=2, max_batch_size=1), engine=engine)
    return engine, app


def fill(url: str, engine: FakeEngine, app: Any) -> list[threading.Thread]:
    """One request held inside the (fake) model and two items queued behind it: the queue of 2 is full."""
    engine.gate.clear()
    threads = [threading.Thread(target=httpx.post, args=(f"{url}/decode",),
                                kwargs={"json": {"tokens": tokens}, "timeout": 60})
               for tokens in ([0] * 8, [[0] * 8] * 2)]
    threads[0].start()
    assert engine.entered.wait(30)
    threads[1].start()
    for _ in range(3000):
        if app.state.service.batcher.depth == 2:
            break
        time.sleep(0.01)
    assert app.state.service.batcher.depth == 2
    return threads


def test_a_503_is_retried_after_retry_after() -> None:
    engine, app = held_server()
    rejections = app.state.service.metrics.rejections.labels("queue_full")
    with serving(app) as url:
        held = fill(url, engine, app)

        def release_after_first_refusal() -> None:
            for _ in range(3000):
                if rejections._value.get() >= 1:  # noqa: SLF001
                    break
                time.sleep(0.01)
            engine.gate.set()

        releaser = threading.Thread(target=release_after_first_refusal)
        releaser.start()
        with TitokClient(url) as client:
            client.info()
            images = client.decode([[1] * 8], as_array=True)  # refused while the queue is full, then retried
        releaser.join(30)
        for t in held:
            t.join(30)
        assert images.shape == (1, 32, 32, 3)
        assert rejections._value.get() == 1  # noqa: SLF001
        assert requests_to(url, "/decode", "503") == 1 and requests_to(url, "/decode", "200") == 3


def test_retries_are_bounded_and_the_last_503_is_raised() -> None:
    engine, app = held_server()
    with serving(app) as url:
        held = fill(url, engine, app)
        try:
            with TitokClient(url, retry=Retry(attempts=2)) as client, pytest.raises(TitokError) as e:
                client.decode([[1] * 8])
            assert (e.value.status, e.value.code) == (503, "queue_full") and e.value.request_id
            assert requests_to(url, "/decode", "503") == 2
        finally:
            engine.gate.set()
            for t in held:
                t.join(30)


def test_retry_waits_what_retry_after_says_within_bounds() -> None:
    retry = Retry(attempts=4, backoff_s=0.5, max_wait_s=10.0)
    waits = [retry.delay(0, "2") for _ in range(200)]
    assert 2.0 <= min(waits) and max(waits) <= 3.0 and len(set(waits)) > 1  # at least what it says, plus jitter
    assert 0.5 <= retry.delay(0, None) <= 0.75 and 1.0 <= retry.delay(1, None) <= 1.5  # no header: doubling
    assert 10.0 <= retry.delay(2, "3600") <= 15.0  # bounded
    later = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3.0 <= retry.delay(0, later) <= 7.5  # an HTTP date
    assert retry.delay(3, "1") is None  # the fourth try was the last


def test_the_async_client_matches_the_sync_one(live_url: str, keyed_url: str) -> None:
    images = [save(noise((40, 40), s), "PNG") for s in range(9)]
    with TitokClient(live_url) as client:
        expected = client.encode(images)
        pixels = client.decode(expected, as_array=True)

    async def run() -> tuple[np.ndarray, np.ndarray, TitokError]:
        async with AsyncTitokClient(live_url, concurrency=2) as client:
            tokens = await client.encode(images)  # 3 requests, 2 at a time
            decoded = await client.decode(tokens, as_array=True)
        async with AsyncTitokClient(keyed_url) as client:
            try:
                await client.info()
            except TitokError as e:
                return tokens, decoded, e
        raise AssertionError("no 401")

    tokens, decoded, error = asyncio.run(run())
    assert np.array_equal(tokens, expected) and np.array_equal(decoded, pixels)
    assert error.status == 401 and error.code == "unauthorized"


def test_array_formats_where_the_server_has_them(live_url: str) -> None:
    """The .npy path (issue #13): the same tokens and pixels as multipart/JSON. Today's server lacks it."""
    with TitokClient(live_url) as plain:
        if not plain.server.arrays:
            pytest.skip("this server does not list application/x-npy in /info's formats (issue #13 not merged)")
        batch = np.stack([np.asarray(noise((32, 32), s)) for s in range(5)])
        tokens = plain.encode(batch)
        with TitokClient(live_url, arrays=False) as fallback:
            assert np.array_equal(fallback.encode(batch), tokens)
            assert np.array_equal(fallback.decode(tokens, as_array=True), plain.decode(tokens, as_array=True))


def test_the_async_client_survives_a_failed_call_with_its_slots(live_url: str) -> None:
    good = [save(noise((40, 40), s), "PNG") for s in range(6)]

    async def run() -> np.ndarray:
        async with AsyncTitokClient(live_url, concurrency=1) as client:
            for _ in range(3):  # each failure cancels the requests not yet sent, and gives their slots back
                with pytest.raises(TitokError):
                    await client.encode([b"broken", *good])
            return await client.encode(good)

    assert asyncio.run(asyncio.wait_for(run(), 120)).shape == (6, 8)
