"""Bytes <-> arrays at the edge: uploaded images -> RGB uint8, token JSON -> int64, pixels -> PNG.

These functions are CPU-bound and run in the app's codec thread pool, off the event loop and off
the model thread.
"""

from __future__ import annotations

import io
import json
import struct
import sys
from typing import Any, Literal, NamedTuple, get_args

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import CoreError, ImageTooLarge, InvalidImage, InvalidTokens, MalformedJSON, TooManyImages

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")  # the file names of FORMATS: the one list
Resize = Literal["crop", "pad", "stretch"]
RESIZE_MODES: tuple[str, ...] = get_args(Resize)
_ORIENTATION = 0x0112  # the EXIF tag
# EXIF orientation -> the turn that shows the image upright (2..8; 1 and anything else: as stored)
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
_WIDE = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")  # modes whose samples are wider than 8 bits
_RESAMPLE = Image.Resampling.BICUBIC
_REDUCING_GAP = 3.0  # shrink big images by integer steps first: much faster, same look at the small size
# PNG chunks kept when an image's metadata is more than Pillow will read (see _without_metadata); the rest
# (ICC profiles, text) is never used here.
_PNG_KEPT = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND", b"eXIf", b"acTL", b"fcTL", b"fdAT", b"sBIT"}


def _sniff(data: bytes) -> str | None:
    """The supported format whose signature `data` starts with, if any (Pillow's own signature tests)."""
    Image.init()
    prefix = data[:16]
    for fmt in FORMATS:
        accept = Image.OPEN[fmt][1]
        found = accept(prefix) if accept else False
        if found and not isinstance(found, str):  # a str is Pillow's "looks like it, but unsupported" note
            return fmt
    return None


def _without_metadata(png: bytes) -> bytes | None:
    """The PNG with only the chunks the pixels need, or None when it is not a sequence of whole chunks.

    Pillow refuses a PNG whose ICC profile or text decompresses to over 1 MB (its safety limit against zlib
    bombs); those chunks are of no use here, so such a file is read without them.
    """
    out, pos = [png[:8]], 8
    while pos + 12 <= len(png):
        length = int.from_bytes(png[pos:pos + 4], "big")
        end = pos + 12 + length
        if end > len(png):
            return None
        if png[pos + 4:pos + 8] in _PNG_KEPT:
            out.append(png[pos:end])
        pos = end
    return b"".join(out)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Read the header only (nothing decoded yet) and check the pixel count against the per-image limit."""
    if not data:
        raise InvalidImage("the image is empty (0 bytes)")
    fmt = _sniff(data)
    if fmt is None:
        raise InvalidImage(f"the data is not an image in a supported format ({', '.join(FORMATS)})")
    _declared_size(data)  # the header readers' bounds (JPEG markers and scans, TIFF strips, GIF blocks) before Pillow
    try:
        try:
            img = Image.open(io.BytesIO(data), formats=FORMATS)
        except ValueError:  # metadata over one of Pillow's limits (only PNG has them), not the pixels
            stripped = _without_metadata(data) if fmt == "PNG" else None
            if stripped is None:
                raise
            img = Image.open(io.BytesIO(stripped), formats=FORMATS)
    except Image.DecompressionBombError:  # over Pillow's own bound (2 x Image.MAX_IMAGE_PIXELS): name ours
        bound = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise ImageTooLarge(f"the image is too large: its header declares more than {bound} pixels; the limit is "
                            f"{max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        reason = "" if isinstance(e, UnidentifiedImageError) else f" ({e})"
        raise InvalidImage(f"the data starts like a {fmt} image but cannot be read; it may be truncated or "
                           f"corrupt{reason}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageTooLarge(f"the image is {w} x {h} = {w * h} pixels; the limit is {max_pixels} pixels")
    return img


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# A JPEG's markers before its frame header (APPn, DQT, DHT, COM, ...: a camera's photo has under 20), and its scans
# times its pixels (a baseline JPEG has 1 scan, or 1 a colour component, a progressive one about 10).
MAX_JPEG_SEGMENTS = 1024
MAX_JPEG_SCAN_PIXELS = 100 * 50_000_000
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # frame headers (T.81)
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # markers without a length field (TEM, RSTn)
_BROKEN_JPEG = "the data starts like a JPEG image but cannot be read"


def jpeg_size(data: bytes) -> tuple[int, int]:
    """A JPEG's (width, height) from its frame header, walking the markers before it (ITU-T T.81, annex B) without
    Pillow, and refusing a file that will not decode in bounded time.

    Pillow's open walks every marker before the frame in Python and keeps each APPn segment: a 64 x 64 JPEG padded
    with 8.3 million empty APP1 segments (33 MB) held the event loop for 7 s and 1.4 GB (a hostile pass). Here at
    most MAX_JPEG_SEGMENTS markers (segments, standalone markers and runs of fill bytes alike) may come before the
    frame header. And libjpeg decodes every scan of a progressive JPEG over the whole image: a 560 KB 7000 x 7000
    file repeating one refinement scan 1,300 times took 35 s of a codec thread. The start-of-scan markers from the
    frame header on, times the frame's pixels, may be at most MAX_JPEG_SCAN_PIXELS (100 scans of 50 Mpx, about 3 s
    of libjpeg here). The count runs to the end of the file, which may hold more than the JPEG (a phone's motion
    photo appends its video: about one false marker per 64 KiB); weighing it by the pixels lets a small photo keep
    such a trailer. Raises InvalidImage naming what is wrong.
    """
    pos, markers = 2, 0
    while True:
        markers += 1
        if markers > MAX_JPEG_SEGMENTS:
            raise InvalidImage(f"the JPEG has over {MAX_JPEG_SEGMENTS} markers before its frame header (SOF); a "
                               "photo has a few dozen at most")
        if pos + 1 < len(data) and data[pos] == 0xFF and data[pos + 1] == 0xFF:  # a run of fill bytes: one step
            window = data[pos:pos + 65537]
            run = len(window) - len(window.lstrip(b"\xff"))  # counted in C, not a byte at a time
            if run > 65536:
                raise InvalidImage(f"{_BROKEN_JPEG}: it has a run of over 65,536 fill bytes")
            pos += run - 1  # the last 0xFF of the run begins the marker
        if pos + 2 > len(data) or data[pos] != 0xFF:
            raise InvalidImage(f"{_BROKEN_JPEG}: it ends or breaks before its frame header (SOF); it may be "
                               "truncated or corrupt")
        marker = data[pos + 1]
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (0xD8, 0xD9, 0xDA):
            raise InvalidImage(f"{_BROKEN_JPEG}: it has a {'start of scan' if marker == 0xDA else 'SOI or EOI'} "
                               "marker before its frame header (SOF)")
        if pos + 4 > len(data):
            raise InvalidImage(f"{_BROKEN_JPEG}: it ends inside a segment header; it may be truncated")
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _JPEG_SOF:
            if length < 8 or pos + 9 > len(data):
                raise InvalidImage(f"{_BROKEN_JPEG}: its frame header (SOF) is cut short")
            h, w = struct.unpack(">HH", data[pos + 5:pos + 9])
            break
        if length < 2:
            raise InvalidImage(f"{_BROKEN_JPEG}: a segment before its frame header (SOF) has a malformed length")
        pos += 2 + length
    if w == 0 or h == 0:
        raise InvalidImage(f"the JPEG frame header declares a {w} x {h} image (a height set later by a DNL marker "
                           "is not supported)")
    scans = data.count(b"\xff\xda", pos)  # entropy-coded data stuffs every 0xFF: these are markers, or a trailer
    if scans * w * h > MAX_JPEG_SCAN_PIXELS:
        raise InvalidImage(f"the JPEG has {scans} scans (start-of-scan markers) of {w} x {h} pixels; libjpeg decodes "
                           f"each over the whole image, and at most {MAX_JPEG_SCAN_PIXELS} scan-pixels are taken (a "
                           "progressive photo has about 10 scans)")
    return w, h


MAX_TIFF_STRIPS = 1 << 20  # strips or tiles of a TIFF's first image (a 50 Mpx scan, one row a strip: 7,000)
_TIFF_TYPE_BYTES = {1: 1, 3: 2, 4: 4, 16: 8}  # BYTE, SHORT, LONG, LONG8: the integer types a size or count uses


def tiff_size(data: bytes) -> tuple[int, int] | None:
    """A classic TIFF's (width, height) from its first image file directory (TIFF 6.0, section 2), without Pillow;
    None for a BigTIFF or a directory it cannot follow (Pillow then reads it, and says what is wrong).

    Pillow reads every value of every tag of the directory into Python tuples: a TIFF listing 16 million strip
    offsets held the event loop for 1.3 s (a hostile pass). Raises InvalidImage for a first image of more than
    MAX_TIFF_STRIPS strips or tiles, a tag of more than MAX_TIFF_STRIPS numbers, or a size of 0.
    """
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 8 or struct.unpack(order + "H", data[2:4])[0] != 42:
        return None
    (ifd,) = struct.unpack(order + "I", data[4:8])
    if ifd + 2 > len(data):
        return None
    (entries,) = struct.unpack(order + "H", data[ifd:ifd + 2])
    if ifd + 2 + 12 * entries > len(data):
        return None
    size: dict[int, int] = {}
    for i in range(entries):
        tag, kind, count = struct.unpack(order + "HHI", data[ifd + 2 + 12 * i:ifd + 10 + 12 * i])
        if tag in (273, 279, 324, 325) and count > MAX_TIFF_STRIPS:  # Strip/Tile Offsets/ByteCounts
            raise InvalidImage(f"the TIFF's first image lists {count} strips or tiles; at most {MAX_TIFF_STRIPS} "
                               "are read")
        if kind not in (1, 2, 6, 7) and count > MAX_TIFF_STRIPS:  # numbers, which Pillow reads into a tuple each
            raise InvalidImage(f"the TIFF's tag {tag} holds {count} numbers; at most {MAX_TIFF_STRIPS} are read")
        if tag in (256, 257) and tag not in size and count == 1 and kind in (3, 4):  # ImageWidth, ImageLength
            at = ifd + 10 + 12 * i  # SHORT or LONG, in the entry itself; the first of a repeated tag, as Pillow
            size[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), data[at:at + _TIFF_TYPE_BYTES[kind]])[0]
    if 256 not in size or 257 not in size:
        return None
    if size[256] == 0 or size[257] == 0:
        raise InvalidImage(f"the TIFF header declares a {size[256]} x {size[257]} image")
    return size[256], size[257]


MAX_GIF_BLOCKS = 16384  # extension sub-blocks before a GIF's first image (4 MB of metadata at 255 bytes each)


def gif_size(data: bytes) -> tuple[int, int]:
    """A GIF's (width, height) as Pillow reports it: its logical screen, enlarged to hold the first image where that
    reaches past it (GIF89a, sections 18 and 20), walking at most MAX_GIF_BLOCKS extension sub-blocks to it without
    Pillow (a GIF with 6.6 million comment blocks held the event loop 2.6 s in Pillow: a hostile pass). A screen
    of 1 x 1 with a 7000 x 7000 first image is 49 million pixels, not 1. Raises InvalidImage for a GIF that ends
    before its first image, holds too many blocks before it, or is 0 pixels wide or high."""
    w, h = struct.unpack("<HH", data[6:10])
    flags = data[10] if len(data) > 10 else 0
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global colour table, if any
    blocks = 0
    while pos < len(data):
        if data[pos] == 0x2C:  # an image descriptor: left, top, width, height
            if pos + 9 > len(data):
                break
            left, top, iw, ih = struct.unpack("<HHHH", data[pos + 1:pos + 9])
            w, h = max(w, left + iw), max(h, top + ih)
            if w == 0 or h == 0:
                raise InvalidImage(f"the GIF declares a {w} x {h} image")
            return w, h
        if data[pos] != 0x21:  # not an extension (the trailer, or junk): no image comes
            break
        pos += 2  # introducer and label, then sub-blocks of a length byte and that many bytes, up to a 0 length
        while pos < len(data):
            blocks += 1
            if blocks > MAX_GIF_BLOCKS:
                raise InvalidImage(f"the GIF has over {MAX_GIF_BLOCKS} extension blocks before its first image")
            size = data[pos]
            pos += 1 + size
            if size == 0:
                break
    raise InvalidImage("the data starts like a GIF image but cannot be read: it ends before its first image")


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read straight from a PNG's IHDR, a GIF's descriptors, a JPEG's frame header or a classic
    TIFF's first directory; None for the other formats (Pillow reads theirs). Raises InvalidImage for a size of 0 or
    a file refused by gif_size, jpeg_size or tiff_size."""
    if len(data) >= 24 and data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR":
        w, h = struct.unpack(">II", data[16:24])
        kind = "PNG header"
    elif len(data) >= 10 and data[:6] in (b"GIF87a", b"GIF89a"):
        return gif_size(data)
    elif data[:3] == b"\xff\xd8\xff":
        return jpeg_size(data)
    elif data[:4] in (b"II*\x00", b"MM\x00*"):
        return tiff_size(data)
    else:
        return None
    if w == 0 or h == 0:
        raise InvalidImage(f"the {kind} declares a {w} x {h} image")
    return w, h


def pixel_count(data: bytes, max_pixels: int = 50_000_000) -> int:
    """Width x height from the image's header alone (cheap: no pixel is decoded).

    A PNG's size is read from its IHDR chunk, which the PNG specification (section 5.6) puts first, a GIF's from
    its logical screen descriptor and a JPEG's from its frame header (jpeg_size), without Pillow: Pillow's open
    walks every chunk, block or marker before the image data, and a 1 x 1 PNG padded with 30 MiB of private
    chunks held the service's event loop for 5.6 s there, a GIF with 6.6 million comment blocks 2.6 s (hostile
    passes). Anything wrong after them is found when the image is decoded (InvalidImage then). Raises
    ImageTooLarge over `max_pixels`, InvalidImage for data that is not a readable image.
    """
    size = _declared_size(data)
    w, h = size if size is not None else _open(data, max_pixels).size
    if w * h > max_pixels:
        raise ImageTooLarge(f"the image is {w} x {h} = {w * h} pixels; the limit is {max_pixels} pixels")
    return w * h


def load_image(data: bytes, size: int, resize: Resize = "crop", max_pixels: int = 50_000_000) -> np.ndarray:
    """Any supported image -> uint8 (size, size, 3); the pixel count is checked before decoding."""
    return load_image_sized(data, size, resize, max_pixels)[0]


def load_image_sized(data: bytes, size: int, resize: Resize = "crop",
                     max_pixels: int = 50_000_000) -> tuple[np.ndarray, int, int]:
    """load_image, plus the image's width and height as displayed (after its EXIF orientation).

    Raises InvalidImage (400) for data that is not an image or cannot be decoded, ImageTooLarge (413) for an
    image over `max_pixels` (read from the header, before decoding).
    """
    img = _open(data, max_pixels)
    fmt, (w, h) = img.format, img.size
    shown = (h, w) if orientation(img) in (5, 6, 7, 8) else (w, h)  # 90-degree turns; before a JPEG draft
    try:
        if img.format in ("JPEG", "MPO"):
            img.draft(None, (size, size))  # let libjpeg decode at a reduced scale, still >= size each way
        out = fit(img, size, resize)  # decodes (upright first); GIF/WebP/TIFF stay at their first frame
    except CoreError:
        raise
    except Exception as e:  # Pillow raises many types for truncated or corrupt data
        raise InvalidImage(f"the {fmt} image could not be decoded; it may be truncated or corrupt ({e})") from None
    return out, *shown


def orientation(img: Image.Image) -> int:
    """The image's EXIF orientation (1..8); 1 when it has none or its EXIF cannot be read (never an error)."""
    try:
        value = img.getexif().get(_ORIENTATION, 1)
    except Exception:  # metadata the pixels do not need: unreadable means "as stored"
        return 1
    return value if type(value) is int and 1 <= value <= 8 else 1


def upright(img: Image.Image) -> Image.Image:
    """The image as it is meant to be shown: turned or flipped by its EXIF orientation (decodes it)."""
    turn = _UPRIGHT.get(orientation(img))
    return img if turn is None else img.transpose(turn)


def to_uint8(samples: np.ndarray) -> np.ndarray:
    """Samples of any numeric dtype -> uint8 of the same shape, by one rule for every door:

    - uint8: as they are; bool: False black, True white.
    - 16-bit unsigned: 0..65535 scaled to 0..255.
    - other integers (32-bit images): the smallest of 8, 16 or 32 bits that holds the largest sample sets
      white (255, 65535 or 2**32 - 1); negative samples are black.
    - floating point: [0, 1] is black..white when every finite sample lies in it (the convention of NumPy,
      scikit-image and scientific TIFF writers), else [0, 255]; samples outside are clipped, NaN is black.

    Raises InvalidImage for a dtype that holds no samples (complex, strings, objects).
    """
    a = np.asarray(samples)
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * np.uint8(255)
    if a.dtype.kind == "f":
        finite = a[np.isfinite(a)]
        in_unit = finite.size == 0 or (float(finite.min()) >= 0.0 and float(finite.max()) <= 1.0)
        top = 1.0 if in_unit else 255.0
        scaled = np.nan_to_num(a.astype(np.float32), copy=False, nan=0.0)
        np.clip(scaled, 0.0, top, out=scaled)  # +-inf too, before scaling
        scaled *= np.float32(255.0 / top)
    elif a.dtype.kind in "iu":
        if a.dtype.kind == "u" and a.dtype.itemsize == 2:
            white = 65535
        else:
            top = int(a.max(initial=0))
            white = 255 if top <= 255 else 65535 if top <= 65535 else 2**32 - 1
        scaled = a.astype(np.float32)
        scaled *= np.float32(255.0 / white)
    else:
        raise InvalidImage(f"samples of dtype {a.dtype} are not pixel values; send integers or floats")
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _WIDE:
        img = Image.fromarray(to_uint8(np.asarray(img)), "L")
    elif img.mode == "La":  # premultiplied: Pillow converts it only to LA
        img = img.convert("LA")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in img.info
    if has_alpha:  # transparent areas become white, not whatever colour hides under alpha 0
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX


def check_resize(mode: object) -> None:
    """Raise ValueError unless `mode` is one of RESIZE_MODES (crop, pad, stretch)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, not {mode!r}")


def _resize(img: Image.Image, size: int, mode: Resize) -> Image.Image:
    check_resize(mode)
    w, h = img.size
    if min(w, h) == 0:
        raise InvalidImage(f"the image is empty ({w} x {h} pixels)")
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
    """An image in memory -> the model's input, uint8 (size, size, 3), by the /encode path's own steps.

    image: a PIL image of any mode (turned upright by its EXIF orientation) or an array of samples of any
    numeric dtype, (H, W), (H, W, 1), (H, W, 3) or (H, W, 4). Samples become 8-bit by `to_uint8`'s rule,
    transparency becomes white, and the picture is resized (crop: shorter side, then the centre; pad: longer
    side, centred on black; stretch: both sides). Raises InvalidImage for another shape, a non-numeric dtype or an
    empty image; ValueError for a `resize` that is none of crop, pad, stretch.
    """
    check_resize(resize)
    if isinstance(image, np.ndarray):
        a = to_uint8(image)
        if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3, 4))):
            raise InvalidImage(f"an image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), not {a.shape}")
        if a.shape[:2] == (size, size) and a.ndim == 3 and a.shape[2] == 3:
            return np.ascontiguousarray(a)  # already the model's input
        if min(a.shape[:2]) == 0:
            raise InvalidImage(f"the image array is empty (shape {a.shape})")
        image = Image.fromarray(np.ascontiguousarray(a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a))
    else:
        image = upright(image)
    return np.asarray(_resize(_to_rgb(image), size, resize), dtype=np.uint8)


def upright_rgb(image: Image.Image) -> Image.Image:
    """A decoded image as the codec sees it before resizing: EXIF orientation applied, then RGB (alpha on white,
    wide samples by `to_uint8`'s rule). Decodes the pixels here, so a truncated file fails in the caller's try."""
    image.load()
    return _to_rgb(upright(image))


def token_body_limit(num_tokens: int, max_sequences: int) -> int:
    """Bytes a /decode body may take: generous for pretty-printed JSON, tiny next to a flood."""
    return 64 * 1024 + 32 * num_tokens * max_sequences


class TokenRequest(NamedTuple):
    tokens: np.ndarray | list[np.ndarray]  # int64 (N, K); with prefix=True and mixed lengths, N int64 (k_i,)
    nested: bool  # whether the list was nested (the answer is then JSON, not one PNG)
    content_hash: str | None  # the model the caller says made the tokens


class DuplicateKey(ValueError):
    """A JSON object names one key twice (RFC 8259 section 4: names SHOULD be unique; parsers then differ)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        raise DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))  # type: ignore[func-returns-value]
    return doc


def parse_tokens(body: bytes, num_tokens: int, codebook_size: int, max_sequences: int, *,
                 prefix: bool = False) -> TokenRequest:
    """{"tokens": [K ints] or [[K ints], ...], "content_hash"?: str} -> TokenRequest.

    prefix: the model is prefix-decodable, so every sequence may hold any 1 <= k <= K tokens (each its own k).
    """
    if not body.strip():
        raise MalformedJSON('the body is empty; send {"tokens": [...]}')
    try:
        doc: Any = json.loads(body, object_pairs_hook=_unique_keys)
    except DuplicateKey as e:
        key = e.args[0] if len(e.args[0]) <= 40 else e.args[0][:40] + "..."
        raise MalformedJSON(f"the body names {key!r} twice; send each field once (which one counts is "
                            "read differently by different parsers)") from None
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
                said = json.dumps(t)
                said = said if len(said) <= 40 else f"{_json_type(t)} ({said[:30]}...)"  # not a cut mid-value
                raise InvalidTokens(f"{where}[{j}] is {said}, not an integer")
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
