"""Every setting of the service, read from the environment with the prefix TITOK_ (one source of truth)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .core.models import BUNDLED
from .keys import parse_keys

DEFAULT_MODEL_PATH = BUNDLED["default"]
# Most threads a thread setting takes: far above any machine's cores, far below what crashes a process (100,000
# torch threads ended `titok serve` with a segmentation fault, and thousands exhaust the host's thread limit).
MAX_THREADS = 1024

_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}


class Settings(BaseSettings):
    """Service settings; each field can be set as TITOK_<NAME> (e.g. TITOK_MAX_BATCH_SIZE=16)."""

    model_config = SettingsConfigDict(env_prefix="TITOK_", extra="ignore", protected_namespaces=())

    model_path: Path = Field(DEFAULT_MODEL_PATH, description="TorchScript artifact to serve (default: bundled model).")
    model: str = Field("", description="Model to serve by name: a Hugging Face Hub repository (owner/name[@revision], "
                       "fetched, converted once and cached) or an artifact path; overrides TITOK_MODEL_PATH.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present, else CPU.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Compute dtype of the transformer (the quantizer is always fp32). auto: a timed probe at "
        "start-up picks bfloat16 on CUDA (where supported) and on a CPU where it measures faster than float32 "
        "(AMX/AVX512-BF16), else float32. float32/bfloat16/float16 (or fp32/bf16/fp16) are honoured on every "
        "device, with a logged warning when the probe measured them slower. float32 gives the exact tokens.")
    max_batch_size: int = Field(32, ge=1, le=4096, description="Most items (images or token sequences) per model call.")
    max_batch_delay_ms: float = Field(
        5.0, ge=0, le=10_000, description="Longest time the oldest queued item waits for its batch to fill.")
    max_queue_size: int = Field(
        512, ge=1, description="Most items waiting; beyond it requests are refused at once with 503 + Retry-After.")
    request_timeout_s: float = Field(
        30.0, gt=0, description="Per-request deadline; items still queued past it are dropped (504).")
    body_timeout_s: float = Field(
        30.0, gt=0, description="Longest time a request head, and then its body, may take to arrive (408); a "
                                "connection that sends nothing is closed after it, as is one whose body does not "
                                "end this long after an early answer, or whose client reads none of its answer "
                                "for this long.")
    drain_grace_s: float = Field(
        5.0, ge=0, description="After SIGTERM: seconds to keep accepting (readiness 503, new work 503) before "
                                "closing the listener, so a load balancer can notice.")
    max_upload_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Largest request body accepted (413).")
    max_inflight_upload_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="Most bytes of request bodies held at once, over every request being "
        "received or served (its declared Content-Length, or what has arrived); a request that would pass it is "
        "refused at once with 503 uploads_busy + Retry-After. At least TITOK_MAX_UPLOAD_BYTES.")
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, le=16 * 1024 * 1024, description="Largest request line plus headers: a longer request "
        "head is answered 400 and its connection closed before the app sees it (titok.server.protocol).")
    max_images_per_request: int = Field(64, ge=1, description="Most images or token sequences in one request (422).")
    max_image_pixels: int = Field(
        50_000_000, ge=1, description="Largest width x height of an uploaded image, checked before decoding (413).")
    max_request_pixels: int = Field(
        200_000_000, ge=1, description="Most decoded pixels (width x height, summed over its images) in one request, "
        "checked from the image headers before decoding (413).")
    model_workers: int = Field(
        0, ge=0, le=64, description="Model calls (batches) that may run at once; 0: 1 on a GPU, on a CPU one per "
        "usable CPU (affinity, cgroup quota) up to 2.")
    torch_threads: int = Field(
        0, ge=0, le=MAX_THREADS, description="torch intra-op threads of each model call; 0: the usable CPUs "
        "(affinity, cgroup quota) shared out among the model workers.")
    codec_threads: int = Field(
        0, ge=0, le=MAX_THREADS, description="Threads for image decoding and PNG encoding; 0: the number of usable "
        "CPUs (affinity, cgroup quota).")
    png_compress_level: int = Field(
        1, ge=0, le=9, description="zlib level of returned PNGs: 1 is ~5x faster than Pillow's 6, ~10% larger.")
    ui: bool = Field(True, description="Serve the web page at / (false: API only, / is a 404).")
    log_format: Literal["json", "text"] = Field("json", description="One log line per request, as JSON or text.")
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="API keys that may call the service: comma-separated, or @FILE with one key a line; "
                        "none: no authentication (the service is open).")
    metrics_auth: bool = Field(False, description="With API keys, require a key for /metrics too.")
    host: str = Field("127.0.0.1", description="Address to bind (use 0.0.0.0 inside a container).")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind.")

    @property
    def model_source(self) -> str | Path:
        """What to load: TITOK_MODEL when set, else TITOK_MODEL_PATH (titok.core.models.resolve_model reads it)."""
        return self.model or self.model_path

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype_alias(cls, v: object) -> object:
        return _DTYPE_ALIASES.get(v.lower(), v.lower()) if isinstance(v, str) else v

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys(cls, v: object) -> object:
        return parse_keys(v) if isinstance(v, str | list | tuple) else v

    @field_validator("max_inflight_upload_bytes")
    @classmethod
    def _inflight_holds_one_upload(cls, v: int, info: ValidationInfo) -> int:
        largest = info.data.get("max_upload_bytes")
        if largest is not None and v < largest:
            raise ValueError(f"must be at least TITOK_MAX_UPLOAD_BYTES ({largest}), or no upload of that size could "
                             "ever be received")
        return v

    @field_validator("device", "log_format", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.lower() if isinstance(v, str) else v


def describe_invalid(error: ValidationError, options: Iterable[str] = ()) -> str:
    """One line naming each wrong value of a Settings validation: `--dtype: why` for a field a command-line option
    gave (its name in `options`), else the variable, `TITOK_MODEL_WORKERS: why`; joined by "; "."""
    def where(err: Any) -> str:
        field = "_".join(map(str, err["loc"]))
        return f"--{field.replace('_', '-')}" if field in options else f"TITOK_{field.upper()}"

    return "; ".join(f"{where(err)}: {err['msg']}" for err in error.errors())


def settings_with_dtype(prog: str, dtype: str | None) -> Settings | None:
    """The settings (TITOK_* variables) with a command's `--dtype` over TITOK_DTYPE; None after writing one line to
    stderr naming each value that is wrong (`prog: --dtype: why`, `prog: TITOK_MODEL_WORKERS: why`), for the caller
    to exit 2."""
    import sys

    given = {"dtype": dtype} if dtype else {}
    try:
        return Settings(**given)
    except ValidationError as e:
        sys.stderr.write(f"{prog}: {describe_invalid(e, given)}\n")
        return None
