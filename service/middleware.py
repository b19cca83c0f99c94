"""Pure ASGI middleware: request ids, the body-size limit, request metrics, one log line per request.

The body limit is enforced while the body streams in (so chunked bodies are bounded too); routes
also refuse an over-long Content-Length before reading anything.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import PayloadTooLarge
from .metrics import Metrics

access_log = logging.getLogger("titok.access")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
ENDPOINTS = ("/encode", "/decode", "/healthz", "/readyz", "/info", "/metrics", "/docs", "/openapi.json")


def request_id_from(header: bytes | None) -> str:
    """The client's X-Request-ID when it is short and plain, else a fresh one."""
    value = header.decode("latin-1").strip() if header else ""
    return value if _REQUEST_ID.fullmatch(value) else uuid.uuid4().hex


def too_large(limit: int) -> str:
    return f"the request body is over the limit of {limit} bytes (TITOK_MAX_UPLOAD_BYTES)"


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = request_id_from(headers.get(b"x-request-id"))
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        t0 = time.perf_counter()
        status = [500]
        received = [0]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                # A route may tighten the limit with its own error (see routes.decode).
                limit, error = state.get("body_limit") or (self.max_body_bytes, None)
                if received[0] > limit:
                    raise error or PayloadTooLarge(too_large(limit))
            return message

        try:
            await self.app(scope, limited_receive, send_with_id)
        finally:
            self._record(scope, state, status[0], time.perf_counter() - t0, rid)

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
    handler = logging.StreamHandler()
    handler.setFormatter(LogFormatter(fmt))
    for name in ("titok", "uvicorn.error"):  # uvicorn's start/stop lines in the same format
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
