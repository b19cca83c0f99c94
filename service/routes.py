"""HTTP routes: thin; validation at the edge, codec work in the pool, model work through the batcher."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request, Response
from starlette.datastructures import UploadFile

from . import codec, openapi
from .errors import (
    ClientGone,
    Draining,
    EmptyBody,
    InvalidImage,
    InvalidTokens,
    NotReady,
    PayloadTooLarge,
    ServiceError,
    TooManyImages,
    UnsupportedMediaType,
)
from .middleware import too_large
from .schemas import DecodeManyResponse, DecodeRequest, EncodeResponse, Status, errors

router = APIRouter()
T = TypeVar("T")


def _service(request: Request, work: bool = True) -> Any:
    svc = request.app.state.service  # new work while draining never gets here: see drain.DrainGate
    if work and not svc.ready:
        raise NotReady("the model is not loaded and warmed up yet", headers={"Retry-After": "1"})
    return svc


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (so its queued items are skipped) if the client hangs up."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watcher = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this handler itself was cancelled: take the queued work with it
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        request.app.state.service.metrics.rejections.labels("client_disconnected").inc()
        raise ClientGone("the client closed the connection before the answer was ready")
    return task.result()


def _declared_length(request: Request) -> int:
    try:
        return int(request.headers.get("content-length") or 0)
    except ValueError:
        return 0


async def _uploaded_images(request: Request, max_images: int, max_bytes: int) -> list[bytes]:
    if _declared_length(request) > max_bytes:  # refuse before reading a byte of it
        raise PayloadTooLarge(too_large(max_bytes))
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        async with request.form(max_files=max(1000, max_images + 1)) as form:
            parts = form.getlist("images")
            if len(parts) > max_images:
                raise TooManyImages(f"{len(parts)} images in one request; the limit is {max_images}")
            if not parts:
                raise EmptyBody("no images: send one or more multipart parts named 'images'")
            blobs = []
            for i, part in enumerate(parts):
                if not isinstance(part, UploadFile):
                    raise InvalidImage(f"images[{i}] is a text field, not a file upload")
                blobs.append(await part.read())
            return blobs
    body = await request.body()
    if not body:
        raise EmptyBody("the body is empty: send multipart parts named 'images' or a raw image/* body")
    if not ctype.startswith("image/"):
        raise UnsupportedMediaType(f"content type {ctype or '(none)'!r} is not supported: send multipart/form-data "
                                   "with parts named 'images', or a raw body with an image/* content type")
    return [body]


def _decode_one(i: int, data: bytes, size: int, resize: codec.Resize, max_pixels: int) -> Any:
    try:
        return codec.load_image(data, size, resize, max_pixels)
    except ServiceError as e:
        e.message = f"images[{i}]: {e.message}"
        raise


@router.post("/encode", response_model=EncodeResponse, responses=errors(400, 413, 415, 422, 499, 500, 503, 504),
             openapi_extra={"requestBody": {"required": True, "content": {
                 "multipart/form-data": {"schema": {"type": "object", "properties": {"images": {
                     "type": "array", "items": {"type": "string", "format": "binary"}}}}},
                 "image/*": {"schema": {"type": "string", "format": "binary"}}}}})
async def encode(request: Request, resize: Annotated[codec.Resize, Query(description=(
        "crop: shorter side to the model's size, then centre crop; pad: longer side, centred on black; "
        "stretch: both sides"))] = "crop") -> EncodeResponse:
    """Images -> token ids: multipart parts named `images` (in order), or one raw `image/*` body."""
    svc = _service(request)
    s, eng = svc.settings, svc.engine
    blobs = await _uploaded_images(request, s.max_images_per_request, s.max_upload_bytes)
    request.state.items = len(blobs)
    loop = asyncio.get_running_loop()
    arrays = await asyncio.gather(*(loop.run_in_executor(svc.codec_pool, _decode_one, i, b, eng.image_size, resize,
                                                         s.max_image_pixels) for i, b in enumerate(blobs)))
    tokens = await _unless_disconnected(request, svc.batcher.submit("encode", list(arrays), s.request_timeout_s))
    return EncodeResponse(model=eng.name, num_tokens=eng.num_tokens, codebook_size=eng.codebook_size,
                          tokens=[t.tolist() for t in tokens])


@router.post("/decode", responses={200: {"content": {"image/png": {}}, "model": DecodeManyResponse,
                                         "description": "image/png for one sequence; JSON for a list of them"},
                                   **errors(400, 413, 415, 422, 499, 500, 503, 504)},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": DecodeRequest.model_json_schema()}}}})
async def decode(request: Request) -> Response:
    """Token ids -> image. `{"tokens": [K ids]}` returns image/png; `{"tokens": [[K ids], ...]}` returns
    `{"model", "image_size", "images": [base64 PNG, ...]}` in order."""
    svc = _service(request)
    s, eng = svc.settings, svc.engine
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise UnsupportedMediaType(f"content type {ctype!r} is not supported: send application/json")
    limit = codec.token_body_limit(eng.num_tokens, s.max_images_per_request)
    too_long = (f"the token list is too long: the body is over {limit} bytes, and a request holds at most "
                f"{s.max_images_per_request} sequences of {eng.num_tokens} tokens")
    if _declared_length(request) > limit:
        raise InvalidTokens(too_long)
    request.state.body_limit = (limit, InvalidTokens(too_long))
    body = await request.body()
    tokens, nested = codec.parse_tokens(body, eng.num_tokens, eng.codebook_size, s.max_images_per_request)
    request.state.items = len(tokens)
    pixels = await _unless_disconnected(request, svc.batcher.submit("decode", list(tokens), s.request_timeout_s))
    loop = asyncio.get_running_loop()
    pngs = await asyncio.gather(*(loop.run_in_executor(svc.codec_pool, codec.encode_png, p, s.png_compress_level)
                                  for p in pixels))
    if not nested:
        return Response(pngs[0], media_type="image/png")
    return Response(DecodeManyResponse(model=eng.name, image_size=eng.image_size,
                                       images=[base64.b64encode(p).decode() for p in pngs]).model_dump_json(),
                    media_type="application/json")


@router.head("/healthz", include_in_schema=False)  # load balancers' probes often send HEAD
@router.get("/healthz", response_model=Status)  # registered first (decorators apply bottom-up): Allow lists GET
async def healthz() -> Status:
    """The process is alive."""
    return Status(status="ok")


@router.head("/readyz", include_in_schema=False)
@router.get("/readyz", response_model=Status, responses=errors(503))
async def readyz(request: Request) -> Status:
    """Ready for traffic: the model is loaded and warmed up, and the service is not draining."""
    svc = _service(request, work=False)
    if svc.draining:
        raise Draining("draining: finishing queued work before exit")
    if not svc.ready:
        raise NotReady("warming up")
    return Status(status="ready")


@router.get("/info")
async def info(request: Request) -> dict[str, Any]:
    """Model metadata, device and batching settings."""
    svc = _service(request, work=False)
    s = svc.settings
    return {"model": svc.engine.info() if svc.engine is not None else None, "ready": svc.ready,
            "batching": {"max_batch_size": s.max_batch_size, "max_batch_delay_ms": s.max_batch_delay_ms,
                         "max_queue_size": s.max_queue_size, "request_timeout_s": s.request_timeout_s},
            "limits": {"max_upload_bytes": s.max_upload_bytes, "max_images_per_request": s.max_images_per_request,
                       "max_image_pixels": s.max_image_pixels},
            "png_compress_level": s.png_compress_level, "formats": openapi.request_formats(request.app)}


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    body, content_type = request.app.state.service.metrics.render()
    return Response(body, media_type=content_type)
