"""`python -m titok` / `titok serve`: load the model (a bad file stops here), then run uvicorn, one worker.

SIGTERM: readiness goes false and new work gets 503 for TITOK_DRAIN_GRACE_S while the server still listens,
queued work is finished, exit 0 (see server/drain.py). SIGINT: the same without the grace period.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from typing import NoReturn

import uvicorn
from pydantic import ValidationError
from starlette.types import ASGIApp

from .core.engine import Engine
from .core.models import model_argument
from .errors import ModelLoadError
from .server.app import build_app
from .server.drain import DrainingServer
from .server.middleware import configure_logging
from .server.protocol import BoundedHttpToolsProtocol, bounded_httptools
from .settings import Settings, describe_invalid

log = logging.getLogger("titok.serve")


def serve(host: str | None = None, port: int | None = None, settings: Settings | None = None,
          model: str | None = None) -> int:
    """Run the service until SIGTERM/SIGINT; returns the process exit code. `model` overrides TITOK_MODEL."""
    try:
        settings = settings or Settings()
        if model:
            settings = settings.model_copy(update={"model": model})
    except ValidationError as e:
        sys.stderr.write(f"titok serve: invalid settings: {describe_invalid(e)}\n")
        return 2
    host, port = host or settings.host, settings.port if port is None else port
    problem = _unbindable(host, port)
    if problem:  # said now, not after the model has loaded and in uvicorn's words, which name neither
        sys.stderr.write(f"titok serve: {problem}\n")
        return 2
    configure_logging(settings.log_format)
    try:
        engine = Engine.load(settings.model_source, settings.device, settings.dtype, settings.torch_threads,
                             workers=settings.model_workers)
    except ModelLoadError as e:
        sys.stderr.write(f"titok serve: {e}\n")
        return 2
    app = build_app(settings, engine=engine)
    config = uvicorn_config(app, settings, host, port)
    server = DrainingServer(config, app.state.service.start_draining, settings.drain_grace_s,
                            shutdown_timeout_s(settings))
    # uvicorn re-raises the signal it caught once it has shut down; a handler of ours makes that a no-op,
    # so a drained shutdown ends with exit code 0 rather than death by signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, f: None)
    server.run()
    if not server.started:  # start-up failed (e.g. warm-up ran out of memory, port in use)
        sys.stderr.write("titok serve: the server did not start; see the log above\n")
        return 1
    _exit_drained()


def _unbindable(host: str, port: int) -> str:
    """Why the service could not listen on host:port ("" when it may: the bind itself can still fail, e.g. a port in
    use, which uvicorn reports): a port outside 0..65535 (the kernel would take 99999 modulo 65536 without a word),
    or a host name that does not resolve."""
    if not 0 <= port <= 65535:
        return f"port {port} is not a TCP port (0 to 65535; 0 picks a free one)"
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as e:
        return f"cannot listen on host {host!r}: {getattr(e, 'strerror', None) or e}"
    return ""


def uvicorn_config(app: ASGIApp, settings: Settings, host: str, port: int) -> uvicorn.Config:
    """The server's configuration: one worker, our logging, and a bound on each request's head.

    The head (request line and headers) is parsed by httptools with a byte count (titok.server.protocol): one
    that grows past TITOK_MAX_HEADER_BYTES unfinished gets a 400 (JSON, counted under endpoint "other") and a
    closed connection before the app sees it; a whole head over the limit gets a 431 from the app.
    """
    svc = getattr(getattr(app, "state", None), "service", None)  # an app from build_app: count the protocol's 400s
    refused = (lambda status: svc.metrics.requests.labels("other", str(status)).inc()) if svc is not None else None
    # ws="none": the service has no WebSocket route, so an Upgrade request is served as the plain HTTP request it
    # also is (uvicorn's WebSocket layer answered it a bare 403 text/plain, no request id, counted nowhere)
    return uvicorn.Config(app, host=host, port=port, workers=1, access_log=False, log_config=None,
                          timeout_graceful_shutdown=None, lifespan="on", ws="none",
                          http=bounded_httptools(settings.max_header_bytes, settings.body_timeout_s, refused))


def shutdown_timeout_s(settings: Settings) -> float:
    """Seconds a graceful shutdown waits, once the listener has closed, for the connections still open: a request
    that began just before has TITOK_BODY_TIMEOUT_S for its body and TITOK_REQUEST_TIMEOUT_S in the queue and the
    model, and a connection accepted just before has the protocol's settle time to send one. Past it what is left
    is closed (one warning line; DrainingServer) and the shutdown goes on: a client that stops reading its
    answers, or trickles a head and then a body each to its deadline, cannot hold the process for ever.
    Orchestrators' grace periods must exceed TITOK_DRAIN_GRACE_S plus this (the Kubernetes and compose files do;
    tests/test_deploy.py)."""
    return settings.body_timeout_s + settings.request_timeout_s + BoundedHttpToolsProtocol.shutdown_settle_s


def _exit_drained() -> NoReturn:
    """Exit 0 at once: the queue is drained and the lifespan has shut down, so nothing is left to run.

    The interpreter's own teardown (unloading torch, collecting its objects) took 0.8 s after uvicorn's
    "Finished" on an idle 2-core machine and 6 s with clients still knocking; an orchestrator's kill timer
    counts it, so it is skipped once the logs are flushed.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="titok serve", description="Serve the tokenizer over HTTP. "
                                     "Settings come from TITOK_* environment variables (listed in the README, "
                                     "section Settings; GET /info shows those in force).")
    parser.add_argument("--host", help="address to bind (default: TITOK_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default: TITOK_PORT or 8000)")
    parser.add_argument("--model", type=model_argument, metavar="NAME_OR_PATH",
                        help="a bundled model's name (default, ordered), a Hugging Face Hub name "
                             "(owner/name[@revision], see `titok models`) or an artifact path (default: TITOK_MODEL, "
                             "else TITOK_MODEL_PATH, else the bundled default)")
    args = parser.parse_args(argv)
    return serve(args.host, args.port, model=args.model)


if __name__ == "__main__":
    sys.exit(main())
