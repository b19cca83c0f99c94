"""The API for programs over HTTP: .npy in and out, the model's fingerprint, timing headers, quality-aware encode."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from npy_strategies import npy_files
from PIL import Image

from titok.core.artifact import read_meta

NPY = "application/x-npy"


def npy(a: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, **kw)
    return buf.getvalue()


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def served_hash(tiny_artifact: Path) -> str:
    return read_meta(tiny_artifact)["content_hash"]


def test_npy_images_give_the_same_tokens_as_the_same_pixels_sent_as_png(client: TestClient, images) -> None:
    r = client.post("/encode", content=npy(images), headers={"content-type": NPY, "accept": NPY})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == NPY
    tokens = np.load(io.BytesIO(r.content))
    assert tokens.dtype == np.uint8 and tokens.shape == (3, 8)  # codebook 64: the smallest unsigned type
    files = [("images", (f"{i}.png", png(im), "image/png")) for i, im in enumerate(images)]
    assert client.post("/encode", files=files).json()["tokens"] == tokens.tolist()
    as_json = client.post("/encode", content=npy(images), headers={"content-type": NPY}).json()
    assert as_json["tokens"] == tokens.tolist()


def test_npy_tokens_decode_to_npy_pixels_equal_to_the_pngs(client: TestClient) -> None:
    tokens = np.array([[1, 2, 3, 4, 5, 6, 7, 63], [0] * 8], dtype=np.int16)
    r = client.post("/decode", content=npy(tokens), headers={"content-type": NPY, "accept": NPY})
    assert r.status_code == 200, r.text
    pixels = np.load(io.BytesIO(r.content))
    assert pixels.dtype == np.uint8 and pixels.shape == (2, 32, 32, 3)
    as_json = client.post("/decode", content=npy(tokens), headers={"content-type": NPY}).json()
    assert len(as_json["images"]) == 2
    import base64

    pngs = [np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))) for b in as_json["images"]]
    assert np.array_equal(np.stack(pngs), pixels)
    from_json = client.post("/decode", json={"tokens": tokens.tolist()}, headers={"accept": NPY})
    assert np.array_equal(np.load(io.BytesIO(from_json.content)), pixels)


@pytest.mark.parametrize("accept", [f"{NPY};q=0, application/json", f"{NPY};q=0", f"application/json, {NPY};q=0.5"])
def test_an_accept_that_ranks_npy_below_json_or_refuses_it_gets_json(client: TestClient, images, accept) -> None:
    """Quality values were ignored: any mention of application/x-npy got .npy, even `q=0` (RFC 9110, 12.5.1)."""
    encoded = client.post("/encode", content=npy(images), headers={"content-type": NPY, "accept": accept})
    assert encoded.headers["content-type"] == "application/json" and len(encoded.json()["tokens"]) == 3
    decoded = client.post("/decode", json={"tokens": [[0] * 8, [1] * 8]}, headers={"accept": accept})
    assert decoded.headers["content-type"] == "application/json" and len(decoded.json()["images"]) == 2


@pytest.mark.parametrize(("path", "body", "status", "code", "words"), [
    ("/encode", npy(np.zeros((1, 32, 32, 3), np.float32)), 422, "invalid_array", "dtype float32"),
    ("/encode", npy(np.zeros((1, 64, 64, 3), np.uint8)), 422, "invalid_array", "shape (1, 64, 64, 3)"),
    ("/encode", npy(np.zeros((32, 32, 3), np.uint8)), 422, "invalid_array", "rank 3"),
    ("/encode", npy(np.zeros((5, 32, 32, 3), np.uint8)), 422, "too_many_images", "limit is 4"),
    ("/encode", npy(np.zeros((1, 32, 32, 3), np.uint8))[:-100], 400, "malformed_npy", "truncated"),
    ("/encode", npy(np.array([{}], dtype=object), allow_pickle=True), 400, "malformed_npy", "pickle"),
    ("/decode", npy(np.zeros((1, 8), np.float64)), 422, "invalid_array", "dtype float64"),
    ("/decode", npy(np.zeros((1, 9), np.int64)), 422, "invalid_array", "exactly 8 tokens"),
    ("/decode", npy(np.full((1, 8), 64, np.int64)), 422, "invalid_array", "[0, 64)"),
    ("/decode", npy(np.zeros((1, 8), np.int64))[:-3], 400, "malformed_npy", "truncated"),
    ("/decode", b"not numpy", 400, "malformed_npy", "not a .npy file"),
])
def test_bad_npy_bodies_are_4xx_naming_the_problem(client: TestClient, path, body, status, code, words) -> None:
    r = client.post(path, content=body, headers={"content-type": NPY, "accept": NPY})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and words in r.json()["error"]["message"]
    ok = client.post("/decode", content=npy(np.zeros((1, 8), np.int64)), headers={"content-type": NPY})
    assert ok.status_code == 200  # and the service keeps serving


def test_every_encode_answer_names_the_model_and_decode_accepts_it(client: TestClient, images, served_hash) -> None:
    r = client.post("/encode", content=npy(images[:1]), headers={"content-type": NPY})
    assert r.json()["content_hash"] == served_hash == r.headers["x-model-hash"]
    assert len(served_hash) == 64
    tokens = r.json()["tokens"]
    for request in ({"json": {"tokens": tokens, "content_hash": served_hash}},
                    {"json": {"tokens": tokens}, "headers": {"x-model-hash": served_hash}},
                    {"json": {"tokens": tokens[0], "content_hash": served_hash[:12].upper()}},
                    {"content": npy(np.array(tokens)), "headers": {"content-type": NPY, "x-model-hash": served_hash}}):
        answer = client.post("/decode", **request)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-model-hash"] == served_hash
    assert client.get("/info").json()["model"]["content_hash"] == served_hash
    assert f'content_hash="{served_hash}"' in client.get("/metrics").text


@pytest.mark.parametrize("claim", ["abc", "0123456789a", "not-a-hash-at-all", "zz" * 32, "0" * 65, "01234567 89ab"])
@pytest.mark.parametrize("where", ["json", "header"])
def test_a_claim_that_is_no_content_hash_is_a_422(client: TestClient, claim: str, where: str) -> None:
    tokens = [[1] * 8]
    request = {"json": {"tokens": tokens, "content_hash": claim}} if where == "json" else \
        {"json": {"tokens": tokens}, "headers": {"x-model-hash": claim}}
    r = client.post("/decode", **request)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request" and "not a content hash" in r.json()["error"]["message"]


@pytest.mark.parametrize("where", ["json", "header", "npy+header", "prefix"])
def test_tokens_from_another_model_are_refused_with_409_naming_both(client: TestClient, served_hash, where) -> None:
    other = "0123456789abcdef" * 4
    tokens = [[1] * 8]
    request = {"json": {"tokens": tokens, "content_hash": other}} if where == "json" else \
        {"json": {"tokens": tokens}, "headers": {"x-model-hash": other}} if where == "header" else \
        {"content": npy(np.array(tokens)), "headers": {"content-type": NPY, "x-model-hash": other}} \
        if where == "npy+header" else {"json": {"tokens": tokens, "content_hash": other[:12]}}
    r = client.post("/decode", **request)
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "model_mismatch" and served_hash in error["message"] and "test-tiny" in error["message"]
    assert (other[:12] if where == "prefix" else other) in error["message"]


def test_model_answers_say_where_their_time_went(client: TestClient, images) -> None:
    for r in (client.post("/encode", content=npy(images), headers={"content-type": NPY}),
              client.post("/encode", files=[("images", ("a.png", png(images[0]), "image/png"))]),
              client.post("/decode", json={"tokens": [1] * 8}),
              client.post("/decode", content=npy(np.zeros((2, 8), np.int64)), headers={"content-type": NPY})):
        assert r.status_code == 200, r.text
        h = r.headers
        queue, model, total = (float(h[k]) for k in ("x-queue-time-ms", "x-inference-time-ms", "x-total-time-ms"))
        assert 0 <= queue <= total and 0 < model <= total
        # one request alone on an idle batcher (delay 0): its items spread over the two idle model workers
        items = 3 if r.request.url.path == "/encode" and r.request.headers["content-type"] == NPY else \
            2 if r.request.headers["content-type"] == NPY else 1
        assert h["x-batch-size"] == {3: "2, 1", 2: "1, 1", 1: "1"}[items]
        timing = dict(part.strip().split(";dur=") for part in h["server-timing"].split(","))
        assert set(timing) == {"codec", "queue", "model", "total"}
        assert float(timing["model"]) == model and float(timing["total"]) == total


def test_quality_encode_returns_the_psnr_of_each_round_trip(client: TestClient, images) -> None:
    r = client.post("/encode?quality=true", content=npy(images), headers={"content-type": NPY})
    assert r.status_code == 200, r.text
    body = r.json()
    plain = client.post("/encode", content=npy(images), headers={"content-type": NPY}).json()
    assert body["tokens"] == plain["tokens"] and "psnr" not in plain
    decoded = client.post("/decode", content=npy(np.array(body["tokens"])),
                          headers={"content-type": NPY, "accept": NPY})
    recon = np.load(io.BytesIO(decoded.content)).astype(np.float64)
    mse = ((recon - images.astype(np.float64)) ** 2).reshape(3, -1).mean(1)
    assert body["psnr"] == pytest.approx(10 * np.log10(255.0**2 / mse), abs=1e-3)
    as_npy = client.post("/encode?quality=true", content=npy(images), headers={"content-type": NPY, "accept": NPY})
    assert [float(p) for p in as_npy.headers["x-psnr"].split(",")] == pytest.approx(body["psnr"], abs=1e-3)
    assert np.load(io.BytesIO(as_npy.content)).tolist() == body["tokens"]
    assert 'titok_batch_size_count{op="roundtrip"}' in client.get("/metrics").text


def test_the_openapi_document_lists_the_npy_formats_and_the_409(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    encode, decode = paths["/encode"]["post"], paths["/decode"]["post"]
    assert NPY in encode["requestBody"]["content"] and NPY in encode["responses"]["200"]["content"]
    assert NPY in decode["requestBody"]["content"] and NPY in decode["responses"]["200"]["content"]
    assert "409" in decode["responses"] and "X-Model-Hash" in encode["responses"]["200"]["headers"]
    assert all({"408", "413", "499", "503", "504"} <= set(op["responses"]) for op in (encode, decode))  # body timeout
    assert any(p["name"] == "quality" for p in encode["parameters"])
    assert json.dumps(decode["requestBody"]).count("content_hash") >= 1


def test_a_huge_hash_claim_is_refused_without_being_echoed_whole(client: TestClient) -> None:
    r = client.post("/decode", json={"tokens": [1] * 8, "content_hash": "ab" * 5000})
    assert r.status_code == 422 and len(r.json()["error"]["message"]) < 600


@given(body=npy_files())
@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_npy_header_is_answered_with_a_2xx_or_a_4xx(client: TestClient, body: bytes) -> None:
    for path in ("/encode", "/decode"):
        r = client.post(path, content=body, headers={"content-type": NPY, "accept": NPY})
        assert r.status_code < 500, r.text
        assert r.status_code < 300 or r.json()["error"]["code"] in ("malformed_npy", "invalid_array",
                                                                      "too_many_images", "invalid_tokens")
