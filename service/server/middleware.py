"""Pure ASGI middleware: request ids, body limits, request metrics, one log line per request.

`RequestContext` is the outermost layer that can answer, so every answer, a 500 included, carries
X-Request-ID and the JSON error body: an error that escapes the app is answered here, never by
Starlette's plain-text ServerErrorMiddleware. The body limit is enforced while the body streams in
(so chunked bodies are bounded too; routes also refuse an over-long Content-Length before reading
anything), and so is the body-read deadline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections import Counter
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import (
    ANSWERABLE,
    BodyTimeout,
    DuplicateHeader,
    HeadersTooLarge,
    PayloadTooLarge,
    UploadsBusy,
    answer,
)
from .metrics import Metrics


def error_response(status: int, code: str, message: str, request_id: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The one shape of every error answer, from route handlers and middleware alike."""
    return JSONResponse({"error": {"code": code, "message": message, "request_id": request_id}}, status,
                        headers=headers)

access_log = logging.getLogger("titok.access")
log = logging.getLogger("titok.app")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
ENDPOINTS = ("/encode", "/decode", "/healthz", "/readyz", "/info", "/metrics", "/docs", "/openapi.json",
             "/", "/ui/input", "/ui/curve")
# Headers that carry meaning here and are not lists (RFC 9110, 5.3): sent twice, they are refused.
SINGLE_HEADERS = frozenset({b"authorization", b"x-api-key", b"x-model-hash", b"content-type"})
CLIENT_CLOSED = 499  # nginx's status for a client that hung up before its answer; never sent


def request_id_from(header: bytes | None) -> str:
    """The client's X-Request-ID when it is short and plain, else a fresh one."""
    value = header.decode("latin-1").strip() if header else ""
    return value if _REQUEST_ID.fullmatch(value) else uuid.uuid4().hex


def head_bytes(scope: Scope) -> int:
    """The size of the request's head on the wire in bytes: its request line, header lines and blank line."""
    query = scope.get("query_string", b"")
    target = len(scope.get("raw_path") or scope["path"].encode()) + (len(query) + 1 if query else 0)  # "?" + query
    # "METHOD SP target SP HTTP/1.1 CRLF", then "name: value CRLF" per header, then the blank line's CRLF
    return len(scope["method"]) + 1 + target + 11 + sum(len(k) + len(v) + 4 for k, v in scope["headers"]) + 2


def too_large(limit: int) -> str:
    return f"the request body is over the limit of {limit} bytes (TITOK_MAX_UPLOAD_BYTES)"


def declared_length(content_length: str | bytes | None) -> int:
    """The body length a Content-Length header value declares; 0 without one (a chunked body, counted as it
    arrives) or for one that is no number (the HTTP parser refuses those before the app sees them)."""
    try:
        return max(0, int(content_length or 0))
    except ValueError:
        return 0


class RequestContext:
    """The outermost middleware: request id, the body's size, time and memory bounds, duplicate headers, the
    answer to any error raised outside the routes, metrics and the access log.

    Memory: every request's body is held until its answer (the images then decode from it), and each may be up to
    max_body_bytes, so the bodies of requests in progress are bounded together by max_inflight_body_bytes: a
    request's declared Content-Length is reserved when it begins (and any bytes past it as they arrive); one that
    would pass the bound is refused with 503 uploads_busy and Retry-After before its body is read. Sixty clients
    each sending a 32 MiB body once took the process from 0.4 to 2.6 GB (a hostile pass). The connection stays
    open: the rest of that body is read and dropped (uvicorn keeps none of a body once its answer is complete,
    and the protocol bounds its time), so that a client that sends its whole body before reading gets the 503
    rather than a reset (52 of 60 such clients saw a reset when the connection was closed at once).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int, body_timeout_s: float,
                 max_header_bytes: int, max_inflight_body_bytes: int = 2**62) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.max_header_bytes = max_header_bytes
        self.max_inflight_body_bytes = max_inflight_body_bytes
        self.inflight_body_bytes = 0  # held by every request in progress (the event loop is the only writer)

    def _hold(self, n: int) -> None:
        """Count `n` more body bytes held; UploadsBusy when that passes the bound (nothing is counted then)."""
        if n <= 0:
            return
        if self.inflight_body_bytes + n > self.max_inflight_body_bytes:
            self.metrics.rejections.labels("uploads_busy").inc()
            raise UploadsBusy(f"the request bodies being received hold {self.inflight_body_bytes} bytes; this one "
                              f"({n} more) would pass TITOK_MAX_INFLIGHT_UPLOAD_BYTES "
                              f"({self.max_inflight_body_bytes}); retry later",
                              headers={"Retry-After": "1"})
        self.inflight_body_bytes += n
        self.metrics.inflight_upload_bytes.set(self.inflight_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = request_id_from(headers.get(b"x-request-id"))
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        t0 = time.perf_counter()
        body_deadline = time.monotonic() + self.body_timeout_s
        status: list[int | None] = [None]
        received = [0]
        held = [0]  # body bytes this request counts against the bound (its declared length, then any past it)
        body_done = [False]
        disconnected = [False]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        async def limited_receive() -> Message:
            if body_done[0]:  # waiting for a disconnect after the body (see routes) has no deadline
                message = await receive()
            else:
                try:  # asyncio.timeout, not wait_for: no task per read (a one-item request has one or two reads)
                    async with asyncio.timeout(max(0.0, body_deadline - time.monotonic())):
                        message = await receive()
                except TimeoutError:
                    raise BodyTimeout(f"the request body did not arrive within {self.body_timeout_s:g} s "
                                      "(TITOK_BODY_TIMEOUT_S)", headers={"Connection": "close"}) from None
            if message["type"] == "http.disconnect":
                disconnected[0] = True
            elif message["type"] == "http.request":
                body_done[0] = not message.get("more_body", False)
                received[0] += len(message.get("body", b""))
                # A route may tighten the limit with its own error (see routes.decode).
                limit, error = state.get("body_limit") or (self.max_body_bytes, None)
                if received[0] > limit:
                    raise error or PayloadTooLarge(too_large(limit))
                if received[0] > held[0]:  # past its declared length (a chunked body): counted as it arrives
                    self._hold(received[0] - held[0])
                    held[0] = received[0]
            return message

        try:
            counts = Counter(k for k, _ in scope["headers"] if k in SINGLE_HEADERS)
            twice = sorted(k.decode("latin-1") for k, n in counts.items() if n > 1)
            if twice:  # one reader would take the first, another the last: refuse rather than guess
                raise DuplicateHeader(f"the header {', '.join(twice)} is sent more than once; send it once")
            head = head_bytes(scope)
            if head > self.max_header_bytes:  # a head that arrived whole: the protocol cuts only unfinished ones
                raise HeadersTooLarge(f"the request line and headers take {head} bytes; the limit is "
                                      f"{self.max_header_bytes} (TITOK_MAX_HEADER_BYTES)",
                                      headers={"Connection": "close"})
            # reserved before the body is read; past the upload limit it is a 413 before it is read
            declared = min(declared_length(headers.get(b"content-length")), self.max_body_bytes + 1)
            self._hold(declared)
            held[0] = declared
            await self.app(scope, limited_receive, send_with_id)
        except ClientDisconnect:  # the client hung up while its body was read: nobody to answer, not a fault
            disconnected[0] = True
        except ANSWERABLE as e:  # raised outside the app's handlers, e.g. by the drain gate's body read
            if status[0] is not None:
                raise
            code, name, message, headers = answer(e)
            await error_response(code, name, message, rid, headers)(scope, limited_receive, send_with_id)
        except Exception:
            if status[0] is not None:  # the answer is half sent: nothing to do but let the server cut it
                raise
            log.exception("unhandled error", extra={"request": {"request_id": rid}})
            await error_response(500, "internal_error", "internal error; see the server log for this request id",
                                 rid)(scope, limited_receive, send_with_id)
        finally:
            if held[0]:
                self.inflight_body_bytes -= held[0]
                self.metrics.inflight_upload_bytes.set(self.inflight_body_bytes)
            if status[0] is None and disconnected[0]:
                status[0] = CLIENT_CLOSED
            self._record(scope, state, status[0] or 500, time.perf_counter() - t0, rid)

    def _record(self, scope: Scope, state: dict[str, Any], status: int, seconds: float, rid: str) -> None:
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        self.metrics.requests.labels(endpoint, str(status)).inc()
        self.metrics.request_duration.labels(endpoint).observe(seconds)
        access_log.info("request", extra={"request": {
            "request_id": rid, "method": scope["method"], "path": scope["path"], "status": status,
            "duration_ms": round(seconds * 1000, 2), "items": state.get("items"),
            "key_id": state.get("key_id"),
            "client": (scope.get("client") or ("", 0))[0]}})


class LogFormatter(logging.Formatter):
    """JSON (one object a line) or text; the access log's fields ride in `record.request`."""

    def __init__(self, fmt: str = "json") -> None:
        super().__init__()
        self.json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                                  "logger": record.name, "msg": record.getMessage(),
                                  **getattr(record, "request", {})}
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if self.json:
            return json.dumps(fields, default=str)
        return " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)


def configure_logging(fmt: str = "json", level: int = logging.INFO) -> None:
    """Every logger, ours and every library's (uvicorn, python-multipart, ...), writes through one formatter."""
    handler = logging.StreamHandler()
    handler.setFormatter(LogFormatter(fmt))
    # The formatter writes none of the caller's file/line/function, thread or process: leave them out of every
    # record (the logging HOWTO's "Optimization" section); a one-line access record costs about a sixth less.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # libraries: warnings and errors only
    for name in ("titok", "uvicorn.error"):  # ours, and uvicorn's start/stop lines
        logging.getLogger(name).setLevel(level)
    # A library that installed its own handler would write around the formatter: send it to the root instead.
    for logger in logging.root.manager.loggerDict.values():
        if isinstance(logger, logging.Logger):
            logger.handlers[:] = []
            logger.propagate = True
