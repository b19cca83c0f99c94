"""Token budgets over HTTP (issue #20): /encode's num_tokens and target_psnr, ragged /decode, and every bad input.

The toy prefix model (prefix_helpers) has a PSNR that rises strictly with k, so the fewest tokens reaching a
target is found here by brute force and compared with the service's answer.
"""

from __future__ import annotations

import base64
import io
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from prefix_helpers import (  # noqa: F401  (prefix_artifact, tiny_prefix_artifact: fixtures)
    K,
    banded_images,
    prefix_artifact,
    psnr_by_k,
    tiny_prefix_artifact,
)
from service_helpers import make_settings

from titok.core.arrays import NPY, read_npy, write_npy
from titok.core.budgets import MAX_TARGET_PSNR, max_search_decodes
from titok.core.engine import Engine, psnr
from titok.server.app import build_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def prefix_client(prefix_artifact: Path) -> Iterator[TestClient]:  # noqa: F811
    with TestClient(build_app(make_settings(prefix_artifact, max_batch_size=4)), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def engine(prefix_artifact: Path) -> Iterator[Engine]:  # noqa: F811
    eng = Engine.load(prefix_artifact, "cpu", "float32")
    yield eng
    eng.close()


def encode(client: TestClient, images: np.ndarray, accept: str = "application/json", **params: Any) -> Any:
    return client.post("/encode", params=params, content=write_npy(images),
                       headers={"Content-Type": NPY, "Accept": accept})


def test_num_tokens_returns_each_images_first_k_tokens(prefix_client: TestClient, engine: Engine) -> None:
    images = banded_images(3)
    full = engine.run("encode", images)
    for k in (1, 3, K):
        r = encode(prefix_client, images, num_tokens=k)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["num_tokens"] == k
        assert body["tokens"] == full[:, :k].tolist()
        assert "target_psnr" not in body and "reached" not in body
    plain = encode(prefix_client, images).json()
    assert plain["num_tokens"] == K and plain["tokens"] == full.tolist()


def test_num_tokens_with_quality_gives_the_psnr_of_the_prefix(prefix_client: TestClient, engine: Engine) -> None:
    images = banded_images(2, seed=3)
    body = encode(prefix_client, images, num_tokens=5, quality="true").json()
    assert body["psnr"] == pytest.approx([psnr_by_k(engine, im)[4] for im in images], abs=1e-3)


def test_num_tokens_as_npy_is_a_b_by_k_array(prefix_client: TestClient, engine: Engine) -> None:
    images = banded_images(3)
    r = encode(prefix_client, images, accept=NPY, num_tokens=2)
    assert r.status_code == 200 and r.headers["content-type"] == NPY
    got = read_npy(r.content)
    assert got.shape == (3, 2) and got.tolist() == engine.run("encode", images)[:, :2].tolist()


def test_target_psnr_gives_each_image_the_fewest_tokens_that_reach_it(prefix_client: TestClient,
                                                                        engine: Engine) -> None:
    images = banded_images(4, seed=7)
    curves = [psnr_by_k(engine, im) for im in images]
    full = engine.run("encode", images)
    for target in (9.0, 10.5, 12.0, 15.0, 30.0):
        r = encode(prefix_client, images, target_psnr=target)
        assert r.status_code == 200, r.text
        body = r.json()
        expected = [next(k for k in range(1, K + 1) if curve[k - 1] >= target) for curve in curves]
        assert body["num_tokens"] == expected, target
        assert [len(t) for t in body["tokens"]] == expected
        assert body["tokens"] == [full[i, :k].tolist() for i, k in enumerate(expected)]
        assert body["psnr"] == pytest.approx([c[k - 1] for c, k in zip(curves, expected, strict=True)], abs=1e-3)
        assert all(p >= target for p in body["psnr"])
        assert body["reached"] == [True] * 4 and body["target_psnr"] == target


def test_an_image_that_misses_the_target_keeps_k_tokens_and_is_flagged(prefix_client: TestClient,
                                                                        engine: Engine) -> None:
    images = banded_images(2, seed=11)
    curves = [psnr_by_k(engine, im) for im in images]
    target = (curves[0][-1] + curves[1][-1]) / 2  # between the two images' best: one reaches it, one does not
    body = encode(prefix_client, images, target_psnr=target).json()
    hit = [c[-1] >= target for c in curves]
    assert body["reached"] == hit and sorted(hit) == [False, True]
    missed = hit.index(False)
    assert body["num_tokens"][missed] == K and len(body["tokens"][missed]) == K
    assert body["psnr"][missed] == pytest.approx(curves[missed][-1], abs=1e-3)


def test_target_psnr_is_deterministic_and_costs_at_most_log2_k_plus_1_decodes(prefix_client: TestClient) -> None:
    images = banded_images(4, seed=5)
    first = encode(prefix_client, images, target_psnr=11.0)
    again = encode(prefix_client, images, target_psnr=11.0)
    assert first.json() == again.json()
    # Each image: the roundtrip (encode + decode at K), then one decode per search round; the batches they ran in
    # (X-Batch-Size, one size per model call, this request alone here) hold each of those items once.
    trips = first.headers["X-Batch-Size"].split(", ")
    assert sum(int(b) for b in trips) <= len(images) * max_search_decodes(K)
    assert max_search_decodes(K) == math.ceil(math.log2(K)) + 1 == 4


def test_ragged_decode_of_a_prefix_model(prefix_client: TestClient, engine: Engine) -> None:
    images = banded_images(3, seed=2)
    full = engine.run("encode", images)
    sequences = [full[0, :2].tolist(), full[1].tolist(), full[2, :5].tolist()]
    r = prefix_client.post("/decode", json={"tokens": sequences})
    assert r.status_code == 200, r.text
    pngs = [np.asarray(Image.open(io.BytesIO(base64.b64decode(p)))) for p in r.json()["images"]]
    for got, seq in zip(pngs, sequences, strict=True):
        assert np.array_equal(got, engine.run("decode", np.array([seq]))[0])
    one = prefix_client.post("/decode", json={"tokens": full[0, :1].tolist()})
    assert one.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(one.content))), engine.run("decode", full[:1, :1])[0])
    npy = prefix_client.post("/decode", content=write_npy(full[:, :3]), headers={"Content-Type": NPY, "Accept": NPY})
    assert npy.status_code == 200 and np.array_equal(read_npy(npy.content), engine.run("decode", full[:, :3]))


def test_info_and_openapi_say_the_model_is_prefix_decodable_with_the_bounds(prefix_client: TestClient) -> None:
    assert prefix_client.get("/info").json()["model"]["prefix_decodable"] is True
    params = {p["name"]: p for p in prefix_client.get("/openapi.json").json()["paths"]["/encode"]["post"]["parameters"]}
    assert params["num_tokens"]["schema"] == {"type": "integer", "minimum": 1, "maximum": K}
    assert params["target_psnr"]["schema"] == {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TARGET_PSNR}
    decode = prefix_client.get("/openapi.json").json()["paths"]["/decode"]["post"]["requestBody"]["content"]
    one = decode["application/json"]["schema"]["properties"]["tokens"]["anyOf"][0]
    assert (one["minItems"], one["maxItems"]) == (1, K)


def test_a_fixed_length_models_schema_has_no_budgets(client: TestClient) -> None:
    assert client.get("/info").json()["model"]["prefix_decodable"] is False
    params = client.get("/openapi.json").json()["paths"]["/encode"]["post"].get("parameters", [])
    assert {p["name"] for p in params} >= {"resize", "quality"}
    assert not {p["name"] for p in params} & {"num_tokens", "target_psnr"}


def test_metrics_count_tokens_per_image_and_decode_lengths(prefix_client: TestClient) -> None:
    images = banded_images(2)
    encode(prefix_client, images, num_tokens=3)
    prefix_client.post("/decode", json={"tokens": [[1, 2], [3, 4, 5, 6, 7]]})
    text = prefix_client.get("/metrics").text
    assert 'titok_encode_tokens_per_image_bucket{le="4.0"}' in text
    count = float(next(line.split()[-1] for line in text.splitlines()
                       if line.startswith('titok_decode_tokens_per_item_bucket{le="2.0"}')))
    assert count >= 1


# Bad input: each a 4xx naming what is allowed; the service keeps serving.
PREFIX_CASES: list[tuple[str, dict[str, Any], str, int, str, str]] = [
    ("num_tokens 0", {"num_tokens": "0"}, "json", 422, "invalid_budget", f"it must be in [1, {K}]"),
    ("num_tokens K+1", {"num_tokens": str(K + 1)}, "json", 422, "invalid_budget", f"it must be in [1, {K}]"),
    ("num_tokens a float", {"num_tokens": "2.5"}, "json", 422, "invalid_budget", f"an integer in [1, {K}]"),
    ("num_tokens a word", {"num_tokens": "all"}, "json", 422, "invalid_budget", f"an integer in [1, {K}]"),
    ("num_tokens a list", {"num_tokens": ["1", "2"]}, "json", 422, "invalid_budget", "given 2 times"),
    ("both budgets", {"num_tokens": "2", "target_psnr": "20"}, "json", 422, "invalid_budget", "not both"),
    ("negative target", {"target_psnr": "-3"}, "json", 422, "invalid_budget", "(0, 100]"),
    ("zero target", {"target_psnr": "0"}, "json", 422, "invalid_budget", "(0, 100]"),
    ("NaN target", {"target_psnr": "nan"}, "json", 422, "invalid_budget", "finite number of dB in (0, 100]"),
    ("infinite target", {"target_psnr": "inf"}, "json", 422, "invalid_budget", "(0, 100]"),
    ("absurd target", {"target_psnr": "1e6"}, "json", 422, "invalid_budget", "(0, 100]"),
    ("target a word", {"target_psnr": "high"}, "json", 422, "invalid_budget", "(0, 100]"),
    ("num_tokens with a digit separator", {"num_tokens": "1_0"}, "json", 422, "invalid_budget", "an integer in"),
    ("num_tokens with spaces", {"num_tokens": " 2"}, "json", 422, "invalid_budget", "an integer in"),
    ("num_tokens in other digits", {"num_tokens": "\u0663"}, "json", 422, "invalid_budget", "an integer in"),
    ("target with a digit separator", {"target_psnr": "2_0"}, "json", 422, "invalid_budget", "(0, 100]"),
    ("target with spaces", {"target_psnr": "20 "}, "json", 422, "invalid_budget", "(0, 100]"),
    ("target as .npy", {"target_psnr": "20"}, "npy", 406, "not_acceptable", "ask for JSON"),
]


@pytest.mark.parametrize(("name", "params", "accept", "status", "code", "words"), PREFIX_CASES,
                         ids=[c[0] for c in PREFIX_CASES])
def test_bad_budgets_are_refused(prefix_client: TestClient, name: str, params: dict[str, Any], accept: str,
                                 status: int, code: str, words: str) -> None:
    r = encode(prefix_client, banded_images(1), accept=NPY if accept == "npy" else "application/json", **params)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert words in r.json()["error"]["message"]
    assert encode(prefix_client, banded_images(1), num_tokens=2).status_code == 200  # still serving


@pytest.mark.parametrize(("body", "ctype", "status", "words"), [
    ({"tokens": list(range(K + 1))}, "json", 422, f"the model takes 1 to {K}"),
    ({"tokens": [[1, 2], list(range(K + 1))]}, "json", 422, f"tokens[1] has {K + 1} tokens; the model takes 1 to {K}"),
    ({"tokens": []}, "json", 422, "empty"),
    ({"tokens": [[1], []]}, "json", 422, "tokens[1] has 0 tokens"),
    (np.zeros((2, K + 1), np.int64), "npy", 422, f"1 to {K} tokens"),
    (np.array([np.array([1, 2]), np.array([1])], dtype=object), "npy", 400, "Python objects"),
], ids=["one too long", "one of several too long", "empty", "an empty one", "npy too wide", "ragged npy"])
def test_bad_prefixes_are_refused(prefix_client: TestClient, body: Any, ctype: str, status: int, words: str) -> None:
    if ctype == "json":
        r = prefix_client.post("/decode", json=body)
    else:
        data = _object_npy(body) if body.dtype == object else write_npy(body)
        r = prefix_client.post("/decode", content=data, headers={"Content-Type": NPY})
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]
    assert prefix_client.post("/decode", json={"tokens": [1, 2]}).status_code == 200


def _object_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


@pytest.mark.parametrize(("params", "code", "words"), [
    ({"num_tokens": "4"}, "not_prefix_decodable", "num_tokens needs a prefix-decodable model"),
    ({"target_psnr": "20"}, "not_prefix_decodable", "target_psnr needs a prefix-decodable model"),
    # any value, in range or not, well-formed or not: the model takes no budget at all, so no range is named
    ({"num_tokens": "99"}, "not_prefix_decodable", "num_tokens needs a prefix-decodable model"),
    ({"num_tokens": "abc"}, "not_prefix_decodable", "num_tokens needs a prefix-decodable model"),
    ({"target_psnr": "nan"}, "not_prefix_decodable", "target_psnr needs a prefix-decodable model"),
])
def test_a_fixed_length_model_refuses_budgets_saying_why(client: TestClient, params: dict[str, str], code: str,
                                                         words: str) -> None:
    images = np.zeros((1, 32, 32, 3), np.uint8)
    r = client.post("/encode", params=params, content=write_npy(images), headers={"Content-Type": NPY})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code and words in r.json()["error"]["message"]
    assert "exactly 8 tokens per image" in r.json()["error"]["message"] and "[1, 8]" not in r.json()["error"]["message"]
    assert client.post("/encode", content=write_npy(images), headers={"Content-Type": NPY}).status_code == 200


def test_a_fixed_length_model_refuses_short_sequences_saying_why(client: TestClient) -> None:
    r = client.post("/decode", json={"tokens": [1, 2, 3]})
    assert r.status_code == 422
    assert "exactly 8" in r.json()["error"]["message"] and "not prefix-decodable" in r.json()["error"]["message"]
    r = client.post("/decode", content=write_npy(np.zeros((1, 3), np.int64)), headers={"Content-Type": NPY})
    assert r.status_code == 422 and "exactly 8" in r.json()["error"]["message"]


def test_a_real_exported_prefix_model_end_to_end(tiny_prefix_artifact: Path) -> None:  # noqa: F811
    # Random weights: PSNR need not rise with k, so the answer is checked for consistency, not minimality.
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    eng = Engine.load(tiny_prefix_artifact, "cpu", "float32")  # the app's dtype (make_settings): the same figures
    try:
        assert eng.prefix_decodable
        full = eng.run("encode", images)
        with TestClient(build_app(make_settings(tiny_prefix_artifact)), raise_server_exceptions=False) as c:
            assert encode(c, images, num_tokens=3).json()["tokens"] == full[:, :3].tolist()
            target = float(np.median(psnr(eng.run("decode", full), images)))
            body = encode(c, images, target_psnr=target).json()
            for i, k in enumerate(body["num_tokens"]):
                measured = float(psnr(eng.run("decode", full[i:i + 1, :k]), images[i:i + 1])[0])
                assert body["tokens"][i] == full[i, :k].tolist()
                assert body["psnr"][i] == pytest.approx(measured, abs=1e-3)
                assert body["reached"][i] == (measured >= target)
                assert body["reached"][i] or k == K
            r = c.post("/decode", json={"tokens": [full[0, :1].tolist(), full[1].tolist()]})
            assert r.status_code == 200 and len(r.json()["images"]) == 2
    finally:
        eng.close()
