"""Bytes <-> arrays at the edge: uploaded images -> RGB uint8, token JSON -> int64, pixels -> PNG.

These functions are CPU-bound and run in the app's codec thread pool, off the event loop and off
the model thread.
"""

from __future__ import annotations

import io
import json
import sys
from typing import Any, Literal, NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import CoreError, ImageTooLarge, InvalidImage, InvalidTokens, MalformedJSON, TooManyImages

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")  # the file names of FORMATS: the one list
Resize = Literal["crop", "pad", "stretch"]
_ORIENTATION = 0x0112  # the EXIF tag
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_RESAMPLE = Image.Resampling.BICUBIC
_REDUCING_GAP = 3.0  # shrink big images by integer steps first: much faster, same look at the small size


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Read the header only (nothing decoded yet) and check the pixel count against the per-image limit."""
    if not data:
        raise InvalidImage("the image is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"the image is too large to decode ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InvalidImage(f"not a decodable image; supported formats: {', '.join(FORMATS)}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageTooLarge(f"the image is {w} x {h} = {w * h} pixels; the limit is {max_pixels} pixels")
    return img


def pixel_count(data: bytes, max_pixels: int = 50_000_000) -> int:
    """Width x height from the image's header alone (cheap: no pixel is decoded)."""
    w, h = _open(data, max_pixels).size
    return w * h


def load_image(data: bytes, size: int, resize: Resize = "crop", max_pixels: int = 50_000_000) -> np.ndarray:
    """Any supported image -> uint8 (size, size, 3); the pixel count is checked before decoding."""
    return load_image_sized(data, size, resize, max_pixels)[0]


def load_image_sized(data: bytes, size: int, resize: Resize = "crop",
                     max_pixels: int = 50_000_000) -> tuple[np.ndarray, int, int]:
    """load_image, plus the image's width and height as displayed (after its EXIF orientation)."""
    img = _open(data, max_pixels)
    w, h = img.size
    try:
        shown = (h, w) if img.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8) else (w, h)  # 90-degree turns
        if img.format == "JPEG":
            img.draft(None, (size, size))  # let libjpeg decode at a reduced scale, still >= size each way
        img = ImageOps.exif_transpose(img)  # decodes; GIF/WebP/TIFF stay at their first frame
        img = _to_rgb(img)
        img = _resize(img, size, resize)
        out = np.asarray(img, dtype=np.uint8)
    except CoreError:
        raise
    except Exception as e:  # Pillow raises many types for truncated or corrupt data
        raise InvalidImage(f"the image could not be decoded; it may be truncated or corrupt ({e})") from None
    return out, *shown


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _SIXTEEN_BIT or img.mode == "I":
        a = np.asarray(img).astype(np.float32)
        if img.mode in _SIXTEEN_BIT or a.max(initial=0) > 255:  # 16-bit samples: 0..65535 -> 0..255
            a = a / 257.0
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8), "L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:  # transparent areas become white, not whatever colour hides under alpha 0
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...


def _resize(img: Image.Image, size: int, mode: Resize) -> Image.Image:
    w, h = img.size
    if mode == "stretch":
        return img.resize((size, size), _RESAMPLE, reducing_gap=_REDUCING_GAP)
    if mode == "crop":  # shorter side to `size`, then the centre square
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        return img.resize((size, size), _RESAMPLE, box=box, reducing_gap=_REDUCING_GAP)
    scale = size / max(w, h)  # pad: longer side to `size`, centred on black
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new("RGB", (size, size))
    canvas.paste(img.resize((nw, nh), _RESAMPLE, reducing_gap=_REDUCING_GAP), ((size - nw) // 2, (size - nh) // 2))
    return canvas


def fit(image: Image.Image | np.ndarray, size: int, resize: Resize = "crop") -> np.ndarray:
    """An image already in memory -> uint8 (size, size, 3), as load_image treats an upload once it is decoded.

    image: a PIL image (its EXIF orientation is applied) or a uint8 array (H, W), (H, W, 3) or (H, W, 4)
    (alpha on white). Then RGB, then the resize mode: the model's input for it, the /encode path's own steps.
    Raises InvalidImage for another dtype or shape.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise InvalidImage(f"an image array must be uint8 (H, W), (H, W, 3) or (H, W, 4), not {image.dtype} "
                               f"{image.shape}")
        if image.shape[:2] == (size, size) and image.ndim == 3 and image.shape[2] == 3:
            return np.ascontiguousarray(image)  # already the model's input
        if min(image.shape[:2]) == 0:
            raise InvalidImage(f"the image array is empty (shape {image.shape})")
        image = Image.fromarray(np.ascontiguousarray(image))
        return np.asarray(_resize(_to_rgb(image), size, resize), dtype=np.uint8)
    return np.asarray(_resize(upright_rgb(image), size, resize), dtype=np.uint8)


def upright_rgb(image: Image.Image) -> Image.Image:
    """A decoded image as the codec sees it before resizing: EXIF orientation applied, then RGB (alpha on white,
    16-bit samples scaled to 8)."""
    return _to_rgb(ImageOps.exif_transpose(image))


def token_body_limit(num_tokens: int, max_sequences: int) -> int:
    """Bytes a /decode body may take: generous for pretty-printed JSON, tiny next to a flood."""
    return 64 * 1024 + 32 * num_tokens * max_sequences


class TokenRequest(NamedTuple):
    tokens: np.ndarray | list[np.ndarray]  # int64 (N, K); with prefix=True and mixed lengths, N int64 (k_i,)
    nested: bool  # whether the list was nested (the answer is then JSON, not one PNG)
    content_hash: str | None  # the model the caller says made the tokens


def parse_tokens(body: bytes, num_tokens: int, codebook_size: int, max_sequences: int, *,
                 prefix: bool = False) -> TokenRequest:
    """{"tokens": [K ints] or [[K ints], ...], "content_hash"?: str} -> TokenRequest.

    prefix: the model is prefix-decodable, so every sequence may hold any 1 <= k <= K tokens (each its own k).
    """
    if not body.strip():
        raise MalformedJSON('the body is empty; send {"tokens": [...]}')
    try:
        doc: Any = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise MalformedJSON(f"the body is not valid JSON ({e})") from None
    except ValueError:  # what is left: an integer over Python's digit limit, far outside every codebook
        raise InvalidTokens(f"a number in the body has over {sys.get_int_max_str_digits()} digits; "
                            f"token ids must be in [0, {codebook_size})") from None
    if not isinstance(doc, dict) or "tokens" not in doc:
        raise InvalidTokens('the body must be a JSON object with a "tokens" field')
    tokens, content_hash = doc["tokens"], doc.get("content_hash")
    if content_hash is not None and not isinstance(content_hash, str):
        raise InvalidTokens(f"content_hash must be a string (the model's hash from /encode), not "
                            f"{_json_type(content_hash)}")
    if not isinstance(tokens, list):
        raise InvalidTokens(f"tokens must be a list of {num_tokens} integers or a list of such lists, "
                            f"not {_json_type(tokens)}")
    if not tokens:
        raise InvalidTokens("tokens is an empty list")
    nested = isinstance(tokens[0], list)
    sequences = tokens if nested else [tokens]
    if len(sequences) > max_sequences:
        raise TooManyImages(f"{len(sequences)} token sequences in one request; the limit is {max_sequences}")
    for i, seq in enumerate(sequences):
        where = f"tokens[{i}]" if nested else "tokens"
        if not isinstance(seq, list):
            raise InvalidTokens(f"{where} is {_json_type(seq)}; every sequence must be a list of integers")
        if prefix and not 1 <= len(seq) <= num_tokens:
            raise InvalidTokens(f"{where} has {len(seq)} tokens; the model takes 1 to {num_tokens} (a prefix of "
                                "an encoding)")
        if not prefix and len(seq) != num_tokens:
            raise InvalidTokens(f"{where} has {len(seq)} tokens; the model takes exactly {num_tokens} (it is not "
                                "prefix-decodable, so shorter sequences cannot be decoded)")
        for j, t in enumerate(seq):
            if type(t) is float and t.is_integer():  # JSON has one number type: 4.0 is 4 (so says JSON Schema)
                t = seq[j] = int(t)
            if type(t) is not int:  # rejects bools, fractions, strings
                raise InvalidTokens(f"{where}[{j}] is {json.dumps(t)[:40]}, not an integer")
            if not 0 <= t < codebook_size:
                shown = str(t) if len(str(t)) <= 40 else f"{str(t)[:20]}... ({len(str(t))} digits)"
                raise InvalidTokens(f"{where}[{j}] is {shown}; token ids must be in [0, {codebook_size})")
    if len({len(seq) for seq in sequences}) > 1:  # ragged: a prefix model's sequences of their own lengths
        return TokenRequest([np.asarray(seq, dtype=np.int64) for seq in sequences], nested, content_hash)
    return TokenRequest(np.asarray(sequences, dtype=np.int64), nested, content_hash)


def _json_type(v: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(v), type(v).__name__)


def encode_png(pixels: np.ndarray, compress_level: int = 1) -> bytes:
    """uint8 (H, W, 3) -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
