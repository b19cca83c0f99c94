"""Test images made in memory with Pillow (no files on disk, nothing downloaded)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

RED, BLUE = (220, 20, 20), (20, 20, 220)


def save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def two_halves(w: int = 64, h: int = 32) -> Image.Image:
    """Left half red, right half blue."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = RED
    a[:, w // 2 :] = BLUE
    return Image.fromarray(a)


def solid(colour=RED, size=(48, 40), mode: str = "RGB") -> Image.Image:
    return Image.new("RGB", size, colour).convert(mode)


def exif_rotated_jpeg() -> bytes:
    """A landscape 64 x 32 JPEG whose EXIF says 'rotate 90 degrees': it displays as portrait."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return save(two_halves(), "JPEG", exif=exif.tobytes(), quality=95)


def animated_gif() -> bytes:
    frames = [solid(RED), solid(BLUE)]
    return save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def sixteen_bit_png(value: int = 32768) -> bytes:
    img = Image.fromarray(np.full((32, 32), value, np.uint16))
    return save(img, "PNG")


def header_only_png(width: int, height: int) -> bytes:
    """A few hundred bytes whose header claims width x height pixels (the pixel data is junk)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def all_formats() -> dict[str, bytes]:
    """One small red image in every supported format and pixel layout."""
    img = solid(RED)
    rgba = Image.new("RGBA", (48, 40), (*RED, 255))
    return {
        "png": save(img, "PNG"),
        "jpeg": save(img, "JPEG", quality=95),
        "webp": save(img, "WEBP", lossless=True),
        "gif": save(img, "GIF"),
        "bmp": save(img, "BMP"),
        "tiff": save(img, "TIFF"),
        "grey": save(img.convert("L"), "PNG"),
        "rgba": save(rgba, "PNG"),
        "palette": save(img.convert("P"), "PNG"),
        "cmyk": save(img.convert("CMYK"), "JPEG", quality=95),
        "sixteen_bit": sixteen_bit_png(),
        "exif_rotated": exif_rotated_jpeg(),
        "float_tiff": float_tiff(),
        "int32_tiff": save(Image.fromarray((float_samples() * 65535).astype(np.int32)), "TIFF"),
        "junk_exif_png": save(img, "PNG", exif=b"\xff" * 40),
    }


def float_samples(size: tuple[int, int] = (48, 40)) -> np.ndarray:
    """Greyscale samples in [0, 1] (float32), a left-to-right ramp, as NumPy and scientific pipelines write them."""
    return np.tile(np.linspace(0.0, 1.0, size[0], dtype=np.float32), (size[1], 1))


def float_tiff() -> bytes:
    """A float32 greyscale TIFF with samples in [0, 1] (Pillow reads it as mode F)."""
    return save(Image.fromarray(float_samples()), "TIFF")
