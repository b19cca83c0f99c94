"""What the sync and async clients share, without I/O: the error type, the retry policy, what the server
takes (from /info), and how inputs become requests and answers become arrays.

Each request is a `Call`: the keyword arguments of one `httpx` request and the function that turns its
answer into an array. The clients only send calls (with retries) and put the pieces back together.
"""

from __future__ import annotations

import base64
import email.utils
import io
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from ..core import codec
from ..core.arrays import NPY, as_token_ids, write_npy
from ..core.budgets import TargetTokens
from ..core.errors import CoreError, InvalidArray

DEFAULT_URL = "http://127.0.0.1:8000"
API_KEY_ENV = "TITOK_API_KEY"  # the client's, not a server setting
NPY_HEADER = 128  # bytes numpy's .npy format puts before the data (version 1, small shapes)
PART_OVERHEAD = 256  # bytes a multipart part adds around its data (boundary, headers, file name)
ImageLike = str | os.PathLike | bytes | Image.Image | np.ndarray


class TitokError(Exception):
    """Every failure of a call: the server's error code, message and request ID, and the HTTP status.

    Failures that never got an answer have `status` None: the service cannot be reached (code
    `connection_error`), or an image or the tokens were refused before sending (codes `invalid_image`, also for a
    path that cannot be read, and `invalid_tokens`, as the server says them). A URL that answers but is not a
    titok service gives `http_<status>` or `not_titok`, naming what answered.
    """

    def __init__(self, code: str, message: str, request_id: str | None = None, status: int | None = None) -> None:
        where = str(status) if status else "no answer" if code == "connection_error" else "refused before sending"
        super().__init__(f"{where} {code}: {message}" + (f" (request {request_id})" if request_id else ""))
        self.code, self.message, self.request_id, self.status = code, message, request_id, status

    @classmethod
    def from_response(cls, r: httpx.Response) -> TitokError:
        rid = r.headers.get("x-request-id")
        try:
            error = r.json()["error"]
            return cls(str(error["code"]), str(error["message"]), error.get("request_id") or rid, r.status_code)
        except (ValueError, KeyError, TypeError):  # not the service's JSON error (e.g. a proxy's page)
            ctype = _content_type(r)
            try:
                where = f"{r.request.method} {r.request.url}"
            except RuntimeError:  # a Response built without its request
                where = "the server"
            said = " ".join(r.text[:200].split()) if ctype.startswith(("text/plain", "application/json")) else ""
            return cls(f"http_{r.status_code}", f"{where} answered {r.status_code} {r.reason_phrase} with "
                       f"{ctype} ({len(r.content)} bytes), not a titok service's JSON error: is the URL that of a "
                       f"titok service, or is a proxy in the way?" + (f" It said: {said}" if said else ""),
                       rid, r.status_code)


# What is worth sending again: the request never reached the service, or it closed without answering
# (encode and decode have no side effects, so a second try is always safe).
RETRIED_TRANSPORT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class Retry:
    """A 503 (queue full, draining, starting) or a lost connection is tried again, `attempts` times in all,
    waiting what Retry-After says (else `backoff_s`, doubling), at most `max_wait_s`, plus up to 50% jitter
    so that many clients refused together do not come back together."""

    attempts: int = 5
    backoff_s: float = 0.5
    max_wait_s: float = 30.0

    def delay(self, attempt: int, retry_after: str | None) -> float | None:
        """Seconds to wait before try number `attempt + 1`, or None when the tries are used up."""
        if attempt + 1 >= self.attempts:
            return None
        wait = _seconds(retry_after)
        wait = min(self.max_wait_s, self.backoff_s * 2 ** attempt if wait is None else wait)
        return wait * random.uniform(1.0, 1.5)


def next_wait(retry: Retry, attempt: int, r: httpx.Response | None, error: Exception | None,
              url: object) -> float | None:
    """After try `attempt` gave `r` (or `error`): None if `r` is the answer, else seconds to wait before the
    next try; a final failure raises TitokError."""
    if r is not None and r.status_code != 503:
        if r.is_success:
            return None
        raise TitokError.from_response(r)
    wait = retry.delay(attempt, r.headers.get("retry-after") if r is not None else None)
    if wait is not None:
        return wait
    if r is not None:
        raise TitokError.from_response(r)
    raise TitokError("connection_error", f"cannot reach {url}: {error}") from error


def _seconds(retry_after: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    if not retry_after:
        return None
    try:
        return max(0.0, float(retry_after))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(retry_after).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def auth_headers(api_key: str | None) -> dict[str, str]:
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    return {"Authorization": f"Bearer {key}"} if key else {}


@dataclass(frozen=True)
class ServerInfo:
    """What the client needs from /info."""

    name: str
    content_hash: str  # the served model's; "" for an artifact written before fingerprints
    image_size: int
    num_tokens: int
    codebook_size: int
    max_items: int
    max_bytes: int
    arrays: bool
    max_pixels: int = 0  # pixels of the images in one request (TITOK_MAX_REQUEST_PIXELS); 0: not said, no bound

    @classmethod
    def from_info(cls, info: dict[str, Any], arrays: bool | None) -> ServerInfo:
        """Raises TitokError (code not_titok) when `info` is not a titok service's /info."""
        try:
            m, limits = info["model"], info["limits"]
            # /info lists the media types each path takes; a server with the .npy formats names them for both.
            formats = info.get("formats") or {}
            has_arrays = all(NPY in formats.get(path, ()) for path in ("/encode", "/decode"))
            return cls(str(m["name"]), str(m.get("content_hash") or ""), int(m["image_size"]),
                       int(m["num_tokens"]), int(m["codebook_size"]), int(limits["max_images_per_request"]),
                       int(limits["max_upload_bytes"]), has_arrays if arrays is None else arrays,
                       int(limits.get("max_request_pixels") or 0))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise TitokError("not_titok", f"GET /info answered without a titok service's fields ({type(e).__name__}: "
                             f"{str(e)[:80]}): is the URL that of a titok service?") from None


def _content_type(r: httpx.Response) -> str:
    """The answer's media type without parameters, or 'no content type'."""
    return r.headers.get("content-type", "").split(";")[0].strip() or "no content type"


def info_json(r: httpx.Response) -> Any:
    """/info's JSON; TitokError (not_titok) for an answer that is not JSON (a web server's page)."""
    try:
        return r.json()
    except ValueError:
        ctype = _content_type(r)
        raise TitokError("not_titok", f"GET {r.request.url} answered {r.status_code} with {ctype}, not JSON: is the "
                         "URL that of a titok service?", status=r.status_code) from None


@dataclass
class Call:
    """One request: httpx keyword arguments, and the parser of a 200 answer into an array."""

    request: dict[str, Any]
    parse: Callable[[httpx.Response], np.ndarray]


def _load_npy(r: httpx.Response) -> np.ndarray:
    return np.load(io.BytesIO(r.content), allow_pickle=False)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)  # lossless; level 1 is fast
    return buf.getvalue()


def _source_bytes(img: Image.Image) -> bytes | None:
    """The file a PIL image was opened from, while its pixels are still that file's (not loaded, first frame);
    else None. Sending the file itself gives exactly the tokens of its path (JPEG's reduced-scale decoding
    included)."""
    if not getattr(img, "tile", None) or img.format not in (*codec.FORMATS, "MPO") or img.tell() != 0:
        return None
    if getattr(img, "filename", ""):
        return Path(img.filename).read_bytes()
    fp = getattr(img, "fp", None)
    if fp is None:
        return None
    where = fp.tell()
    try:
        fp.seek(0)
        return fp.read()
    finally:
        fp.seek(where)


def _pixels(item: Image.Image | np.ndarray, size: int, resize: str) -> np.ndarray:
    """A PIL image (any mode) or an array of samples (any numeric dtype) -> the model's input, uint8
    (size, size, 3), by the service's own codec (orientation, sample rule, transparency, resize)."""
    try:
        return codec.fit(item, size, resize)  # type: ignore[arg-type]
    except CoreError as e:
        raise TitokError(e.code, e.message) from None
    except (OSError, ValueError, TypeError) as e:  # Pillow on an image it cannot load or convert
        raise TitokError("invalid_image", f"the {item.mode} image cannot be read or converted: {e}") from None


def _one_input(item: ImageLike, server: ServerInfo, resize: str) -> tuple[str, Any]:
    """("array", uint8 (S, S, 3)) or ("file", (name, bytes)) for a multipart part.

    Paths, bytes and PIL images still holding their file go as files, decoded by the server. Other PIL images
    and arrays are brought to the model's input here, by the same codec, so that any mode or sample type
    works: they go as arrays where the server takes them, else as a lossless PNG at the model's size.
    """
    if isinstance(item, Image.Image | np.ndarray):
        data = _source_bytes(item) if isinstance(item, Image.Image) else None
        if data is not None:
            return "file", (Path(getattr(item, "filename", "") or "image").name, data)
        pixels = _pixels(item, server.image_size, resize)
        return ("array", pixels) if server.arrays else ("file", ("image.png", _png(pixels)))
    if isinstance(item, bytes | bytearray | memoryview):
        return "file", ("image", bytes(item))
    if isinstance(item, str | os.PathLike):
        path = Path(item)
        try:
            return "file", (path.name, path.read_bytes())
        except OSError as e:  # a missing or unreadable path: the one exception type, before anything is sent
            raise TitokError("invalid_image", f"cannot read {os.fspath(item)}: {e.strerror or e}") from None
    raise TypeError(f"cannot send {type(item).__name__} as an image: give paths, bytes, PIL images or arrays")


def as_image_list(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    """A (N, H, W, C) array is N images; one path, bytes, PIL image or (H, W[, C]) array is one."""
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, str | os.PathLike | bytes | bytearray | memoryview | Image.Image):
        return [images]
    return list(images)


def _file_pixels(data: bytes) -> int:
    """An image file's pixel count from its header (the server's own rule); 0 where the header cannot be read (the
    server then names what is wrong with it)."""
    try:
        return codec.pixel_count(data, max_pixels=2**62)
    except (CoreError, OSError, ValueError):
        return 0


def _runs(kinds: Iterable[tuple[str, Any]], server: ServerInfo) -> Iterator[tuple[str, list[Any]]]:
    """Consecutive inputs of one kind, cut into requests of at most max_items items, max_bytes bytes and (image
    files, whose pixels the server counts before decoding) max_pixels pixels."""
    kind, run, size, pixels = "", [], 0, 0
    for k, payload in kinds:
        n = payload.nbytes if k == "array" else len(payload[1]) + len(payload[0]) + PART_OVERHEAD
        px = _file_pixels(payload[1]) if k == "file" and server.max_pixels else 0
        if run and (k != kind or len(run) == server.max_items or size + n > server.max_bytes - NPY_HEADER
                    or (server.max_pixels and pixels + px > server.max_pixels)):
            yield kind, run
            run, size, pixels = [], 0, 0
        kind, size, pixels = k, size + n, pixels + px
        run.append(payload)
    if run:
        yield kind, run


def encode_calls(images: Sequence[ImageLike], server: ServerInfo, resize: str, num_tokens: int | None = None,
                 target_psnr: float | None = None) -> Iterator[Call]:
    """Requests for `images`, in order, each made when asked for (files are read one request ahead, not all
    at once); each parses to int64 (n, K), (n, k) with `num_tokens`, or a TargetTokens with `target_psnr`
    (whose answer is always JSON: one .npy cannot hold sequences of different lengths)."""
    budget = {name: v for name, v in (("num_tokens", num_tokens), ("target_psnr", target_psnr)) if v is not None}
    accept = "application/json" if target_psnr is not None else NPY
    parse_json: Callable[[httpx.Response], Any] = (_target_tokens if target_psnr is not None
                                                   else lambda r: np.asarray(r.json()["tokens"], dtype=np.int64))
    for kind, run in _runs((_one_input(item, server, resize) for item in images), server):
        if kind == "array":  # (n, S, S, 3) uint8 in, (n, K) tokens out: no image or PNG coding on either side
            yield Call({"method": "POST", "url": "/encode", "content": write_npy(np.stack(run)), "params": budget,
                        "headers": {"Content-Type": NPY, "Accept": accept}},
                       parse_json if target_psnr is not None else lambda r: _load_npy(r).astype(np.int64))
        else:
            files = [("images", (name, data, "application/octet-stream")) for name, data in run]
            yield Call({"method": "POST", "url": "/encode", "params": {"resize": resize, **budget}, "files": files},
                       parse_json)


def _target_tokens(r: httpx.Response) -> TargetTokens:
    """/encode?target_psnr='s JSON answer -> TargetTokens."""
    body = r.json()
    return TargetTokens([np.asarray(t, dtype=np.int64) for t in body["tokens"]],
                        np.asarray(body["num_tokens"], np.int64), np.asarray(body["psnr"], np.float64),
                        np.asarray(body["reached"], bool))


def joined_encoded(parts: list[Any], server: ServerInfo, num_tokens: int | None,
                   target_psnr: float | None) -> np.ndarray | TargetTokens:
    """The pieces of one encode() put back together: (N, K), (N, k), or one TargetTokens."""
    if target_psnr is not None:
        return TargetTokens.joined(parts)
    if not parts:
        return np.empty((0, num_tokens or server.num_tokens), np.int64)
    return np.concatenate(parts)


def token_sequences(tokens: Any) -> np.ndarray | list[np.ndarray]:
    """decode()'s input: (N, k) or (k,) integers -> int64 (N, k) as as_token_array does; a list of sequences of
    different lengths (a prefix-decodable model's, e.g. TargetTokens.tokens) or a TargetTokens -> N int64
    arrays (k_i,), sent as JSON lists. The lengths and ids the server checks. Raises TitokError (code
    invalid_tokens, status None: refused before sending) for what is no sequence of integer ids."""
    if isinstance(tokens, TargetTokens):
        tokens = tokens.tokens
    if isinstance(tokens, list | tuple) and tokens and all(isinstance(t, list | tuple | np.ndarray) for t in tokens):
        lengths = {len(t) for t in tokens}
        if len(lengths) > 1:
            seqs = []
            for i, t in enumerate(tokens):
                a = _integers(t, f"tokens[{i}]")
                if a.ndim != 1:
                    raise _bad_tokens(f"tokens[{i}] must be a flat sequence of integers, not of shape {a.shape}")
                seqs.append(a)
            return seqs
    return as_token_array(tokens)


def _bad_tokens(message: str) -> TitokError:
    return TitokError("invalid_tokens", message)


def _integers(tokens: Any, what: str = "tokens") -> np.ndarray:
    """arrays.as_token_ids, its InvalidArray a TitokError invalid_tokens (refused before sending)."""
    try:
        return as_token_ids(tokens, what)
    except InvalidArray as e:
        raise _bad_tokens(e.message) from None


def ragged_decode_calls(sequences: list[np.ndarray], server: ServerInfo,
                        model_hash: str | None = None) -> Iterator[Call]:
    """Requests for sequences of different lengths (JSON lists), in order; each parses to uint8 (n, S, S, 3).
    `model_hash` goes as X-Model-Hash, as in decode_calls."""
    claim = {"X-Model-Hash": model_hash} if model_hash else {}
    for start in range(0, len(sequences), server.max_items):
        chunk = [s.tolist() for s in sequences[start:start + server.max_items]]
        yield Call({"method": "POST", "url": "/decode", "json": {"tokens": chunk}, "headers": claim},
                   _pngs_to_pixels)


def any_decode_calls(tokens: np.ndarray | list[np.ndarray], server: ServerInfo,
                     model_hash: str | None = None) -> Iterator[Call]:
    """decode_calls for an (N, k) array, ragged_decode_calls for a list of sequences."""
    if isinstance(tokens, list):
        return ragged_decode_calls(tokens, server, model_hash)
    return decode_calls(tokens, server, model_hash)


def as_token_array(tokens: Any) -> np.ndarray:
    """(N, K) or (K,) integers -> int64 (N, K). A ragged list is refused here; whether K is the model's,
    and the ids' range, the server checks (one place says what a valid token is). Raises TitokError (code
    invalid_tokens, status None) naming the value or the sequence that is off."""
    if isinstance(tokens, str | bytes):
        raise _bad_tokens(f"tokens must be integer token ids, not a {type(tokens).__name__}")
    if isinstance(tokens, list | tuple) and tokens:
        nested = [isinstance(t, list | tuple | np.ndarray) for t in tokens]
        if any(nested) and not all(nested):
            i = nested.index(not nested[0])
            raise _bad_tokens(f"tokens[{i}] is {'a sequence' if nested[i] else repr(tokens[i])} where tokens[0] is "
                              f"{'a sequence' if nested[0] else 'one id'}: send one sequence of ids, or a list of "
                              "sequences")
    a = _integers(tokens)
    if a.ndim not in (1, 2):
        raise _bad_tokens(f"tokens must be (N, k) or (k,), not of shape {a.shape}")
    return a.reshape(1, -1) if a.ndim == 1 else a


def _pngs_to_pixels(r: httpx.Response) -> np.ndarray:
    pngs = r.json()["images"]
    return np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(p))).convert("RGB")) for p in pngs])


def decode_calls(tokens: np.ndarray, server: ServerInfo, model_hash: str | None = None) -> Iterator[Call]:
    """Requests for int64 (N, K) tokens, in order; each parses to uint8 (n, S, S, 3). `model_hash`, the
    content hash of the model that made the tokens, goes as X-Model-Hash: the server refuses another's (409)."""
    claim = {"X-Model-Hash": model_hash} if model_hash else {}
    for start in range(0, len(tokens), server.max_items):
        chunk = tokens[start:start + server.max_items]
        if server.arrays:
            yield Call({"method": "POST", "url": "/decode", "content": write_npy(chunk),
                        "headers": {"Content-Type": NPY, "Accept": NPY, **claim}}, _load_npy)
        else:  # always a list of sequences, so the answer is always the JSON list of PNGs
            yield Call({"method": "POST", "url": "/decode", "json": {"tokens": chunk.tolist()}, "headers": claim},
                       _pngs_to_pixels)


def with_request_id(call: Call) -> dict[str, Any]:
    """The call's request with an X-Request-ID of its own, the same on every retry (one ID in the server log)."""
    headers = {**call.request.get("headers", {}), "X-Request-ID": uuid.uuid4().hex}
    return {**call.request, "headers": headers}


def joined_images(parts: list[np.ndarray], server: ServerInfo, as_array: bool) -> np.ndarray | list[Image.Image]:
    s = server.image_size
    pixels = np.concatenate(parts) if parts else np.empty((0, s, s, 3), np.uint8)
    return pixels if as_array else [Image.fromarray(p) for p in pixels]
