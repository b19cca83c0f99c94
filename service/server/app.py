"""The FastAPI app: `build_app()` wires settings, engine, batcher, codec pool and metrics in a lifespan."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core.cpus import available_cpus
from ..core.engine import Engine
from ..errors import CoreError, ServiceError, answer
from ..settings import Settings
from . import openapi
from .auth import ApiKeyAuth, describe, open_paths
from .batcher import Batcher
from .decoding import DecodeQueue
from .docs import add_offline_docs
from .drain import DrainGate
from .metrics import Metrics
from .middleware import RequestContext, error_response
from .routes import router
from .ui import CURVES_AT_ONCE
from .ui import page_paths as ui_page_paths
from .ui import router as ui_router

log = logging.getLogger("titok.app")


class ServiceState:
    """What the routes need; lives on app.state.service."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine: Any = None
        self.batcher: Batcher | None = None
        self.codec_pool: ThreadPoolExecutor | None = None
        self.decode_queue: DecodeQueue | None = None
        self.ready = False
        self.draining = False
        # The page's PSNR curves measured at once (ui.CURVES_AT_ONCE): each is dozens of decodes.
        self.curve_slots = asyncio.Semaphore(CURVES_AT_ONCE)

    def start_draining(self) -> None:
        """Called from the SIGTERM handler: readiness goes false and new work is refused."""
        self.draining = True
        self.ready = False
        self.metrics.ready.set(0)
        if self.batcher is not None:
            self.batcher.flush()


def build_app(settings: Settings | None = None, engine: Any = None) -> FastAPI:
    """The app; the engine is loaded (unless given, e.g. a fake in tests) and warmed up in the lifespan."""
    settings = settings or Settings()
    metrics = Metrics(settings.max_batch_size)
    state = ServiceState(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.log(logging.INFO if settings.api_keys else logging.WARNING, describe(settings.api_keys,
                                                                                settings.metrics_auth))
        eng = engine or await asyncio.to_thread(
            Engine.load, settings.model_source, settings.device, settings.dtype, settings.torch_threads,
            workers=settings.model_workers)
        state.engine = eng
        # As many codec threads as cores by default: with the model in bf16 the codec is the larger share of an
        # /encode of photos, and measured on 2 cores (scripts/service_speed.py) 2 codec threads beside 2 torch
        # threads took less server CPU per item than 1 (README, "Compute dtype and speed").
        codec_threads = settings.codec_threads or available_cpus()
        state.codec_pool = ThreadPoolExecutor(codec_threads, thread_name_prefix="titok-codec")
        state.decode_queue = DecodeQueue(state.codec_pool, codec_threads, metrics=metrics)
        if hasattr(eng, "warmup"):
            await asyncio.to_thread(eng.warmup, settings.max_batch_size)
        metrics.set_model_info(eng.info())
        # What start-up made (the model, torch's and the libraries' modules: some 200,000 objects) lives as long as
        # the process: freezing it takes it out of the collector's full passes, which otherwise ran every few
        # hundred requests and cost a one-item request about a fifth of its event-loop time (README, "Where a
        # request's time goes").
        gc.collect()
        gc.freeze()
        state.batcher = Batcher(eng, settings.max_batch_size, settings.max_batch_delay_ms, settings.max_queue_size,
                                metrics, concurrency=getattr(eng, "workers", 1))
        state.batcher.start()
        state.ready = not state.draining
        metrics.ready.set(int(state.ready))
        log.info("ready: model %s on %s, max batch %d", eng.name, getattr(eng, "device", "?"),
                 settings.max_batch_size)
        try:
            yield
        finally:
            state.start_draining()
            await state.batcher.stop()
            state.codec_pool.shutdown(wait=True)
            if hasattr(eng, "close"):
                eng.close()
            log.info("stopped")

    # No redirects (POST /encode/ is a 404, not a 307 to a Location built from the Host header);
    # /docs from the package (docs.py), and no /redoc, which only a CDN could serve.
    # FastAPI's native OpenTelemetry is off: /metrics and the access log are this service's telemetry, and the
    # check for a configured OTel provider cost every request about 5% of the event loop's time.
    app = FastAPI(title="TiTok tokenizer service", version="0.1.0", lifespan=lifespan, redirect_slashes=False,
                  docs_url=None, redoc_url=None, telemetry={"tracing": False, "metrics": False, "logs": False},
                  description="Images <-> 1D token sequences with dynamic batching. Every error is JSON "
                              '`{"error": {"code", "message", "request_id"}}`.')
    app.state.service = state
    app.include_router(router)
    unguarded = open_paths(app.openapi_url, settings.metrics_auth)
    if settings.ui:
        app.include_router(ui_router)
        unguarded |= ui_page_paths()  # a browser cannot send a key for the page itself; its API calls carry it
    add_offline_docs(app)
    # The last added is the outermost: RequestContext, then the drain gate, then the key check, so a 401 or a
    # draining 503 is counted, logged and carries its X-Request-ID.
    app.add_middleware(ApiKeyAuth, keys=settings.api_keys, open_paths=unguarded, metrics=metrics)
    openapi.install(app, unguarded if settings.api_keys else None)
    app.add_middleware(DrainGate, state=state)
    app.add_middleware(RequestContext, metrics=metrics, max_body_bytes=settings.max_upload_bytes,
                       body_timeout_s=settings.body_timeout_s, max_header_bytes=settings.max_header_bytes,
                       max_inflight_body_bytes=settings.max_inflight_upload_bytes)
    _add_error_handlers(app)
    return app


def _error(request: Request, status: int, code: str, message: str,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return error_response(status, code, message, getattr(request.state, "request_id", ""), headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    @app.exception_handler(CoreError)
    async def service_error(request: Request, exc: ServiceError | CoreError) -> JSONResponse:
        reason = getattr(exc, "rejection", None)
        if reason is not None:
            request.app.state.service.metrics.rejections.labels(reason).inc()
        return _error(request, *answer(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
        return _error(request, 422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        code = codes.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal_error")
        messages = {404: f"no route {request.url.path}; see /docs",
                    405: f"method {request.method} is not allowed on {request.url.path}; see /docs"}
        message = messages.get(exc.status_code, str(exc.detail))
        return _error(request, exc.status_code, code, message, getattr(exc, "headers", None))
