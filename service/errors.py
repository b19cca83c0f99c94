"""Errors a client can act on: each carries its HTTP status and a stable machine-readable code."""

from __future__ import annotations

from starlette.responses import JSONResponse


def error_response(status: int, code: str, message: str, request_id: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The one shape of every error answer, from route handlers and middleware alike."""
    return JSONResponse({"error": {"code": code, "message": message, "request_id": request_id}}, status,
                        headers=headers)


class ServiceError(Exception):
    """Rendered by the app as {"error": {"code", "message", "request_id"}} with `status`."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidImage(ServiceError):
    status, code = 400, "invalid_image"


class EmptyBody(ServiceError):
    status, code = 400, "empty_body"


class MalformedJSON(ServiceError):
    status, code = 400, "malformed_json"


class DuplicateHeader(ServiceError):
    status, code = 400, "duplicate_header"


class InvalidRequest(ServiceError):
    """A query parameter or header the route does not take, or one whose value it cannot use."""

    status, code = 422, "invalid_request"


class MalformedArray(ServiceError):
    status, code = 400, "malformed_npy"


class InvalidArray(ServiceError):
    status, code = 422, "invalid_array"


class ModelMismatch(ServiceError):
    status, code = 409, "model_mismatch"


class TooManyPixels(ServiceError):
    status, code = 413, "too_many_pixels"


class InvalidTokens(ServiceError):
    status, code = 422, "invalid_tokens"


class BodyTimeout(ServiceError):
    """The body did not arrive in time; the connection is closed, since the rest of it may still come."""

    status, code = 408, "body_timeout"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class HeadersTooLarge(ServiceError):
    status, code = 431, "headers_too_large"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class TooManyImages(ServiceError):
    """More images or token sequences than a request may hold: a count the schema states (maxItems), so a 422."""

    status, code = 422, "too_many_images"


class ImageTooLarge(ServiceError):
    status, code = 413, "image_too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class ClientGone(ServiceError):
    """Logged and counted only: nobody is left to read it (nginx's 499)."""

    status, code = 499, "client_closed_request"


class QueueFull(ServiceError):
    status, code = 503, "queue_full"


class Draining(ServiceError):
    status, code = 503, "draining"


class NotReady(ServiceError):
    status, code = 503, "not_ready"


class DeadlineExceeded(ServiceError):
    status, code = 504, "deadline_exceeded"


class ModelError(ServiceError):
    status, code = 500, "model_error"


class ModelLoadError(Exception):
    """The model file is missing or unusable: start-up stops with this one-line message."""
