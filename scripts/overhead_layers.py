"""Where a one-item request's event-loop time goes: the same load against servers of growing layers, in one run.

    python scripts/overhead_layers.py --requests 4000 --rounds 2

Each server answers a one-sequence `.npy` POST /decode with a `.npy` of pixels, on the service's own uvicorn
configuration (httptools with its head bounds, uvloop), one at a time on a free port:

- asgi: a bare ASGI app that reads the body, parses the `.npy` and writes a fixed `.npy` answer;
- fastapi: the same route in a bare FastAPI app (FastAPI's own middleware, routing, a Request);
- context: that app inside the service's RequestContext (request id, body limits and deadline, metrics, the
  access-log line), access log on;
- context, no access log: the same with the access logger above INFO;
- service: the whole service (titok.bench.instant: every route, middleware, batcher and codec) around an instant
  stand-in for the model.

Closed loop at `--concurrency`, the load generator of `titok bench` (titok.bench.loadgen) in this process;
each cell is the server's main-thread (event loop) CPU ms per request, least of the rounds, read from /proc.
Linux only; prints a markdown table, asserts nothing. README, "Where a request's time goes".
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import httpx
import numpy as np
from fastapi import FastAPI, Request, Response  # module level: FastAPI resolves the route's annotations here

from titok.bench import loadgen
from titok.core.arrays import NPY, read_npy, write_npy

LAYERS = ("asgi", "fastapi", "context", "context, no access log", "service")
PIXELS = np.zeros((1, 128, 128, 3), np.uint8)  # the default model's answer to one sequence


def _bare_asgi():  # type: ignore[no-untyped-def]
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        if scope["path"] == "/readyz":
            out = b"ready"
        else:
            read_npy(body)
            out = write_npy(PIXELS)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", NPY.encode()), (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out})

    return app


def _bare_fastapi(context: bool, access_log: bool):  # type: ignore[no-untyped-def]
    from titok.server.metrics import Metrics
    from titok.server.middleware import RequestContext, configure_logging

    app = FastAPI(redirect_slashes=False, docs_url=None, redoc_url=None,
                  telemetry={"tracing": False, "metrics": False, "logs": False})

    @app.post("/decode")
    async def decode(request: Request) -> Response:
        read_npy(await request.body())
        return Response(write_npy(PIXELS), media_type=NPY)

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    if context:
        configure_logging("json")
        if not access_log:
            logging.getLogger("titok.access").setLevel(logging.WARNING)
        app.add_middleware(RequestContext, metrics=Metrics(32), max_body_bytes=1 << 20, body_timeout_s=30.0,
                           max_header_bytes=32768)
    return app


def serve(layer: str, port: int) -> None:
    """Run one layer's server until killed (the child side of this script)."""
    if layer == "service":
        from titok.bench import instant

        instant.main(["--port", str(port)])
        return
    import uvicorn

    from titok.__main__ import uvicorn_config
    from titok.settings import Settings

    app = _bare_asgi() if layer == "asgi" else _bare_fastapi(layer != "fastapi", layer == "context")
    uvicorn.Server(uvicorn_config(app, Settings(), "127.0.0.1", port)).run()


def main_thread_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process's main thread (Linux /proc)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(layer: str, requests: int, concurrency: int) -> tuple[float, float]:
    """(event-loop CPU ms per request, requests/s) of one layer's server under the closed loop."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, __file__, "--serve", layer, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"overhead_layers: the {layer!r} server did not start")
            time.sleep(0.2)
        tokens = np.arange(32, dtype=np.int64)
        reqs = [loadgen.post(url, "/decode", write_npy((tokens + i)[None] % 4096), NPY, NPY) for i in range(16)]
        loadgen.run(partial(loadgen.closed_loop, url, reqs, concurrency, min(500, requests)))  # warm
        c0 = main_thread_cpu_s(proc.pid)
        tally, seconds = loadgen.run(partial(loadgen.closed_loop, url, reqs, concurrency, requests))
        if tally.failed:
            raise SystemExit(f"overhead_layers: {tally.failed} requests failed against {layer!r}")
        return 1000 * (main_thread_cpu_s(proc.pid) - c0) / tally.ok, tally.ok / seconds
    finally:
        proc.kill()
        proc.wait(30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--serve", choices=LAYERS, help=argparse.SUPPRESS)  # the child: run one layer's server
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return 0
    out = sys.stdout.write
    cpu: dict[str, float] = {}
    rate: dict[str, float] = {}
    for r in range(args.rounds):  # layers interleaved, so a busy neighbour hurts each alike
        for layer in LAYERS:
            ms, per_s = measure(layer, args.requests, args.concurrency)
            cpu[layer], rate[layer] = min(cpu.get(layer, float("inf")), ms), max(rate.get(layer, 0.0), per_s)
            out(f"round {r + 1} {layer}: {ms:.3f} event-loop CPU ms/request, {per_s:.0f} requests/s\n")
            sys.stdout.flush()
    out(f"\n| one-sequence .npy /decode, c={args.concurrency}, {args.requests} requests (least/best of "
        f"{args.rounds}) | event-loop CPU ms per request | requests/s |\n|---|---|---|\n")
    for layer in LAYERS:
        out(f"| {layer} | {cpu[layer]:.3f} | {rate[layer]:.0f} |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
