"""Helpers for the service tests: settings around an artifact, a fake engine, a live uvicorn server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn

from titok.__main__ import uvicorn_config
from titok.settings import Settings


def make_settings(model_path: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {"model_path": model_path, "device": "cpu", "dtype": "float32", "torch_threads": 1,
                            "codec_threads": 1, "model_workers": 2,
                            "max_batch_size": 8, "max_batch_delay_ms": 0, "max_images_per_request": 4,
                            "max_upload_bytes": 256 * 1024, "max_image_pixels": 50_000_000}
    return Settings(**{**base, **overrides})


class FakeEngine:
    """Stands in for titok.core.engine.Engine: echoes shapes, can be held at a gate or made to fail."""

    name, image_size, num_tokens, codebook_size = "fake", 32, 8, 64
    content_hash = "fa4e" * 16

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_next = False
        self.batches: list[int] = []
        self._thread = ThreadPoolExecutor(max_workers=1)

    def submit(self, op: str, batch: np.ndarray) -> Future[np.ndarray]:
        return self._thread.submit(self._run, op, batch)

    def _run(self, op: str, batch: np.ndarray) -> np.ndarray:
        self.batches.append(len(batch))
        self.entered.set()
        assert self.gate.wait(timeout=30)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the model broke")
        if op == "encode":
            return np.zeros((len(batch), self.num_tokens), np.int64)
        return np.zeros((len(batch), self.image_size, self.image_size, 3), np.uint8)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "image_size": self.image_size, "num_tokens": self.num_tokens,
                "codebook_size": self.codebook_size, "content_hash": self.content_hash, "device": "cpu"}


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """A real uvicorn server in a thread on a free loopback port (no signals: not the main thread)."""
    with serving_server(app) as (url, _):
        yield url


@contextmanager
def serving_server(app: Any, **config: Any) -> Iterator[tuple[str, uvicorn.Server]]:
    """`serving`, with the uvicorn.Server itself: (the base URL, the server); `config`: uvicorn.Config attributes
    to change (e.g. timeout_keep_alive)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The configuration `titok serve` runs (its HTTP parser and limits), without its signal handling; an app
    # wrapped in another ASGI layer gets the default settings' limits.
    svc = getattr(getattr(app, "state", None), "service", None)
    cfg = uvicorn_config(app, svc.settings if svc is not None else Settings(), "127.0.0.1", port)
    for name, value in config.items():
        setattr(cfg, name, value)
    server = uvicorn.Server(cfg)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(6000):
        if server.started or not thread.is_alive():
            break
        threading.Event().wait(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(60)


def open_request(url: str, path: str, ctype: str, length: int, body: bytes, rid: str) -> socket.socket:
    """A raw POST on a connection of its own: the headers and the first bytes of the body; the rest is the caller's."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ctype}\r\nContent-Length: {length}\r\n"
                 f"X-Request-ID: {rid}\r\n\r\n".encode() + body)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Everything the server writes until it closes the connection: (status, headers, body)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body
