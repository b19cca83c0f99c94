"""HTTP routes: thin; validation at the edge, codec work in the pool, model work through the batcher."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.datastructures import UploadFile

from ..core import arrays, codec
from ..core.arrays import NPY
from ..core.artifact import token_dtype
from ..errors import (
    ClientGone,
    DeadlineExceeded,
    Draining,
    EmptyBody,
    InvalidImage,
    InvalidRequest,
    InvalidTokens,
    MalformedMultipart,
    NotAcceptable,
    NotReady,
    PayloadTooLarge,
    TooManyImages,
    UnsupportedMediaType,
)
from . import budgets, decoding, openapi
from .answers import check_model, model_headers
from .middleware import declared_length, too_large
from .schemas import (
    IMAGE_FILE,
    MODEL_HASH,
    NPY_BODY,
    PSNR_HEADER,
    TIMING_HEADERS,
    DecodeManyResponse,
    DecodeRequest,
    EncodeResponse,
    Status,
    errors,
)

router = APIRouter()
T = TypeVar("T")


def _service(request: Request, work: bool = True) -> Any:
    svc = request.app.state.service  # new work while draining never gets here: see drain.DrainGate
    if work and not svc.ready:
        raise NotReady("the model is not loaded and warmed up yet", headers={"Retry-After": "1"})
    return svc


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work` in this task, cancelling it (so its queued items are skipped) if the client hangs up.

    Raises ClientGone (499, never sent) when the client went away first. A watcher task reads the connection;
    on a disconnect it cancels this task, which `work` sees as a CancelledError at its await, the same as a
    cancellation from the server. Read the body before calling this: the watcher would take its messages.
    """
    current = asyncio.current_task()
    assert current is not None
    gone = False

    async def disconnected() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        current.cancel()

    watcher = asyncio.ensure_future(disconnected())
    try:
        return await work
    except asyncio.CancelledError:
        # Ours (the watcher's) only if nobody else cancelled this task too: uncancel() counts the requests.
        if gone and current.uncancel() == 0:
            request.app.state.service.metrics.rejections.labels("client_disconnected").inc()
            raise ClientGone("the client closed the connection before the answer was ready") from None
        raise
    finally:
        watcher.cancel()


async def known_query_only(request: Request) -> None:
    """422 for a query parameter the route does not take (`/decode?quality=true` was silently ignored).

    async: FastAPI runs a plain-def dependency in a worker thread, a hop that cost a one-image /encode about 7% of
    the event loop's time."""
    if not request.scope.get("query_string"):
        return
    route = request.scope.get("route")
    declared = {p.alias for p in getattr(getattr(route, "dependant", None), "query_params", [])}
    # and those the route reads itself, declared in its OpenAPI (the token budgets of /encode, which refuse a
    # repeated value themselves, as invalid_budget)
    taken = declared | {p["name"] for p in (getattr(route, "openapi_extra", None) or {}).get("parameters", [])
                        if p.get("in") == "query"}
    unknown = sorted(set(request.query_params) - taken)
    if unknown:
        raise InvalidRequest(f"{request.url.path} does not take the query parameter(s) {', '.join(unknown)}; "
                             f"it takes {', '.join(sorted(taken)) or 'none'}")
    # one value each: FastAPI takes the last of `?resize=pad&resize=crop` without a word (the budgets say so too)
    twice = sorted(name for name in declared if len(request.query_params.getlist(name)) > 1)
    if twice:
        raise InvalidRequest(f"the query parameter(s) {', '.join(twice)} are given more than once; give each once")


KNOWN_QUERY_ONLY = [Depends(known_query_only)]


def refuse_declared_over(request: Request, max_bytes: int) -> None:
    """413 for a Content-Length over the upload limit, before a byte of the body is read."""
    if declared_length(request.headers.get("content-length")) > max_bytes:
        raise PayloadTooLarge(too_large(max_bytes))


async def _uploaded_images(request: Request, max_images: int) -> list[bytes]:
    ctype = _media_type(request)
    if ctype == "multipart/form-data":
        async with request.form(max_files=max(1000, max_images + 1)) as form:
            parts = form.getlist("images")
            if len(parts) > max_images:
                raise TooManyImages(f"{len(parts)} images in one request; the limit is {max_images}")
            if not parts:
                names = sorted({str(name) for name in form})
                if names:
                    shown = ", ".join(repr(n if len(n) <= 40 else n[:40] + "...") for n in names[:5])
                    raise EmptyBody(f"no images: the form's parts are named {shown}; send the images as parts "
                                    "named 'images'")
                headers = request.headers
                if declared_length(headers.get("content-length")) > 0 or headers.get("transfer-encoding"):
                    raise MalformedMultipart("the multipart body holds no complete part: check that the boundary "
                                             "in Content-Type is the body's and that the body ends with the closing "
                                             "--BOUNDARY-- line")
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
                                   f"with parts named 'images', a raw body with an image/* content type, or {NPY}")
    return [body]


def _media_type(request: Request, default: str = "") -> str:
    return request.headers.get("content-type", default).split(";")[0].strip().lower()


def remaining(deadline: float) -> float:
    """Seconds left until `deadline` (time.monotonic()); DeadlineExceeded (504) once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("the request timeout (TITOK_REQUEST_TIMEOUT_S) passed before its items were queued",
                               rejection="deadline")
    return left


async def _images_to_encode(request: Request, svc: Any, resize: codec.Resize) -> tuple[list[Any], float, float]:
    """The request's images as uint8 (S, S, 3) arrays, its deadline (monotonic) and the seconds spent decoding."""
    s, eng = svc.settings, svc.engine
    refuse_declared_over(request, s.max_upload_bytes)
    if _media_type(request) == NPY:
        images = arrays.parse_images(await request.body(), eng.image_size, s.max_images_per_request)
        request.state.items = len(images)
        return images, time.monotonic() + s.request_timeout_s, 0.0
    blobs = await _uploaded_images(request, s.max_images_per_request)
    request.state.items = len(blobs)
    deadline = time.monotonic() + s.request_timeout_s  # covers decoding: a flood of pixels ends in a 504
    t0 = time.perf_counter()
    images = await unless_disconnected(request, decoding.decode_images(
        svc.decode_queue, blobs, eng.image_size, resize, max_image_pixels=s.max_image_pixels,
        max_request_pixels=s.max_request_pixels, deadline=deadline,
        # one image more than the codec has threads: when one of this request's images is done, its next one is
        # already waiting under the request's key, so a request's images follow one another (decode_images)
        window=svc.decode_queue.workers + 1))
    return images, deadline, time.perf_counter() - t0


@router.post("/encode", responses={200: {"model": EncodeResponse, "headers": {**TIMING_HEADERS, **PSNR_HEADER},
                                         "content": {NPY: NPY_BODY},
                                         "description": "JSON; with `Accept: application/x-npy` a .npy of tokens"},
                 **errors(400, 406, 408, 413, 415, 422, 431, 499, 500, 503, 504)},
             openapi_extra={"parameters": budgets.BUDGET_PARAMETERS, "requestBody": {"required": True, "content": {
                 "multipart/form-data": {"schema": {"type": "object", "properties": {"images": {
                     "type": "array", "items": IMAGE_FILE}}}},
                 "image/*": {"schema": IMAGE_FILE}, NPY: NPY_BODY}}},
             dependencies=KNOWN_QUERY_ONLY)
async def encode(request: Request, resize: Annotated[codec.Resize, Query(description=(
        "crop: shorter side to the model's size, then centre crop; pad: longer side, centred on black; "
        "stretch: both sides"))] = "crop",
                 quality: Annotated[bool, Query(description=(
                     "also decode each image's tokens in the same model run and return the PSNR (dB) of the "
                     "round trip per image (JSON field `psnr`, or header X-PSNR with a .npy answer); "
                     "doubles the model work"))] = False) -> Response:
    """Images -> token ids: multipart parts named `images` (in order), one raw `image/*` body, or a .npy
    of uint8 images at the model's size."""
    started = time.perf_counter()
    svc = _service(request)
    eng = svc.engine
    budget = budgets.budget_from_query(request, eng)  # before the upload is read: a bad budget costs nothing
    if budget.target_psnr is not None and arrays.wants_npy(request.headers.get("accept", "")):
        raise NotAcceptable(f"target_psnr gives each image its own number of tokens, which one {NPY} array "
                            "cannot hold: ask for JSON (Accept: application/json), or use num_tokens")
    images, deadline, codec_s = await _images_to_encode(request, svc, resize)
    if budget.is_set:
        return await _encode_budgeted(request, svc, images, budget, quality, deadline, started, codec_s)
    op = "roundtrip" if quality else "encode"
    results, timing = await unless_disconnected(request, svc.batcher.submit_timed(op, images, remaining(deadline)))
    tokens = [r["tokens"] for r in results] if quality else results
    psnr = [round(float(r["psnr"]), 3) for r in results] if quality else None
    for _ in tokens:
        svc.metrics.encode_tokens.observe(eng.num_tokens)
    headers = model_headers(eng.content_hash, timing, started, codec_s)
    if arrays.wants_npy(request.headers.get("accept", "")):
        if psnr is not None:
            headers["X-PSNR"] = ", ".join(f"{p:.3f}" for p in psnr)
        return Response(arrays.stack(tokens, token_dtype(eng.codebook_size)), media_type=NPY, headers=headers)
    answer = EncodeResponse(model=eng.name, content_hash=eng.content_hash, num_tokens=eng.num_tokens,
                            codebook_size=eng.codebook_size, tokens=[t.tolist() for t in tokens], psnr=psnr)
    return Response(answer.model_dump_json(exclude_none=True), media_type="application/json", headers=headers)


async def _encode_budgeted(request: Request, svc: Any, images: list[Any], budget: Any, quality: bool,
                           deadline: float, started: float, codec_s: float) -> Response:
    """The rest of /encode under num_tokens or target_psnr (see titok.server.budgets)."""
    eng = svc.engine
    done = await budgets.encode_with_budget(svc.batcher, svc.codec_pool, images, budget, quality,
                                            lambda: remaining(deadline), lambda w: unless_disconnected(request, w))
    for k in done.num_tokens:
        svc.metrics.encode_tokens.observe(k)
    headers = model_headers(eng.content_hash, done.timing, started, codec_s)
    if arrays.wants_npy(request.headers.get("accept", "")):  # num_tokens: one length for all
        if done.psnr is not None:
            headers["X-PSNR"] = ", ".join(f"{p:.3f}" for p in done.psnr)
        return Response(arrays.stack(done.tokens, token_dtype(eng.codebook_size)), media_type=NPY, headers=headers)
    num_tokens: int | list[int] = done.num_tokens if budget.target_psnr is not None else budget.num_tokens
    answer = EncodeResponse(model=eng.name, content_hash=eng.content_hash, num_tokens=num_tokens,
                            codebook_size=eng.codebook_size, tokens=[t.tolist() for t in done.tokens], psnr=done.psnr,
                            target_psnr=budget.target_psnr, reached=done.reached)
    return Response(answer.model_dump_json(exclude_none=True), media_type="application/json", headers=headers)


@router.post("/decode", responses={200: {"content": {"image/png": {}, NPY: NPY_BODY}, "model": DecodeManyResponse,
                                         "headers": TIMING_HEADERS,
                                         "description": "image/png for one sequence; JSON for a list of them or a "
                                                        ".npy body; a .npy of pixels with `Accept: application/x-npy`"},
                                   **errors(400, 408, 409, 413, 415, 422, 431, 499, 500, 503, 504)},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": DecodeRequest.model_json_schema()}, NPY: NPY_BODY}}},
             dependencies=KNOWN_QUERY_ONLY)
async def decode(request: Request) -> Response:
    """Token ids -> image (a prefix-decodable model takes 1 <= k <= K ids per sequence, each its own k; see
    /info model.prefix_decodable). `{"tokens": [K ids]}` returns image/png; `{"tokens": [[K ids], ...]}` or a .npy of
    tokens (B, K) returns `{"model", "image_size", "images": [base64 PNG, ...]}` in order, or a .npy of pixels
    when asked with `Accept: application/x-npy`. Tokens made by another model (`content_hash` in the JSON, or
    the X-Model-Hash header) are refused with 409."""
    started = time.perf_counter()
    svc = _service(request)
    s, eng = svc.settings, svc.engine
    ctype = _media_type(request, "application/json")
    if ctype != NPY and ctype != "application/json" and not ctype.endswith("+json"):
        raise UnsupportedMediaType(f"content type {ctype!r} is not supported: send application/json or {NPY}")
    limit = codec.token_body_limit(eng.num_tokens, s.max_images_per_request)
    too_long = (f"the token list is too long: the body is over {limit} bytes, and a request holds at most "
                f"{s.max_images_per_request} sequences of {eng.num_tokens} tokens")
    if declared_length(request.headers.get("content-length")) > limit:
        raise InvalidTokens(too_long)
    request.state.body_limit = (limit, InvalidTokens(too_long))
    body = await request.body()
    prefix = getattr(eng, "prefix_decodable", False)  # any 1 <= k <= K tokens per sequence
    if ctype == NPY:
        parsed = codec.TokenRequest(arrays.parse_tokens(body, eng.num_tokens, eng.codebook_size,
                                                        s.max_images_per_request, prefix=prefix), True, None)
    else:
        parsed = codec.parse_tokens(body, eng.num_tokens, eng.codebook_size, s.max_images_per_request,
                                    prefix=prefix)
    check_model({"JSON field content_hash": parsed.content_hash,
                 f"header {MODEL_HASH}": request.headers.get(MODEL_HASH)}, eng.content_hash, eng.name)
    request.state.items = len(parsed.tokens)
    pixels, timing = await unless_disconnected(
        request, svc.batcher.submit_timed("decode", list(parsed.tokens), s.request_timeout_s))
    t_codec = time.perf_counter()
    if arrays.wants_npy(request.headers.get("accept", ""), ("image/png", "application/json")):
        return Response(arrays.stack(pixels), media_type=NPY,
                        headers=model_headers(eng.content_hash, timing, started, time.perf_counter() - t_codec))
    loop = asyncio.get_running_loop()
    pngs = await asyncio.gather(*(loop.run_in_executor(svc.codec_pool, codec.encode_png, p, s.png_compress_level)
                                  for p in pixels))
    headers = model_headers(eng.content_hash, timing, started, time.perf_counter() - t_codec)
    if not parsed.nested:
        return Response(pngs[0], media_type="image/png", headers=headers)
    return Response(DecodeManyResponse(model=eng.name, content_hash=eng.content_hash, image_size=eng.image_size,
                                       images=[base64.b64encode(p).decode() for p in pngs]).model_dump_json(),
                    media_type="application/json", headers=headers)


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
                       "max_image_pixels": s.max_image_pixels, "max_request_pixels": s.max_request_pixels,
                       "max_inflight_upload_bytes": s.max_inflight_upload_bytes},
            "png_compress_level": s.png_compress_level, "formats": openapi.request_formats(request.app)}


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    body, content_type = request.app.state.service.metrics.render()
    return Response(body, media_type=content_type)
