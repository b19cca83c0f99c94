"""The bench's load generator against a canned HTTP/1.1 server: framing, keep-alive, reconnects, failures."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

from titok.bench import loadgen

CANNED = {
    b"/length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
    b"/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4;x=y\r\ndefg\r\n0\r\n\r\n",
    b"/close": b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy",
    b"/empty": b"HTTP/1.1 204 No Content\r\n\r\n",
}


@contextlib.asynccontextmanager
async def canned_server(seen: list[tuple[int, bytes, bytes]]) -> AsyncIterator[tuple[str, int]]:
    """(url, port) of a server answering each request by its path; records (connection number, path, body)."""
    connections = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        me = connections[0]
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                path = lines[0].split()[1]
                length = next((int(ln.split(b":")[1]) for ln in lines if ln.lower().startswith(b"content-length")), 0)
                body = await reader.readexactly(length)
                seen.append((me, path, body))
                writer.write(CANNED[path])
                await writer.drain()
                if path == b"/close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.close()
        await server.wait_closed()


def test_post_serialises_a_complete_request() -> None:
    raw = loadgen.post("http://127.0.0.1:9999", "/encode", b"\x00\x01", "image/png")
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /encode HTTP/1.1\r\n")
    assert b"Host: 127.0.0.1:9999" in head and b"Content-Length: 2" in head and b"Content-Type: image/png" in head
    assert body == b"\x00\x01"
    behind_proxy = loadgen.post("http://gw.example:80/titok/", "/decode", b"{}", "application/json")
    assert behind_proxy.startswith(b"POST /titok/decode HTTP/1.1\r\nHost: gw.example:80\r\n")
    decode = loadgen.payloads("http://h:1", "decode", [[1, 2, 3]])[0]
    assert decode.endswith(b'{"tokens": [1, 2, 3]}') and b"application/json" in decode


def test_connection_reads_each_framing_and_keeps_alive() -> None:
    async def scenario() -> None:
        seen: list[tuple[int, bytes, bytes]] = []
        async with canned_server(seen) as (url, port):
            conn = loadgen.Connection("127.0.0.1", port)
            assert await conn.send(loadgen.post(url, "/length", b"abc", "text/plain")) == (200, b"hello")
            assert await conn.send(loadgen.post(url, "/chunked", b"", "text/plain")) == (200, b"abcdefg")
            assert await conn.send(loadgen.post(url, "/empty", b"", "text/plain")) == (204, b"")
            assert await conn.send(loadgen.post(url, "/close", b"", "text/plain")) == (503, b"busy")
            assert conn.writer is None  # the server said Connection: close
            assert await conn.send(loadgen.post(url, "/length", b"", "text/plain")) == (200, b"hello")
            conn.close()
        assert [c for c, _, _ in seen] == [1, 1, 1, 1, 2]  # one connection until the close, then a new one
        assert seen[0][2] == b"abc"

    asyncio.run(scenario())


def test_loops_count_answers_and_failures() -> None:
    async def scenario() -> None:
        async with canned_server([]) as (url, _):
            ok, busy = loadgen.post(url, "/length", b"", "t/p"), loadgen.post(url, "/close", b"", "t/p")
            tally, seconds = await loadgen.closed_loop(url, [ok, ok, busy], concurrency=3, n=12)
            assert (tally.ok, tally.failed, tally.statuses) == (8, 4, {200: 8, 503: 4})
            assert len(tally.latencies) == 8 and seconds > 0
            tally, _ = await loadgen.open_loop(url, [ok], rate=200, seconds=0.1)
            assert (tally.ok, tally.failed) == (20, 0)

    asyncio.run(scenario())


def test_a_refused_connection_is_a_failure_not_a_crash() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{port}"
        tally, _ = loadgen.run(lambda: loadgen.closed_loop(url, [loadgen.post(url, "/x", b"", "t/p")], 2, 4))
    assert (tally.ok, tally.failed, tally.statuses) == (0, 4, {0: 4})
