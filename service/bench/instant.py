"""The service with an instant stand-in for the model: what the service itself costs per request.

`python -m titok.bench.instant --port 8001` serves the real app (same settings, routes, middleware, batcher,
codec) around `InstantEngine`, which answers every batch at once with one real result of the model computed
at start-up. A load against it measures the event loop's and the codec's share of a request without the
model's (`scripts/service_speed.py --overhead`). A measuring tool: its answers are not the images' tokens.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import Future
from typing import Any

import numpy as np
import uvicorn

from ..core.codec import load_image
from ..core.engine import Engine
from .bench import synthetic_photos


class InstantEngine:
    """An Engine whose batches are done at once: the wrapped engine's metadata, and for every item the result
    the model gave for one synthetic photo (encode: its K token ids, int64; decode: its (S, S, 3) uint8
    reconstruction, whatever k was sent). Everything else (info, warmup, close) is the wrapped engine's."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        image = load_image(synthetic_photos(1)[0], engine.image_size)
        self._tokens = engine.submit("encode", np.stack([image])).result()[0]  # a writable batch, as the service's
        self._pixels = engine.submit("decode", self._tokens[None]).result()[0]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def submit(self, op: str, batch: np.ndarray) -> Future[Any]:
        """A done future: (B, K) int64 tokens for "encode", (B, S, S, 3) uint8 pixels for "decode"; ValueError for
        any other op (the token budgets' "roundtrip" is not stood in for)."""
        done: Future[Any] = Future()
        if op == "encode":
            done.set_result(np.repeat(self._tokens[None], len(batch), axis=0))
        elif op == "decode":
            done.set_result(np.repeat(self._pixels[None], len(batch), axis=0))
        else:
            done.set_exception(ValueError(f"InstantEngine does not stand in for {op!r}"))
        return done


def main(argv: list[str] | None = None) -> int:
    from ..__main__ import uvicorn_config
    from ..server.app import build_app
    from ..server.middleware import configure_logging
    from ..settings import Settings

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    args = p.parse_args(argv)
    settings = Settings()  # TITOK_* from the environment, as `titok serve`
    configure_logging(settings.log_format)
    engine = Engine.load(settings.model_source, settings.device, settings.dtype, settings.torch_threads,
                         workers=settings.model_workers)
    app = build_app(settings, engine=InstantEngine(engine))
    uvicorn.Server(uvicorn_config(app, settings, args.host, args.port)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
