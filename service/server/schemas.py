"""Request and response models of the HTTP API, and the errors each route documents in OpenAPI."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

MODEL_HASH = "X-Model-Hash"  # the served model's content hash, on every model answer; /decode accepts it back


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_tokens, queue_full.")
    message: str = Field(description="What was wrong and what is allowed.")
    request_id: str = Field(description="The X-Request-ID of the request (accepted or generated).")


class ErrorResponse(BaseModel):
    error: ErrorBody


class EncodeResponse(BaseModel):
    model: str = Field(description="Name of the served model.")
    content_hash: str = Field(description="Content hash of the served model; /decode refuses tokens from another.")
    num_tokens: int | list[int] = Field(description=(
        "Tokens per image: K, or k with ?num_tokens=k; with ?target_psnr a list, each image's own count."))
    codebook_size: int = Field(description="Token ids are in [0, codebook_size).")
    tokens: list[list[int]] = Field(description=(
        "One sequence of token ids per image, in upload order: K of them, k with ?num_tokens=k, or each image's "
        "own count with ?target_psnr (the first tokens of its full encoding)."))
    psnr: list[float] | None = Field(None, description=(
        "With ?quality=true or ?target_psnr: PSNR (dB) of each image decoded from the tokens returned."))
    target_psnr: float | None = Field(None, description="With ?target_psnr: the target (dB), echoed.")
    reached: list[bool] | None = Field(None, description=(
        "With ?target_psnr: whether each image reached the target; one that did not keeps all K tokens."))


class DecodeRequest(BaseModel):
    tokens: list[int] | list[list[int]] = Field(description=(
        "K token ids (returns image/png), or a list of such sequences (returns JSON with base64 PNGs). A "
        "prefix-decodable model (/info model.prefix_decodable) takes any 1 <= k <= K ids per sequence, each "
        "sequence its own k."))
    content_hash: str | None = Field(None, pattern=r"^[ \t]*[0-9a-fA-F]{12,64}[ \t]*$", description=(
        "The content hash /encode named (or a prefix of 12+ hex digits); another model's is refused with 409, "
        "anything else with 422."))


class DecodeManyResponse(BaseModel):
    model: str
    content_hash: str
    image_size: int
    images: list[str] = Field(description="Base64-encoded PNGs, one per token sequence, in order.")


class Status(BaseModel):
    status: str


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the listed error statuses, all with the JSON error body."""
    text = {400: "Malformed input (empty body, undecodable image, malformed JSON or .npy, a header sent twice)",
            404: "No such route", 408: "The request body did not arrive within TITOK_BODY_TIMEOUT_S",
            409: "The tokens were made by another model (content hash)",
            413: "Body, image pixels or the request's pixels over the limit",
            406: "The answer cannot be given in the Accept type asked for",
            415: "Unsupported content type",
            431: "The request line and headers are over TITOK_MAX_HEADER_BYTES",
            422: "Invalid parameters, token ids, array dtype/shape, a token budget, or more images or sequences than "
                 "the limit",
            499: "The client closed the connection", 500: "The model failed on this batch",
            503: "Queue full, not ready or draining (see Retry-After)", 504: "Request timeout passed"}
    return {c: {"model": ErrorResponse, "description": text[c]} for c in codes}


# OpenAPI text of the .npy bodies and of the headers every model answer carries.
IMAGE_FILE = {"type": "string", "format": "binary", "minLength": 1,
              "description": "An image file: PNG, JPEG, WebP, GIF, BMP or TIFF (an empty one is refused)."}
NPY_BODY = {"schema": {"type": "string", "format": "binary", "minLength": 1, "description": (
    "A .npy file (numpy.save), never pickled. /encode: uint8 images (B, H, W, 3) at the model's size; "
    "its answer: tokens (B, K), or (B, k) with ?num_tokens=k, in the smallest unsigned type that holds the "
    "codebook. /decode: token ids (B, K) of any integer type, or (B, k) with 1 <= k <= K for a prefix-decodable "
    "model; its answer: uint8 pixels (B, H, W, 3).")}}
TIMING_HEADERS = {name: {"description": text, "schema": {"type": "string"}} for name, text in {
    MODEL_HASH: "Content hash of the served model; send it back to /decode.",
    "X-Queue-Time-Ms": "Time the request's items waited in the queue.",
    "X-Inference-Time-Ms": "Model time of the batches the items ran in.",
    "X-Batch-Size": "Size of each batch the items ran in (comma-separated when several).",
    "X-Total-Time-Ms": "From the handler's start to the answer being ready.",
    "Server-Timing": "The same times (codec, queue, model, total) in the standard format."}.items()}
PSNR_HEADER = {"X-PSNR": {"description": "With ?quality=true and a .npy answer: each image's round-trip PSNR (dB), "
                                         "comma-separated", "schema": {"type": "string"}}}
