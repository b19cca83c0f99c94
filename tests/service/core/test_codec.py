"""Codec: every format and pixel layout to RGB, resizing, the bomb guard, token validation, PNG output."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from sample_images import (
    BLUE,
    RED,
    all_formats,
    animated_gif,
    exif_rotated_jpeg,
    header_only_png,
    save,
    solid,
    two_halves,
)

from service.core.codec import encode_png, load_image, parse_tokens
from service.errors import ImageTooLarge, InvalidImage, InvalidTokens, MalformedJSON, TooManyImages, answer


def close_to(pixel: np.ndarray, colour: tuple[int, int, int], tol: int = 12) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(colour)) <= tol))


@pytest.mark.parametrize("name", ["png", "jpeg", "webp", "gif", "bmp", "tiff", "palette", "cmyk"])
def test_every_format_decodes_to_rgb_at_the_model_size(name: str) -> None:
    out = load_image(all_formats()[name], 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert close_to(out[16, 16], RED), out[16, 16]


def test_grey_becomes_three_equal_channels() -> None:
    out = load_image(all_formats()["grey"], 32)
    assert out.shape == (32, 32, 3) and np.all(out[..., 0] == out[..., 1]) and np.all(out[..., 1] == out[..., 2])


def test_transparent_areas_become_white() -> None:
    clear = save(Image.new("RGBA", (40, 40), (0, 0, 0, 0)), "PNG")
    assert np.all(load_image(clear, 32) == 255)
    assert close_to(load_image(all_formats()["rgba"], 32)[5, 5], RED, 0)


def test_sixteen_bit_samples_are_scaled_not_clipped() -> None:
    out = load_image(all_formats()["sixteen_bit"], 32)  # 32768 of 65535: mid grey, not white
    assert abs(int(out[0, 0, 0]) - 128) <= 1


def test_gif_gives_its_first_frame() -> None:
    assert close_to(load_image(animated_gif(), 32)[10, 10], RED, 30)


def test_exif_orientation_is_honoured() -> None:
    # Displayed as portrait (32 wide, 64 high): padding puts black columns left and right.
    rotated = load_image(exif_rotated_jpeg(), 32, resize="pad")
    assert np.all(rotated[:, 0] < 10) and not np.all(rotated[0] < 10)
    plain = load_image(save(two_halves(), "JPEG", quality=95), 32, resize="pad")
    assert np.all(plain[0] < 10) and not np.all(plain[:, 0] < 10)


def test_resize_modes() -> None:
    data = save(two_halves(128, 64), "PNG")
    crop = load_image(data, 32, "crop")  # the centre square: still half red, half blue
    assert close_to(crop[16, 2], RED) and close_to(crop[16, 29], BLUE)
    pad = load_image(data, 32, "pad")  # 32 x 16 in the middle, black above and below
    assert np.all(pad[:7] == 0) and np.all(pad[-7:] == 0) and close_to(pad[16, 2], RED)
    stretch = load_image(data, 32, "stretch")
    assert close_to(stretch[0, 2], RED) and close_to(stretch[31, 29], BLUE)


def test_large_photo_shrinks() -> None:
    assert load_image(save(solid(BLUE, (3000, 2000)), "JPEG"), 32).shape == (32, 32, 3)


def truncated(fmt: str) -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = save(Image.fromarray(noise), fmt)
    return data[: len(data) // 2]


@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (b"hello, I am text pretending to be a PNG", "not a decodable image"),
    (save(solid(), "PNG")[:30], "not a decodable image"),
    (truncated("PNG"), "truncated"),
    (truncated("JPEG"), "truncated"),
    (save(solid(), "ICO"), "supported formats"),
])
def test_undecodable_input_is_refused(data: bytes, words: str) -> None:
    with pytest.raises(InvalidImage, match=words):
        load_image(data, 32)


@pytest.mark.parametrize("w, h", [(30000, 30000), (8000, 8000)])
def test_decompression_bombs_are_refused_from_the_header(w: int, h: int) -> None:
    data = header_only_png(w, h)
    assert len(data) < 1000
    with pytest.raises(ImageTooLarge) as refused:  # junk pixel data: decoding it would say "invalid" instead
        load_image(data, 32, max_pixels=50_000_000)
    assert answer(refused.value)[0] == 413


def tokens_body(tokens) -> bytes:
    return json.dumps({"tokens": tokens}).encode()


def test_tokens_parse_flat_and_nested() -> None:
    arr, nested, claimed = parse_tokens(tokens_body([1, 2, 3, 4]), 4, 8, 16)
    assert not nested and arr.tolist() == [[1, 2, 3, 4]] and arr.dtype == np.int64 and claimed is None
    arr, nested, claimed = parse_tokens(json.dumps({"tokens": [[1, 2, 3, 4], [0, 0, 0, 7]],
                                                    "content_hash": "abc"}).encode(), 4, 8, 16)
    assert nested and arr.shape == (2, 4) and claimed == "abc"
    # JSON (and JSON Schema, which the OpenAPI schema uses) has one number type: 3.0 is the integer 3.
    arr, _, _ = parse_tokens(b'{"tokens": [1, 2.0, 3.0e0, 4]}', 4, 8, 16)
    assert arr.tolist() == [[1, 2, 3, 4]] and arr.dtype == np.int64


@pytest.mark.parametrize("tokens, words", [
    ([1, 2, 3], "has 3 tokens; the model takes exactly 4"),
    ([1, 2, 3, 8], r"tokens\[3\] is 8; token ids must be in \[0, 8\)"),
    ([1, 2, 3, -1], r"tokens\[3\] is -1"),
    ([1, 2, 1.5, 0], r"tokens\[2\] is 1.5, not an integer"),
    ([1, 2, 2e3, 0], r"tokens\[2\] is 2000; token ids must be in"),
    ([1, True, 2, 0], r"tokens\[1\] is true, not an integer"),
    ([1, "2", 2, 0], r"tokens\[1\] is \"2\", not an integer"),
    ([1, None, 2, 0], r"tokens\[1\] is null"),
    ("1234", "must be a list"),
    (7, "must be a list"),
    ({"a": 1}, "must be a list"),
    ([], "empty"),
    ([[1, 2, 3, 4], 5], r"tokens\[1\] is a number"),
    ([[1, 2, 3, 4], [1, 2]], r"tokens\[1\] has 2 tokens"),
    ([10**30, 0, 0, 0], "token ids must be in"),
])
def test_bad_token_lists_name_the_problem(tokens, words: str) -> None:
    with pytest.raises(InvalidTokens, match=words):
        parse_tokens(tokens_body(tokens), 4, 8, 16)


def test_token_bodies_that_are_not_token_requests() -> None:
    with pytest.raises(MalformedJSON):
        parse_tokens(b'{"tokens": [1, 2,', 4, 8, 16)
    with pytest.raises(MalformedJSON):
        parse_tokens(b"[" * 100_000, 4, 8, 16)
    with pytest.raises(InvalidTokens, match='"tokens" field'):
        parse_tokens(b"[1, 2, 3, 4]", 4, 8, 16)
    with pytest.raises(TooManyImages):
        parse_tokens(tokens_body([[0] * 4] * 17), 4, 8, 16)
    with pytest.raises(InvalidTokens, match="content_hash must be a string"):
        parse_tokens(b'{"tokens": [1, 2, 3, 4], "content_hash": 7}', 4, 8, 16)


def test_png_round_trip() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for level in (0, 1, 9):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(pixels, level)))), pixels)
