"""The HTTP door's errors: each carries its HTTP status and a stable machine-readable code.

The core's own errors (titok.core.errors: bad images, tokens, arrays) are plain exceptions; CORE_STATUS
gives each of their codes its HTTP status, and `answer` turns either kind into (status, code, message,
headers). No web framework here: the answer's JSON body is built in service/server/answers.py.
"""

from __future__ import annotations

from .core.errors import (
    CoreError,
    ImageTooLarge,
    InvalidArray,
    InvalidBudget,
    InvalidImage,
    InvalidTokens,
    MalformedArray,
    MalformedJSON,
    ModelLoadError,
    NotPrefixDecodable,
    TooManyImages,
)

# The core's errors, re-exported for the doors.
__all__ = ["CoreError", "ImageTooLarge", "InvalidArray", "InvalidBudget", "InvalidImage", "InvalidTokens",
           "MalformedArray", "MalformedJSON", "ModelLoadError", "NotPrefixDecodable", "TooManyImages"]

# The HTTP status of each core error code.
CORE_STATUS: dict[str, int] = {
    InvalidImage.code: 400,
    MalformedJSON.code: 400,
    MalformedArray.code: 400,
    InvalidArray.code: 422,
    InvalidTokens.code: 422,
    InvalidBudget.code: 422,
    NotPrefixDecodable.code: 422,
    TooManyImages.code: 422,  # a count the schema states (maxItems), so a 422
    ImageTooLarge.code: 413,
}


class ServiceError(Exception):
    """Rendered by the app as {"error": {"code", "message", "request_id"}} with `status`."""

    status: int = 500
    code: str = "internal_error"
    # The titok_rejections_total reason the app's error handler counts this answer under; None where the code that
    # raises it counts it itself (the batcher's queue_full and deadline, the codec's codec_busy, ...) or it is no
    # refusal.
    rejection: str | None = None

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, rejection: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        if rejection is not None:
            self.rejection = rejection


class EmptyBody(ServiceError):
    status, code = 400, "empty_body"


class MalformedMultipart(ServiceError):
    """A multipart body that holds no usable part (no closing boundary, a boundary that is not the body's)."""

    status, code = 400, "bad_request"


class DuplicateHeader(ServiceError):
    status, code = 400, "duplicate_header"


class InvalidRequest(ServiceError):
    """A query parameter or header the route does not take, or one whose value it cannot use."""

    status, code = 422, "invalid_request"


class ModelMismatch(ServiceError):
    status, code = 409, "model_mismatch"


class TooManyPixels(ServiceError):
    status, code = 413, "too_many_pixels"


class BodyTimeout(ServiceError):
    """The body did not arrive in time; the connection is closed, since the rest of it may still come."""

    status, code = 408, "body_timeout"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class HeadersTooLarge(ServiceError):
    status, code = 431, "headers_too_large"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class NotAcceptable(ServiceError):
    status, code = 406, "not_acceptable"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class ClientGone(ServiceError):
    """Logged and counted only: nobody is left to read it (nginx's 499)."""

    status, code = 499, "client_closed_request"


class QueueFull(ServiceError):
    status, code = 503, "queue_full"


class Draining(ServiceError):
    status, code = 503, "draining"


class CodecBusy(ServiceError):
    """The image codec's backlog alone would outlast the request's timeout: refused at once (a load balancer
    retries elsewhere) rather than decoded too late for a 504."""

    status, code = 503, "codec_busy"


class UploadsBusy(ServiceError):
    """The request bodies being received at once would hold more than TITOK_MAX_INFLIGHT_UPLOAD_BYTES: refused
    before its body is read (a load balancer retries elsewhere)."""

    status, code = 503, "uploads_busy"


class CurvesBusy(ServiceError):
    """The page's PSNR curve waited for its turn (a few are measured at once) past the request's timeout."""

    status, code = 503, "busy"
    rejection = "busy"


class NotReady(ServiceError):
    status, code = 503, "not_ready"


class DeadlineExceeded(ServiceError):
    status, code = 504, "deadline_exceeded"


class ModelError(ServiceError):
    status, code = 500, "model_error"


ANSWERABLE = (ServiceError, CoreError)  # what a door catches and answers (never a 500)


def answer(error: ServiceError | CoreError) -> tuple[int, str, str, dict[str, str]]:
    """(HTTP status, code, message, headers) of a service or core error."""
    if isinstance(error, ServiceError):
        return error.status, error.code, error.message, error.headers
    return CORE_STATUS.get(error.code, 400), error.code, error.message, {}
