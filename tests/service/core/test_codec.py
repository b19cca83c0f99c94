"""Codec: every format and pixel layout to RGB, resizing, the bomb guard, token validation, PNG output."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
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

from titok.core.codec import (
    MAX_JPEG_SCAN_PIXELS,
    MAX_JPEG_SEGMENTS,
    MAX_TIFF_STRIPS,
    encode_png,
    fit,
    gif_size,
    jpeg_size,
    load_image,
    load_image_sized,
    orientation,
    parse_tokens,
    pixel_count,
    tiff_size,
    to_uint8,
    upright,
)
from titok.errors import ImageTooLarge, InvalidImage, InvalidTokens, MalformedJSON, TooManyImages, answer


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


def big_metadata() -> dict[str, bytes]:
    """Red images whose metadata Pillow refuses or cannot parse, though their pixels decode (issue 21, item 8)."""
    img = solid(RED, (16, 8))
    long_text = PngImagePlugin.PngInfo()
    long_text.add_text("comment", "x" * 2_000_000, zip=True)
    long_itxt = PngImagePlugin.PngInfo()
    long_itxt.add_itxt("comment", "x" * 2_000_000, zip=True)
    icc = np.random.default_rng(1).integers(0, 256, 1_200_000, np.uint8).tobytes()  # incompressible: 1.2 MB
    return {
        "png_icc_1_2_mb": save(img, "PNG", icc_profile=icc),
        "png_ztxt_2_mb": save(img, "PNG", pnginfo=long_text),
        "png_itxt_2_mb": save(img, "PNG", pnginfo=long_itxt),
        "png_junk_exif": save(img, "PNG", exif=b"\xff" * 40),
        "webp_junk_exif": save(img, "WEBP", exif=b"Exif\x00\x00\xff\xff", lossless=True),
        "jpeg_icc_1_2_mb": save(img, "JPEG", icc_profile=icc, quality=95),
        "webp_icc_1_2_mb": save(img, "WEBP", icc_profile=icc, lossless=True),
    }


@pytest.mark.parametrize("name", list(big_metadata()))
def test_metadata_the_codec_does_not_use_never_refuses_an_image(name: str) -> None:
    out, w, h = load_image_sized(big_metadata()[name], 8, "stretch")
    assert close_to(out[4, 4], RED, 2) and (w, h) == (16, 8)


def test_a_stripped_png_keeps_its_transparency() -> None:
    icc = np.random.default_rng(1).integers(0, 256, 1_200_000, np.uint8).tobytes()
    clear = save(Image.new("RGBA", (16, 8), (0, 0, 0, 0)).convert("P"), "PNG", icc_profile=icc, transparency=0)
    assert np.all(load_image(clear, 8) == 255)


def exif_jpeg(orientation_entry: bytes) -> bytes:
    """A landscape 64 x 32 JPEG whose EXIF holds one hand-written IFD entry (tag, type, count, value)."""
    ifd = b"II*\x00" + struct.pack("<IH", 8, 1) + orientation_entry + b"\x00" * 4
    return save(two_halves(), "JPEG", exif=b"Exif\x00\x00" + ifd, quality=95)


@pytest.mark.parametrize("entry", [
    struct.pack("<HHIHH", 0x0112, 3, 1, 9, 0),  # orientation 9: no such value
    struct.pack("<HHI4s", 0x0112, 2, 4, b"six\x00"),  # a string
    struct.pack("<HHII", 0x0112, 99, 1, 6),  # an unknown type
])
def test_an_unusable_orientation_means_no_rotation(entry: bytes) -> None:
    out, w, h = load_image_sized(exif_jpeg(entry), 32, "pad")
    assert (w, h) == (64, 32) and np.all(out[0] < 10) and not np.all(out[:, 0] < 10)  # landscape, as stored


def test_exif_orientations_turn_the_image_upright() -> None:
    # A 2 x 1 image, red then blue; each orientation shows it turned and/or flipped (EXIF 2.32, table 'Orientation').
    stored = np.array([[RED, BLUE]], np.uint8)
    expected = {1: [[RED, BLUE]], 2: [[BLUE, RED]], 3: [[BLUE, RED]], 4: [[RED, BLUE]],
                5: [[RED], [BLUE]], 6: [[RED], [BLUE]], 7: [[BLUE], [RED]], 8: [[BLUE], [RED]]}
    for value, shown in expected.items():
        img = Image.fromarray(stored)
        exif = Image.Exif()
        exif[0x0112] = value
        img.info["exif"] = exif.tobytes()
        assert orientation(img) == value
        assert np.asarray(upright(img)).tolist() == np.array(shown, np.uint8).tolist(), value


@pytest.mark.parametrize(("samples", "expected"), [
    (np.array([0.0, 0.5, 1.0], np.float32), [0, 128, 255]),  # [0, 1]: the scientific convention
    (np.array([0.0, 0.25, 1.0], np.float64), [0, 64, 255]),
    (np.array([0.0, 127.6, 255.0, 300.0, -5.0], np.float32), [0, 128, 255, 255, 0]),  # else [0, 255], clipped
    (np.array([np.nan, 0.5, np.inf, -np.inf], np.float32), [0, 128, 255, 0]),  # NaN black; inf clipped
    (np.array([0, 32768, 65535], np.uint16), [0, 128, 255]),  # 16-bit: always its full range
    (np.array([0, 100, 255], np.int32), [0, 100, 255]),  # 32-bit holding 8-bit values
    (np.array([0, 32768, 65535], np.int32), [0, 128, 255]),  # ... 16-bit values
    (np.array([0, 2**31, 2**32 - 1], np.int64), [0, 128, 255]),  # ... 32-bit values
    (np.array([-7, 0, 200], np.int32), [0, 0, 200]),  # negative: black
    (np.array([False, True]), [0, 255]),
    (np.array([0, 7, 255], np.uint8), [0, 7, 255]),
])
def test_every_sample_type_maps_to_8_bits_by_one_rule(samples: np.ndarray, expected: list[int]) -> None:
    out = to_uint8(samples)
    assert out.dtype == np.uint8 and out.tolist() == expected


def test_samples_that_are_not_numbers_are_refused() -> None:
    with pytest.raises(InvalidImage, match="complex64"):
        to_uint8(np.zeros(3, np.complex64))


@pytest.mark.parametrize(("samples", "grey"), [
    (np.full((32, 32), 0.5, np.float32), 128),  # was an all-black picture (issue 21, item 9)
    (np.full((32, 32), 200.0, np.float32), 200),
    (np.full((32, 32), 200, np.int32), 200),
    (np.full((32, 32), 40000, np.int32), round(40000 / 257)),
    (np.full((32, 32), 3 * 2**29, np.int32), round(3 * 2**29 * 255 / (2**32 - 1))),
    (np.full((32, 32), 32768, np.uint16), 128),
])
def test_wide_sample_tiffs_decode_by_the_rule(samples: np.ndarray, grey: int) -> None:
    data = save(Image.fromarray(samples), "TIFF")
    assert Image.open(io.BytesIO(data)).mode in ("F", "I", "I;16")
    out = load_image(data, 16)
    assert out.shape == (16, 16, 3) and np.all(np.abs(out.astype(int) - grey) <= 1), out[0, 0]


@pytest.mark.parametrize("mode", Image.MODES)
def test_every_pil_mode_fits_to_rgb(mode: str) -> None:
    img = Image.new(mode, (24, 12))
    out = fit(img, 8)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8


def truncated(fmt: str) -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = save(Image.fromarray(noise), fmt)
    return data[: len(data) // 2]


@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (b"hello, I am text pretending to be a PNG", r"not an image in a supported format \(PNG, JPEG, WEBP"),
    (save(solid(), "PNG")[:30], "starts like a PNG image but cannot be read; it may be truncated"),
    (truncated("PNG"), "truncated"),
    (truncated("JPEG"), "truncated"),
    (save(solid(), "ICO"), "not an image in a supported format"),
    (save(solid(), "JPEG")[:40], "starts like a JPEG image but cannot be read"),
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


def _photo_jpeg(**options: object) -> bytes:
    rng = np.random.default_rng(0)
    pixels = (np.linspace(0, 255, 96 * 80 * 3).reshape(80, 96, 3) + rng.integers(0, 40, (80, 96, 3))) % 256
    return save(Image.fromarray(pixels.astype(np.uint8)), "JPEG", **options)


@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"optimize": True, "subsampling": 0},
                                     {"icc_profile": b"p" * 150_000}, {"quality": 5}])
def test_a_jpegs_size_is_read_from_its_frame_header_as_pillow_reads_it(options, monkeypatch) -> None:
    data = _photo_jpeg(**options)
    filled = data[:2] + b"\xff\xff\xff" + data[2:]  # fill bytes before a marker (T.81 B.1.1.2)
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("the header pass opened the file with Pillow"))
    assert jpeg_size(data) == jpeg_size(filled) == (96, 80)
    assert pixel_count(data) == 96 * 80


def test_a_jpeg_padded_with_segments_or_scans_is_refused_at_once() -> None:
    """Pillow walked 8.3 million empty APP1 segments on the event loop (7 s, 1.4 GB) and libjpeg decodes a repeated
    progressive scan as often as it is repeated (1,300 times: 35 s of a codec thread for a 560 KB file)."""
    data = _photo_jpeg()
    padded = data[:2] + b"\xff\xe1\x00\x02" * (MAX_JPEG_SEGMENTS + 1) + data[2:]
    standalone = data[:2] + b"\xff\xd0" * (MAX_JPEG_SEGMENTS + 1) + data[2:]  # RSTn and fill bytes count too
    filled = data[:2] + b"\xff" * 70_000 + data[2:]
    for call in (pixel_count, lambda d: load_image(d, 32)):
        for bad in (padded, standalone):
            with pytest.raises(InvalidImage, match=f"over {MAX_JPEG_SEGMENTS} markers before its frame header"):
                call(bad)
        with pytest.raises(InvalidImage, match="a run of over 65,536 fill bytes"):
            call(filled)
    progressive = _photo_jpeg(progressive=True)
    last, eoi = progressive.rindex(b"\xff\xda"), len(progressive) - 2
    assert 1 < progressive.count(b"\xff\xda") < 20  # Pillow's progressive JPEG: about 10 scans
    # scans x pixels: 96 x 80 pixels would take 650,000 scans; the bound is checked with a smaller constant here
    repeated = progressive[:eoi] + progressive[last:eoi] * 200 + progressive[eoi:]
    assert pixel_count(repeated) == 96 * 80
    import titok.core.codec as codec_module

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(codec_module, "MAX_JPEG_SCAN_PIXELS", 100 * 96 * 80)
        for call in (pixel_count, lambda d: load_image(d, 32)):
            with pytest.raises(InvalidImage, match=r"the JPEG has 2\d\d scans \(start-of-scan markers\) of 96 x 80"):
                call(repeated)
    assert load_image(progressive, 32).shape == (32, 32, 3)
    assert MAX_JPEG_SCAN_PIXELS == 100 * 50_000_000


def test_a_jpeg_with_a_trailer_after_its_image_keeps_its_size() -> None:
    """A phone's motion photo appends its video after the JPEG's EOI (about one false start-of-scan marker per 64 KiB
    of it): counted over the whole file, 8 MB of it refused a 96 x 80 photo as a scan bomb (a hostile pass)."""
    data = _photo_jpeg() + np.random.default_rng(1).integers(0, 256, 8 << 20, dtype=np.uint8).tobytes()
    assert pixel_count(data) == 96 * 80 and load_image(data, 32).shape == (32, 32, 3)


def test_a_gifs_size_is_read_without_pillow_and_its_blocks_are_bounded(monkeypatch) -> None:
    gif = save(solid(), "GIF")
    comments = b"\x21\xfe" + b"\x01x" * 10_000 + b"\x00"  # one comment extension of 10,000 sub-blocks
    at = gif.index(b"\x2c")  # the image descriptor, after the header and the global colour table
    padded = gif[:at] + comments + gif[at:]
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("the header pass opened the file with Pillow"))
    assert pixel_count(padded) == solid().size[0] * solid().size[1]
    for call in (pixel_count, lambda d: load_image(d, 32)):  # the codec thread's Pillow walk is bounded too
        with pytest.raises(InvalidImage, match="the GIF has over 16384 extension blocks before its first image"):
            call(gif[:at] + b"\x21\xfe" + b"\x01x" * 20_000 + b"\x00" + gif[at:])
    with pytest.raises(InvalidImage, match="it ends before its first image"):
        pixel_count(gif[:at])


def test_a_gif_whose_first_image_is_larger_than_its_screen_counts_the_image() -> None:
    """Pillow enlarges a GIF's size to its first image: a 1 x 1 screen over a 700 x 700 image was counted as one
    pixel against TITOK_MAX_REQUEST_PIXELS (a hostile pass), and decoded as 490,000."""
    gif = bytearray(save(Image.new("P", (700, 700)), "GIF"))
    gif[6:10] = struct.pack("<HH", 1, 1)
    assert Image.open(io.BytesIO(bytes(gif))).size == (700, 700) == gif_size(bytes(gif))
    assert pixel_count(bytes(gif)) == 490_000
    frames = [Image.new("RGB", (50, 40), (40 * i, 0, 0)) for i in range(4)]
    animated = save(frames[0], "GIF", save_all=True, append_images=frames[1:], comment=b"c" * 1000, loop=0)
    assert gif_size(animated) == Image.open(io.BytesIO(animated)).size == (50, 40)


def _patched_tiff_count(tiff: bytes, tag: int, count: int) -> bytes:
    """A little-endian TIFF with the count of `tag` in its first directory set to `count`."""
    (ifd,) = struct.unpack("<I", tiff[4:8])
    (entries,) = struct.unpack("<H", tiff[ifd:ifd + 2])
    for i in range(entries):
        at = ifd + 2 + 12 * i
        if struct.unpack("<H", tiff[at:at + 2])[0] == tag:
            return tiff[:at + 4] + struct.pack("<I", count) + tiff[at + 8:]
    raise AssertionError(f"no tag {tag}")


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "CMYK", "1"])
@pytest.mark.parametrize("compression", [None, "tiff_lzw", "tiff_deflate"])
def test_a_tiffs_size_is_read_from_its_first_directory_as_pillow_reads_it(mode, compression, monkeypatch) -> None:
    data = save(two_halves(90, 60).convert(mode), "TIFF", **({"compression": compression} if compression else {}))
    assert Image.open(io.BytesIO(data)).size == (90, 60)
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("the header pass opened the file with Pillow"))
    assert tiff_size(data) == (90, 60) and pixel_count(data) == 90 * 60


def test_a_big_endian_tiff_header_is_read_too() -> None:
    entries = [(256, 3, 1, struct.pack(">HH", 300, 0)), (257, 4, 1, struct.pack(">I", 200))]
    ifd = struct.pack(">H", len(entries)) + b"".join(struct.pack(">HHI", t, k, c) + v for t, k, c, v in entries)
    assert tiff_size(b"MM\x00*" + struct.pack(">I", 8) + ifd + b"\x00" * 4) == (300, 200)


def test_a_tiffs_repeated_size_tag_is_read_as_pillow_reads_it_the_first() -> None:
    tiff = save(two_halves(90, 60), "TIFF")
    (ifd,) = struct.unpack("<I", tiff[4:8])
    (entries,) = struct.unpack("<H", tiff[ifd:ifd + 2])
    table = tiff[ifd + 2:ifd + 2 + 12 * entries]
    width = next(table[i:i + 12] for i in range(0, len(table), 12) if struct.unpack("<H", table[i:i + 2])[0] == 256)
    second = struct.pack("<HHI", 256, 3, 1) + struct.pack("<HH", 1, 0)  # a second ImageWidth of 1 after the first
    at = table.index(width) + 12
    doubled = (tiff[:ifd] + struct.pack("<H", entries + 1) + table[:at] + second + table[at:]
               + tiff[ifd + 2 + 12 * entries:])
    assert tiff_size(doubled) == (90, 60)


def test_a_tiff_listing_millions_of_strips_is_refused_before_pillow_reads_them() -> None:
    """Pillow reads every strip offset into a tuple: 16 million of them held the event loop 1.3 s (a hostile
    pass)."""
    bomb = _patched_tiff_count(save(two_halves(90, 60), "TIFF"), 273, MAX_TIFF_STRIPS + 1)
    for call in (pixel_count, lambda d: load_image(d, 32)):
        with pytest.raises(InvalidImage, match=f"lists {MAX_TIFF_STRIPS + 1} strips or tiles; at most"):
            call(bomb)
    other = _patched_tiff_count(save(two_halves(90, 60), "TIFF"), 277, MAX_TIFF_STRIPS + 1)  # SamplesPerPixel
    with pytest.raises(InvalidImage, match=f"tag 277 holds {MAX_TIFF_STRIPS + 1} numbers"):
        pixel_count(other)


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
    ([1, [0] * 30, 2, 3], r"tokens\[1\] is a list \(\[0, 0, 0, 0, 0, 0, 0, 0, 0, 0,\.\.\.\), not an integer"),
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


def test_an_image_over_pillows_own_bound_names_the_services_limit() -> None:
    data = header_only_png(2**31 - 1, 2**31 - 1)  # far past Pillow's decompression-bomb bound, refused at open
    with pytest.raises(ImageTooLarge, match=r"more than \d+ pixels; the limit is 50000000 pixels") as refused:
        load_image(data, 32, max_pixels=50_000_000)
    assert "bomb" not in refused.value.message


@pytest.mark.parametrize("image", [np.zeros((8, 8, 3), np.uint8), np.zeros((32, 32, 3), np.uint8), solid()])
def test_an_unknown_resize_mode_is_refused_not_padded(image) -> None:
    with pytest.raises(ValueError, match="resize must be one of crop, pad, stretch, not 'bogus'"):
        fit(image, 32, "bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="resize must be one of"):
        load_image(save(solid(), "PNG"), 32, "bogus")  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [(0, 0), (0, 5), (5, 0)])
def test_an_empty_pil_image_is_refused(size: tuple[int, int]) -> None:
    with pytest.raises(InvalidImage, match="the image is empty"):
        fit(Image.new("RGB", size), 32)


def test_a_png_size_is_read_from_its_ihdr_without_walking_its_chunks(monkeypatch) -> None:
    """pixel_count reads a PNG's IHDR itself: Pillow's open walks every chunk before the image data, and a 1 x 1
    PNG padded with 30 MiB of private chunks held the event loop for 5.6 s (a hostile pass)."""
    import io
    import struct
    import zlib

    from PIL import Image

    from titok.core import codec
    from titok.core.errors import ImageTooLarge, InvalidImage

    buf = io.BytesIO()
    Image.new("RGB", (3, 2)).save(buf, format="PNG")
    png = buf.getvalue()
    chunk = struct.pack(">I", 4) + b"prVt" + b"junk" + struct.pack(">I", zlib.crc32(b"prVtjunk"))
    padded = png[:33] + chunk * 10_000 + png[33:]  # 10,000 private chunks between IHDR and the image data

    def no_pillow(*_a, **_k):
        raise AssertionError("Pillow's open was called")

    monkeypatch.setattr(codec, "_open", no_pillow)
    assert codec.pixel_count(png) == codec.pixel_count(padded) == 6
    with pytest.raises(ImageTooLarge, match="3 x 2 = 6 pixels; the limit is 5 pixels"):
        codec.pixel_count(padded, max_pixels=5)
    with pytest.raises(InvalidImage, match="declares a 0 x 2 image"):
        codec.pixel_count(png[:16] + struct.pack(">II", 0, 2) + png[24:])
    monkeypatch.undo()
    assert codec.load_image(padded, 4).shape == (4, 4, 3)  # the padded file still decodes
