"""The web page at `/`: this folder's static files, and one helper route that shows the model's exact input.

The page (index.html, style.css and three JavaScript modules: no build step, nothing from a CDN) talks to the
service's own /info, /encode and /decode. app.py includes this router only when TITOK_UI is true.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.exceptions import HTTPException

from ...core import codec
from ...errors import EmptyBody
from .. import decoding
from ..routes import KNOWN_QUERY_ONLY, refuse_declared_over, unless_disconnected

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


@router.post("/ui/input", dependencies=KNOWN_QUERY_ONLY)
async def model_input(request: Request, resize: Annotated[codec.Resize, Query()] = "crop") -> Response:
    """One raw image body -> the uint8 (S, S, 3) array the model is given for it, as PNG.

    The page compares the reconstruction with this, so its PSNR is the service's own: a browser-side resize
    differs from Pillow's, cannot honour every format (TIFF) and handles alpha and 16-bit samples its own way.
    """
    svc: Any = request.app.state.service
    s = svc.settings
    refuse_declared_over(request, s.max_upload_bytes)
    body = await request.body()  # the middleware bounds it, times it out and counts a hang-up as a 499
    if not body:
        raise EmptyBody("the body is empty: send one image as the raw body")

    async def model_input_png() -> bytes:
        # Through the same fair queue, pixel budget and deadline as /encode: the page's door is no way around them.
        (pixels,) = await decoding.decode_images(
            svc.decode_queue, [body], svc.engine.image_size, resize, max_image_pixels=s.max_image_pixels,
            max_request_pixels=s.max_request_pixels, deadline=time.monotonic() + s.request_timeout_s)  # (S, S, 3)
        return await asyncio.get_running_loop().run_in_executor(svc.codec_pool, codec.encode_png, pixels,
                                                                s.png_compress_level)

    # A client gone while its image waits or decodes: the image is dropped (a 499), as on /encode.
    return Response(await unless_disconnected(request, model_input_png()), media_type="image/png")
