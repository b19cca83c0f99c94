"""Every bad input of the issue, one by one: each gets its 4xx with a message, and the next good request works."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sample_images import all_formats, header_only_png, save

PNG = all_formats()["png"]


def noise(fmt: str) -> bytes:
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return save(Image.fromarray(pixels), fmt)


def chunks(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """A body without Content-Length (chunked): the limit must hold while streaming too."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


TEN_MILLION = b'{"tokens": [' + b"0," * (10_000_000 - 1) + b"0]}"
OVER_UPLOAD_LIMIT = noise("BMP") * 30  # ~370 KB > the test limit of 256 KiB

# (name, path, request kwargs, status, error code, words in the message)
CASES: list[tuple[str, str, dict[str, Any], int, str, str]] = [
    ("empty body", "/encode", {"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty_body", "empty"),
    ("empty body, no type", "/encode", {"content": b""}, 400, "empty_body", "empty"),
    ("zero-byte file", "/encode", {"files": [("images", ("a.png", b"", "image/png"))]}, 400, "invalid_image",
     "images[0]: the image is empty"),
    ("text labelled as PNG", "/encode", {"content": b"just some text", "headers": {"content-type": "image/png"}},
     400, "invalid_image", "not an image in a supported format"),
    ("truncated PNG", "/encode", {"files": [("images", ("ok.png", PNG, "image/png")),
                                           ("images", ("t.png", noise("PNG")[:3000], "image/png"))]},
     400, "invalid_image", "images[1]: the PNG image could not be decoded"),
    ("truncated JPEG", "/encode", {"content": noise("JPEG")[:1500], "headers": {"content-type": "image/jpeg"}},
     400, "invalid_image", "truncated"),
    ("30000 x 30000 bomb", "/encode", {"content": header_only_png(30000, 30000),  # read from the IHDR: exact
                                       "headers": {"content-type": "image/png"}}, 413, "image_too_large",
     "30000 x 30000 = 900000000 pixels; the limit is 50000000"),
    ("8000 x 8000 over the pixel limit", "/encode", {"content": header_only_png(8000, 8000),
                                                     "headers": {"content-type": "image/png"}},
     413, "image_too_large", "64000000 pixels; the limit is 50000000"),
    ("body over the upload limit", "/encode", {"content": OVER_UPLOAD_LIMIT, "headers": {"content-type": "image/bmp"}},
     413, "payload_too_large", "over the limit of 262144 bytes"),
    ("chunked body over the upload limit", "/encode",
     {"content": chunks(OVER_UPLOAD_LIMIT), "headers": {"content-type": "image/bmp"}},
     413, "payload_too_large", "over the limit"),
    ("more images than allowed", "/encode", {"files": [("images", (f"{i}.png", PNG, "image/png")) for i in range(5)]},
     422, "too_many_images", "5 images in one request; the limit is 4"),
    ("no part named images", "/encode", {"files": [("photo", ("a.png", PNG, "image/png"))]}, 400, "empty_body",
     "the form's parts are named 'photo'; send the images as parts named 'images'"),
    ("multipart without its closing boundary", "/encode",  # was "no images: send ... parts named 'images'"
     {"content": b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\n' + PNG + b"\r\n",
      "headers": {"content-type": "multipart/form-data; boundary=b"}},
     400, "bad_request", "the multipart body holds no complete part: check that the boundary in Content-Type"),
    ("images part is text", "/encode", {"data": {"images": "hello"},
                                              "files": [("other", ("a.png", PNG, "image/png"))]},
     400, "invalid_image", "not a file"),
    ("wrong content type on /encode", "/encode", {"content": b"{}", "headers": {"content-type": "application/json"}},
     415, "unsupported_media_type", "'application/json' is not supported"),
    ("wrong content type on /decode", "/decode", {"content": b"0 1 2", "headers": {"content-type": "text/plain"}},
     415, "unsupported_media_type", "send application/json"),
    ("malformed JSON", "/decode", {"content": b'{"tokens": [1, 2', "headers": {"content-type": "application/json"}},
     400, "malformed_json", "not valid JSON"),
    ("empty JSON body", "/decode", {"content": b"", "headers": {"content-type": "application/json"}},
     400, "malformed_json", "empty"),
    ("a JSON field given twice", "/decode", {"content": b'{"tokens": [0, 0, 0, 0, 0, 0, 0, 0], "tokens": [1]}',
                                             "headers": {"content-type": "application/json"}},
     400, "malformed_json", "the body names 'tokens' twice; send each field once"),
    ("content_hash given twice", "/decode", {"content": b'{"tokens": [0, 0, 0, 0, 0, 0, 0, 0], '
                                                                b'"content_hash": "ab", "content_hash": "cd"}',
                                                     "headers": {"content-type": "application/json"}},
     400, "malformed_json", "names 'content_hash' twice"),
    ("tokens missing", "/decode", {"json": {"ids": [0] * 8}}, 422, "invalid_tokens", '"tokens" field'),
    ("too few tokens", "/decode", {"json": {"tokens": [0] * 7}}, 422, "invalid_tokens", "has 7 tokens"),
    ("too many tokens", "/decode", {"json": {"tokens": [0] * 9}}, 422, "invalid_tokens", "exactly 8"),
    ("token out of range", "/decode", {"json": {"tokens": [0] * 7 + [64]}}, 422, "invalid_tokens", "[0, 64)"),
    ("4300-digit token", "/decode", {"content": b'{"tokens": [' + b"9" * 4300 + b", 0, 0, 0, 0, 0, 0, 0]}",
                                    "headers": {"content-type": "application/json"}},
     422, "invalid_tokens", "99999999999999999999... (4300 digits); token ids must be in [0, 64)"),
    ("4301-digit token", "/decode", {"content": b'{"tokens": [' + b"9" * 4301 + b"]}",
                                    "headers": {"content-type": "application/json"}},
     422, "invalid_tokens", "over 4300 digits; token ids must be in [0, 64)"),
    ("5000-digit token in a nested list", "/decode",
     {"content": b'{"tokens": [[1, -' + b"1" * 5000 + b"]]}", "headers": {"content-type": "application/json"}},
     422, "invalid_tokens", "over 4300 digits"),
    ("negative token", "/decode", {"json": {"tokens": [-1] + [0] * 7}}, 422, "invalid_tokens", "is -1"),
    ("float token", "/decode", {"json": {"tokens": [1.5] + [0] * 7}}, 422, "invalid_tokens", "1.5, not an integer"),
    ("bool token", "/decode", {"json": {"tokens": [True] + [0] * 7}}, 422, "invalid_tokens", "true, not an integer"),
    ("string token", "/decode", {"json": {"tokens": ["3"] + [0] * 7}}, 422, "invalid_tokens", "not an integer"),
    ("tokens not a list", "/decode", {"json": {"tokens": "0 1 2 3 4 5 6 7"}}, 422, "invalid_tokens", "must be a list"),
    ("ragged sequences", "/decode", {"json": {"tokens": [[0] * 8, [0] * 3]}}, 422, "invalid_tokens",
     "tokens[1] has 3 tokens"),
    ("too many sequences", "/decode", {"json": {"tokens": [[0] * 8] * 5}}, 422, "too_many_images", "limit is 4"),
    ("a query parameter /decode does not take", "/decode?quality=true", {"json": {"tokens": [0] * 8}},
     422, "invalid_request", "/decode does not take the query parameter(s) quality; it takes none"),
    ("a query parameter /encode does not take", "/encode?size=64&resize=pad", {"content": PNG,
                                                                              "headers": {"content-type": "image/png"}},
     422, "invalid_request",
     "does not take the query parameter(s) size; it takes num_tokens, quality, resize, target_psnr"),
    ("a query parameter /ui/input does not take", "/ui/input?quality=true", {"content": PNG},
     422, "invalid_request", "/ui/input does not take the query parameter(s) quality; it takes resize"),
    ("a query parameter given twice", "/encode?resize=pad&quality=0&resize=crop&quality=1",
     {"content": PNG, "headers": {"content-type": "image/png"}},
     422, "invalid_request", "the query parameter(s) quality, resize are given more than once; give each once"),
    ("10-million-element token list", "/decode", {"content": TEN_MILLION,
                                                  "headers": {"content-type": "application/json"}},
     422, "invalid_tokens", "token list is too long"),
    ("10-million-element token list, chunked", "/decode",
     {"content": chunks(TEN_MILLION), "headers": {"content-type": "application/json"}},
     422, "invalid_tokens", "token list is too long"),
]


@pytest.mark.parametrize("name, path, kwargs, status, code, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_its_4xx_and_the_service_still_answers(
        client: TestClient, name: str, path: str, kwargs: dict[str, Any], status: int, code: str, words: str) -> None:
    kwargs = dict(kwargs)
    r = client.post(path, headers={"X-Request-ID": "bad-1", **kwargs.pop("headers", {})}, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["request_id"] == "bad-1"
    assert words in error["message"], error["message"]
    good = client.post("/encode", content=PNG, headers={"content-type": "image/png"})
    assert good.status_code == 200 and len(good.json()["tokens"][0]) == 8
    assert client.post("/decode", json={"tokens": [1] * 8}).status_code == 200
