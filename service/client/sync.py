"""`TitokClient`: the blocking client (one request at a time)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np
from PIL import Image

from .core import (
    DEFAULT_URL,
    RETRIED_TRANSPORT_ERRORS,
    Call,
    ImageLike,
    Retry,
    ServerInfo,
    TargetTokens,
    TitokError,
    any_decode_calls,
    as_image_list,
    auth_headers,
    encode_calls,
    info_json,
    joined_encoded,
    joined_images,
    next_wait,
    token_sequences,
    with_request_id,
)


class TitokClient:
    """A client of one service URL; `api_key` defaults to TITOK_API_KEY; `arrays` None: use the .npy formats
    when the server has them (True/False: always/never)."""

    def __init__(self, url: str = DEFAULT_URL, *, api_key: str | None = None, timeout: float = 120.0,
                 retry: Retry | None = None, arrays: bool | None = None) -> None:
        self.retry = retry or Retry()
        self._arrays = arrays
        self._server: ServerInfo | None = None
        self._info: dict[str, Any] | None = None
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=auth_headers(api_key), timeout=timeout)

    def __enter__(self) -> TitokClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def info(self) -> dict[str, Any]:
        """The server's /info (model, limits), fetched once."""
        if self._info is None:
            self._info = info_json(self._send({"method": "GET", "url": "/info"}))
        return self._info

    @property
    def server(self) -> ServerInfo:
        if self._server is None:
            self._server = ServerInfo.from_info(self.info(), self._arrays)
        return self._server

    def encode(self, images: ImageLike | Sequence[ImageLike], resize: str = "crop", *,
               num_tokens: int | None = None, target_psnr: float | None = None) -> np.ndarray | TargetTokens:
        """Paths, bytes, PIL images or uint8 arrays -> int64 (N, K) token ids, in order.

        A prefix-decodable model (info()["model"]["prefix_decodable"]) also takes a budget: `num_tokens=k` gives
        int64 (N, k), each image's first k tokens; `target_psnr=dB` gives a TargetTokens, each image's fewest
        tokens whose reconstruction reaches dB. Another model refuses either with TitokError not_prefix_decodable.
        """
        server = self.server
        calls = encode_calls(as_image_list(images), server, resize, num_tokens, target_psnr)
        return joined_encoded([self._run(c) for c in calls], server, num_tokens, target_psnr)

    def decode(self, tokens: Any, as_array: bool = False,
               model_hash: str | None = None) -> np.ndarray | list[Image.Image]:
        """(N, K) or (K,) token ids -> N PIL images, or uint8 (N, S, S, 3) with `as_array`. A prefix-decodable
        model takes (N, k) for any 1 <= k <= K too, or sequences of different lengths (a list of them, or the
        TargetTokens that encode(target_psnr=) gave). With `model_hash` (the `content_hash` the tokens came
        with), tokens from another model are refused (TitokError 409)."""
        sequences = token_sequences(tokens)  # what is no token ids is refused before the service is asked anything
        server = self.server
        parts = [self._run(c) for c in any_decode_calls(sequences, server, model_hash)]
        return joined_images(parts, server, as_array)

    def _run(self, call: Call) -> np.ndarray:
        return call.parse(self._send(with_request_id(call)))

    def _send(self, request: dict[str, Any]) -> httpx.Response:
        """One request, tried again after a 503 or a lost connection; a final failure is a TitokError."""
        attempt = 0
        while True:
            r, error = None, None
            try:
                r = self._http.request(**request)
            except RETRIED_TRANSPORT_ERRORS as e:
                error = e
            except httpx.HTTPError as e:  # e.g. a read timeout: the server is slow, another try adds load
                raise TitokError("connection_error", f"{type(e).__name__}: {e}") from e
            wait = next_wait(self.retry, attempt, r, error, self._http.base_url)
            if wait is None and r is not None:
                return r
            time.sleep(wait or 0.0)
            attempt += 1
