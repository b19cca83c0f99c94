"""The benchmark's load generator: HTTP/1.1 keep-alive over asyncio streams, requests serialised once.

`titok bench` runs its client on the same CPU as the service it measures. A general-purpose client
(httpx) spends 10-17 ms of CPU per request here, a third of a 2-core machine at full load, and the
service would be measured on what is left. This one writes prepared bytes and parses only the
status line and the body's framing (Content-Length or chunked), so nearly all the CPU goes to the
service. It is a measuring tool, not a general client: no redirects, no TLS, no proxies.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


def post(url: str, path: str, body: bytes, content_type: str, accept: str | None = None) -> bytes:
    """One POST request, serialised: reused for every send of this payload. A path in `url` (a service
    behind a proxy at http://host/titok) prefixes `path`."""
    parts = urlsplit(url)
    target = parts.path.rstrip("/") + path
    head = (f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
            + (f"Accept: {accept}\r\n" if accept else "")
            + f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode("latin-1") + body


def payloads(url: str, op: str, items: list[Any]) -> list[bytes]:
    """encode: image bytes as raw image/* bodies; decode: token lists as {"tokens": [...]}."""
    if op == "encode":
        return [post(url, "/encode", b, "image/jpeg") for b in items]
    return [post(url, "/decode", json.dumps({"tokens": t}).encode(), "application/json") for t in items]


class Connection:
    """One keep-alive connection; `send` returns the status code and the body."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, request: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 22)
        assert self.reader is not None
        try:
            self.writer.write(request)
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            if headers.get("transfer-encoding", "").lower() == "chunked":
                body = await self._chunked()
            else:
                body = await self.reader.readexactly(int(headers.get("content-length", "0")))
            if headers.get("connection", "").lower() == "close":
                self.close()
            return status, body
        except BaseException:
            self.close()  # the stream's state is unknown: start the next request on a fresh connection
            raise

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")  # no trailers are sent by the service
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class Tally:
    """Latencies of answered requests (seconds) and the counts of 200s and of everything else."""

    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    failed: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    async def timed(self, conn: Connection, request: bytes) -> None:
        t0 = time.perf_counter()
        try:
            status, _ = await conn.send(request)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
            status = 0  # connection-level failure
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == 200:
            self.latencies.append(time.perf_counter() - t0)
            self.ok += 1
        else:
            self.failed += 1


def _endpoint(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


async def closed_loop(url: str, requests: list[bytes], concurrency: int, n: int) -> tuple[Tally, float]:
    """`concurrency` clients, each sending its next request when its last one is answered; n in all."""
    tally = Tally()
    host, port = _endpoint(url)
    it = iter(range(n))

    async def client() -> None:
        conn = Connection(host, port)
        try:
            for i in it:
                await tally.timed(conn, requests[i % len(requests)])
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return tally, time.perf_counter() - t0


async def open_loop(url: str, requests: list[bytes], rate: float, seconds: float) -> tuple[Tally, float]:
    """Requests sent on a fixed schedule whether or not earlier ones have been answered."""
    tally = Tally()
    host, port = _endpoint(url)
    idle: list[Connection] = []

    async def one(request: bytes) -> None:
        conn = idle.pop() if idle else Connection(host, port)
        await tally.timed(conn, request)
        idle.append(conn)

    n = max(1, int(rate * seconds))
    tasks = []
    t0 = time.perf_counter()
    for i in range(n):
        await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        tasks.append(asyncio.ensure_future(one(requests[i % len(requests)])))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    for conn in idle:
        conn.close()
    return tally, elapsed


def run(make: Callable[[], Awaitable[Any]]) -> Any:
    """Run a load coroutine on uvloop when it is installed (it comes with uvicorn[standard]): less client CPU."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(make())  # type: ignore[arg-type]
    return uvloop.run(make())  # type: ignore[arg-type]
