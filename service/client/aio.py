"""`AsyncTitokClient`: the asyncio client; the requests of one call run concurrently, `concurrency` at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
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


class AsyncTitokClient:
    """A client of one service URL; `api_key` defaults to TITOK_API_KEY; `arrays` None: use the .npy formats
    when the server has them (True/False: always/never); `concurrency`: requests in flight at once."""

    def __init__(self, url: str = DEFAULT_URL, *, api_key: str | None = None, timeout: float = 120.0,
                 retry: Retry | None = None, arrays: bool | None = None,
                 concurrency: int = 4) -> None:
        self.retry = retry or Retry()
        self._arrays = arrays
        self._server: ServerInfo | None = None
        self._info: dict[str, Any] | None = None
        self._slots = asyncio.Semaphore(concurrency)
        self._http = httpx.AsyncClient(base_url=url.rstrip("/"), headers=auth_headers(api_key), timeout=timeout)

    async def __aenter__(self) -> AsyncTitokClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def info(self) -> dict[str, Any]:
        """The server's /info (model, limits), fetched once."""
        if self._info is None:
            self._info = info_json(await self._send({"method": "GET", "url": "/info"}))
        return self._info

    async def server(self) -> ServerInfo:
        if self._server is None:
            self._server = ServerInfo.from_info(await self.info(), self._arrays)
        return self._server

    async def encode(self, images: ImageLike | Sequence[ImageLike], resize: str = "crop", *,
                     num_tokens: int | None = None, target_psnr: float | None = None) -> np.ndarray | TargetTokens:
        """Paths, bytes, PIL images or uint8 arrays -> int64 (N, K) token ids, in order.

        A prefix-decodable model (info()["model"]["prefix_decodable"]) also takes a budget: `num_tokens=k` gives
        int64 (N, k), each image's first k tokens; `target_psnr=dB` gives a TargetTokens, each image's fewest
        tokens whose reconstruction reaches dB. Another model refuses either with TitokError not_prefix_decodable.
        """
        server = await self.server()
        calls = encode_calls(as_image_list(images), server, resize, num_tokens, target_psnr)
        return joined_encoded(await self._run_all(calls), server, num_tokens, target_psnr)

    async def decode(self, tokens: Any, as_array: bool = False,
                     model_hash: str | None = None) -> np.ndarray | list[Image.Image]:
        """(N, K) or (K,) token ids -> N PIL images, or uint8 (N, S, S, 3) with `as_array`. A prefix-decodable
        model takes (N, k) for any 1 <= k <= K too, or sequences of different lengths (a list of them, or the
        TargetTokens that encode(target_psnr=) gave). With `model_hash` (the `content_hash` the tokens came
        with), tokens from another model are refused (TitokError 409)."""
        sequences = token_sequences(tokens)  # what is no token ids is refused before the service is asked anything
        server = await self.server()
        calls = any_decode_calls(sequences, server, model_hash)
        return joined_images(await self._run_all(calls), server, as_array)

    async def _run_all(self, calls: Iterator[Call]) -> list[np.ndarray]:
        """The calls' results in order, `concurrency` requests in flight; the next call (and its files) is made
        only when a slot is free, so memory holds a few requests, not the whole input."""
        tasks: list[asyncio.Future[np.ndarray]] = []
        try:
            for call in calls:
                await self._slots.acquire()
                tasks.append(asyncio.ensure_future(self._run(call)))
                # Released when the task ends in any way, even cancelled before it started.
                tasks[-1].add_done_callback(lambda _: self._slots.release())
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:  # after a failure, the requests still running are not waited for
                task.cancel()

    async def _run(self, call: Call) -> np.ndarray:
        return call.parse(await self._send(with_request_id(call)))

    async def _send(self, request: dict[str, Any]) -> httpx.Response:
        """One request, tried again after a 503 or a lost connection; a final failure is a TitokError."""
        attempt = 0
        while True:
            r, error = None, None
            try:
                r = await self._http.request(**request)
            except RETRIED_TRANSPORT_ERRORS as e:
                error = e
            except httpx.HTTPError as e:  # e.g. a read timeout: the server is slow, another try adds load
                raise TitokError("connection_error", f"{type(e).__name__}: {e}") from e
            wait = next_wait(self.retry, attempt, r, error, self._http.base_url)
            if wait is None and r is not None:
                return r
            await asyncio.sleep(wait or 0.0)
            attempt += 1
