"""The baseline `titok bench` compares the service with: a plain per-request FastAPI endpoint around the same model.

`python -m titok.bench.plain --port 8002` serves POST /encode (a raw image body -> `{"tokens": [[K ids]]}`) and
POST /decode (`{"tokens": [K ids]}` -> image/png) the way a first FastAPI wrapper of a model is written: the
model called in the thread pool (as FastAPI runs a plain `def` route), one call per request, no batching, no
queue bound. It
uses the service's own image decoding and PNG encoding (titok.core.codec) and the same artifact in the same dtype,
so the comparison is of the serving design alone. A measuring tool: no limits, no auth, no error shapes.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from ..core import codec
from ..core.artifact import load_artifact, resolve_device
from ..core.cpus import available_cpus
from ..core.models import resolve_model
from ..settings import Settings


def build_plain_app(settings: Settings) -> FastAPI:
    """The plain app for the artifact, device, dtype, torch threads and PNG level of `settings` (TITOK_*)."""
    device = resolve_device(settings.device)
    dtype = settings.dtype if settings.dtype != "auto" else "float32"
    module, meta = load_artifact(resolve_model(settings.model_source), device, dtype)
    torch.set_num_threads(settings.torch_threads or available_cpus())
    size = int(meta["image_size"])
    app = FastAPI()

    def encode(body: bytes) -> list[list[int]]:
        image = codec.load_image(body, size)
        with torch.inference_mode():
            return module.encode(torch.from_numpy(image[None]).to(device)).cpu().tolist()

    def decode(tokens: list[int]) -> bytes:
        with torch.inference_mode():
            pixels = module.decode(torch.tensor([tokens], dtype=torch.int64, device=device)).cpu().numpy()
        return codec.encode_png(np.ascontiguousarray(pixels[0]), settings.png_compress_level)

    # The body is read on the event loop, the work runs in Starlette's thread pool: what FastAPI does for a plain
    # `def` route (which could not take a raw image body itself).
    @app.post("/encode")
    async def encode_route(request: Request) -> Response:
        tokens = await run_in_threadpool(encode, await request.body())
        return Response(json.dumps({"tokens": tokens}), media_type="application/json")

    @app.post("/decode")
    async def decode_route(request: Request) -> Response:
        png = await run_in_threadpool(decode, json.loads(await request.body())["tokens"])
        return Response(png, media_type="image/png")

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.get("/metrics")
    def metrics() -> Response:  # titok bench reads batch figures from /metrics: this app has none
        return Response("", media_type="text/plain")

    return app


def main(argv: list[str] | None = None) -> int:
    from ..__main__ import uvicorn_config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8002)
    args = p.parse_args(argv)
    settings = Settings()  # TITOK_* from the environment, as `titok serve`
    uvicorn.Server(uvicorn_config(build_plain_app(settings), settings, args.host, args.port)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
