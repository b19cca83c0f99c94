"""The web page at `/`: this folder's static files, and two helper routes: the model's exact input, and (for a
prefix-decodable model) the PSNR of each prefix length of an image's tokens.

The page (index.html, style.css and three JavaScript modules: no build step, nothing from a CDN) talks to the
service's own /info, /encode and /decode. app.py includes this router only when TITOK_UI is true.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from starlette.exceptions import HTTPException

from ...core import codec
from ...core.budgets import refuse_prefixes
from ...core.quality import psnr
from ...errors import CurvesBusy, EmptyBody
from .. import decoding
from ..routes import KNOWN_QUERY_ONLY, refuse_declared_over, remaining, unless_disconnected

_HERE = Path(__file__).parent
_JS = "text/javascript; charset=utf-8"
_ASSETS = {"app.js": _JS, "api.js": _JS, "card.js": _JS, "style.css": "text/css; charset=utf-8"}
# The page may load only its own files and talk only to this service: a CDN link could not sneak in.
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_HEADERS = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


def page_paths() -> frozenset[str]:
    """The page and its own files: static, no data in them, open even when API keys are on."""
    return frozenset({"/", *(f"/ui/{name}" for name in _ASSETS)})  # the page and its helper are not part of the API


def _file(name: str, media_type: str) -> Response:
    return Response((_HERE / name).read_bytes(), media_type=media_type, headers=_HEADERS)


@router.get("/")
async def index() -> Response:
    return _file("index.html", "text/html; charset=utf-8")


@router.get("/ui/{name}")
async def asset(name: str) -> Response:
    if name not in _ASSETS:  # a fixed list: no path from the URL ever reaches the file system
        raise HTTPException(404)
    return _file(name, _ASSETS[name])


async def _image_body(request: Request) -> bytes:
    """The raw image body, read in full: before unless_disconnected, whose watcher would take body messages."""
    refuse_declared_over(request, request.app.state.service.settings.max_upload_bytes)
    body = await request.body()  # the middleware bounds it, times it out and counts a hang-up as a 499
    if not body:
        raise EmptyBody("the body is empty: send one image as the raw body")
    return body


async def _one_image(request: Request, body: bytes, resize: codec.Resize) -> np.ndarray:
    """The raw image body as the uint8 (S, S, 3) array the model is given."""
    svc: Any = request.app.state.service
    s = svc.settings
    # Through the same fair queue, pixel budget and deadline as /encode: the page's door is no way around them.
    (pixels,) = await decoding.decode_images(
        svc.decode_queue, [body], svc.engine.image_size, resize, max_image_pixels=s.max_image_pixels,
        max_request_pixels=s.max_request_pixels, deadline=time.monotonic() + s.request_timeout_s)  # (S, S, 3)
    return pixels


@router.post("/ui/input", dependencies=KNOWN_QUERY_ONLY)
async def model_input(request: Request, resize: Annotated[codec.Resize, Query()] = "crop") -> Response:
    """One raw image body -> the uint8 (S, S, 3) array the model is given for it, as PNG.

    The page compares the reconstruction with this, so its PSNR is the service's own: a browser-side resize
    differs from Pillow's, cannot honour every format (TIFF) and handles alpha and 16-bit samples its own way.
    """
    svc: Any = request.app.state.service

    body = await _image_body(request)

    async def model_input_png() -> bytes:
        pixels = await _one_image(request, body, resize)
        return await asyncio.get_running_loop().run_in_executor(svc.codec_pool, codec.encode_png, pixels,
                                                                svc.settings.png_compress_level)

    # A client gone while its image waits or decodes: the image is dropped (a 499), as on /encode.
    return Response(await unless_disconnected(request, model_input_png()), media_type="image/png")


CURVE_POINTS = 64  # prefix lengths measured for the page's curve: every k up to 64 tokens, else 64 of them
# One curve is up to CURVE_POINTS decodes: a few clients asking for curves at once would fill the batcher's queue
# (512 items by default) and turn every other client away with 503 queue_full. So at most CURVES_AT_ONCE curves
# are measured at a time (the others wait, within the request's timeout), each submitting CURVE_CHUNK decodes at a
# time: curves hold at most CURVES_AT_ONCE * CURVE_CHUNK queue places.
CURVES_AT_ONCE = 2
CURVE_CHUNK = 16


def curve_lengths(max_tokens: int) -> list[int]:
    """The k at which the page's PSNR curve is measured: 1..K, or CURVE_POINTS spread over it (1 and K kept)."""
    if max_tokens <= CURVE_POINTS:
        return list(range(1, max_tokens + 1))
    return sorted({int(round(x)) for x in np.linspace(1, max_tokens, CURVE_POINTS)})


@router.post("/ui/curve", dependencies=KNOWN_QUERY_ONLY)
async def psnr_curve(request: Request, resize: Annotated[codec.Resize, Query()] = "crop") -> dict[str, Any]:
    """One raw image body -> {"num_tokens": [k, ...], "psnr": [dB, ...]}: its reconstruction's PSNR from its first
    k tokens, at every k of curve_lengths(K); for the page's curve. 422 for a model that is not prefix-decodable.

    Costs one encode and up to CURVE_POINTS decodes of one image, through the batcher like any request, CURVE_CHUNK
    at a time, with at most CURVES_AT_ONCE curves measured at once (a curve waits for its turn within the request's
    timeout, else 503 busy); a client gone meanwhile is dropped (a 499), as on /encode."""
    svc: Any = request.app.state.service
    eng = svc.engine
    if not getattr(eng, "prefix_decodable", False):
        refuse_prefixes(eng.name, eng.num_tokens, "a PSNR curve over the number of tokens")

    body = await _image_body(request)

    async def curve() -> dict[str, Any]:
        deadline = time.monotonic() + svc.settings.request_timeout_s
        pixels = await _one_image(request, body, resize)
        try:
            async with asyncio.timeout(remaining(deadline)):
                await svc.curve_slots.acquire()
        except TimeoutError:
            raise CurvesBusy(f"{CURVES_AT_ONCE} PSNR curves are being measured and this one's turn did not come "
                             "within the request's timeout; retry later", headers={"Retry-After": "1"}) from None
        try:
            (tokens,) = await svc.batcher.submit("encode", [pixels], remaining(deadline))
            lengths = curve_lengths(eng.num_tokens)
            decoded: list[np.ndarray] = []
            for i in range(0, len(lengths), CURVE_CHUNK):
                decoded += await svc.batcher.submit("decode", [tokens[:k] for k in lengths[i:i + CURVE_CHUNK]],
                                                    remaining(deadline))
        finally:
            svc.curve_slots.release()
        measured = psnr(np.stack(decoded), np.broadcast_to(pixels, (len(lengths), *pixels.shape)))
        return {"num_tokens": lengths, "psnr": [round(float(p), 3) for p in measured]}

    return await unless_disconnected(request, curve())
