"""A hostile client against a live server, on raw sockets: hang-ups mid-upload, slow bodies, odd paths and
methods; and an unexpected error, which must still be answered as JSON with the request id."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sample_images import save
from service_helpers import FakeEngine, make_settings, open_request, read_answer, serving, serving_server

from titok.__main__ import uvicorn_config
from titok.server.app import build_app
from titok.server.drain import DrainingServer

BODY_TIMEOUT_S = 1.0
BOUNDARY = "hostile"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
PART_HEAD = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n'
             "Content-Type: image/jpeg\r\n\r\n").encode()
# (path, content type, declared length, the first bytes of the body)
UPLOADS = {
    "raw": ("/encode", "image/jpeg", 100_000, b"\xff\xd8" + b"\x00" * 998),
    "multipart": ("/encode", MULTIPART, 100_000, PART_HEAD + b"\x00" * 1000),
    "decode": ("/decode", "application/json", 50_000, b'{"tokens": [' + b"1, " * 330),
}


@pytest.fixture(scope="module")
def live(tiny_artifact: Path) -> Iterator[tuple[str, object]]:
    app = build_app(make_settings(tiny_artifact, body_timeout_s=BODY_TIMEOUT_S))
    with serving(app) as url:
        yield url, app


def requests_total(url: str, endpoint: str, status: int) -> float:
    pattern = re.compile(rf'^titok_requests_total{{endpoint="{endpoint}",status="{status}"}} (\S+)$', re.M)
    found = pattern.search(httpx.get(f"{url}/metrics").text)
    return float(found.group(1)) if found else 0.0


def access_record(caplog: pytest.LogCaptureFixture, rid: str) -> logging.LogRecord | None:
    found = [r for r in caplog.records if r.name == "titok.access" and r.request["request_id"] == rid]
    assert len(found) <= 1, found
    return found[0] if found else None


@pytest.mark.parametrize("kind", UPLOADS)
def test_a_hang_up_mid_upload_is_a_499_logged_once_without_a_traceback(
        live: tuple[str, object], caplog: pytest.LogCaptureFixture, kind: str) -> None:
    url, _ = live
    path, ctype, length, body = UPLOADS[kind]
    before = requests_total(url, path, 499), requests_total(url, path, 500)
    rid = f"hang-up-{kind}"
    with caplog.at_level(logging.INFO):
        open_request(url, path, ctype, length, body, rid).close()  # 1,000 of the declared bytes, then gone
        deadline = time.monotonic() + 30
        while access_record(caplog, rid) is None and time.monotonic() < deadline:
            time.sleep(0.02)
    record = access_record(caplog, rid)
    assert record is not None and record.request["status"] == 499
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert (requests_total(url, path, 499), requests_total(url, path, 500)) == (before[0] + 1, before[1])
    assert httpx.post(f"{url}/decode", json={"tokens": [1] * 8}, timeout=60).status_code == 200


@pytest.mark.parametrize("kind", UPLOADS)
def test_a_body_that_stalls_gets_a_408_and_the_connection_is_closed(live: tuple[str, object], kind: str) -> None:
    url, _ = live
    path, ctype, length, body = UPLOADS[kind]
    sock = open_request(url, path, ctype, length, body[:10], f"slow-{kind}")  # 10 bytes, then nothing
    t0 = time.monotonic()
    with sock:
        status, headers, answer = read_answer(sock)  # returns only because the server closes the connection
    assert status == 408 and headers["connection"] == "close" and headers["x-request-id"] == f"slow-{kind}"
    error = httpx.Response(status, content=answer).json()["error"]
    assert error["code"] == "body_timeout" and "TITOK_BODY_TIMEOUT_S" in error["message"]
    assert time.monotonic() - t0 < 30
    assert httpx.post(f"{url}/decode", json={"tokens": [1] * 8}, timeout=60).status_code == 200


def test_a_trickling_body_is_cut_at_the_deadline_not_kept_alive_by_each_byte(live: tuple[str, object]) -> None:
    url, _ = live
    sock = open_request(url, "/encode", "image/png", 1000, b"\x89PNG", "trickle")
    with sock:
        sock.settimeout(0.25)
        answer = b""
        for _ in range(200):  # one byte every 0.25 s: never idle for long, but never done (50 s if not cut)
            try:
                answer = sock.recv(65536)
                break
            except TimeoutError:
                sock.sendall(b"\x00")
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]


def test_an_unexpected_error_is_a_json_500_with_the_request_id(
        tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from titok.core import codec

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(codec, "parse_tokens", broken)
    app = build_app(make_settings(tiny_artifact), engine=FakeEngine())
    with TestClient(app) as c, caplog.at_level(logging.INFO):  # the default client re-raises what escapes the app
        r = c.post("/decode", json={"tokens": [1] * 8}, headers={"X-Request-ID": "bug-1"})
        assert r.status_code == 500 and r.headers["x-request-id"] == "bug-1"
        assert r.json()["error"] == {"code": "internal_error", "request_id": "bug-1",
                                     "message": "internal error; see the server log for this request id"}
        assert 'titok_requests_total{endpoint="/decode",status="500"} 1.0' in c.get("/metrics").text
        assert c.get("/healthz").status_code == 200
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and tracebacks[0].request["request_id"] == "bug-1"
    assert access_record(caplog, "bug-1").request["status"] == 500


@pytest.mark.parametrize("method, path", [("POST", "/encode/"), ("POST", "/decode/"), ("GET", "/healthz/"),
                                          ("GET", "/redoc")])
def test_no_redirects_a_trailing_slash_is_a_404(live: tuple[str, object], method: str, path: str) -> None:
    url, _ = live
    r = httpx.request(method, f"{url}{path}", headers={"Host": "evil.example"})
    assert r.status_code == 404 and "location" not in r.headers
    assert r.json()["error"]["code"] == "not_found"


def test_head_on_health_and_readiness(live: tuple[str, object]) -> None:
    url, app = live
    for path in ("/healthz", "/readyz"):
        r = httpx.head(f"{url}{path}")
        assert r.status_code == 200 and r.content == b"" and r.headers["x-request-id"]


def test_docs_load_every_asset_from_the_service(live: tuple[str, object]) -> None:
    url, _ = live
    page = httpx.get(f"{url}/docs").text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert len(assets) == 3 and "://" not in page  # nothing from a CDN
    types = {httpx.get(f"{url}{a}").headers["content-type"].split(";")[0] for a in assets}
    assert types == {"text/javascript", "text/css", "image/png"}
    js = next(a for a in assets if a.endswith(".js"))
    assert "SwaggerUIBundle" in httpx.get(f"{url}{js}").text


def test_a_hang_up_while_a_draining_server_reads_the_body_is_a_499(
        tiny_artifact: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = build_app(make_settings(tiny_artifact), engine=FakeEngine())
    with serving(app) as url, caplog.at_level(logging.INFO):
        app.state.service.start_draining()
        open_request(url, "/encode", "image/png", 5000, b"\x89PNG", "gone-while-draining").close()
        with open_request(url, "/encode", "image/png", 4, b"\x89PNG", "stays") as sock:
            status, headers, _ = read_answer(sock)
        assert status == 503 and headers["connection"] == "close"
        deadline = time.monotonic() + 30
        while access_record(caplog, "gone-while-draining") is None and time.monotonic() < deadline:
            time.sleep(0.02)
    assert access_record(caplog, "gone-while-draining").request["status"] == 499
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


HEADER_LIMIT = 4096


@pytest.fixture(scope="module")
def small_heads(tiny_artifact: Path) -> Iterator[str]:
    with serving(build_app(make_settings(tiny_artifact, max_header_bytes=HEADER_LIMIT))) as url:
        yield url


def until_closed(sock: socket.socket) -> bytes:
    """What the server writes until it closes the connection (a reset ends it too)."""
    answer = b""
    try:
        while part := sock.recv(65536):
            answer += part
    except ConnectionResetError:
        pass
    return answer


def send_head(url: str, head: bytes, total: int, chunk_bytes: int = 65536, pause_s: float = 0.0) -> tuple[int, bytes]:
    """Send `head` padded with one header line to `total` bytes (unterminated when `total` is past the head's
    end) in pieces of `chunk_bytes`, `pause_s` apart; (bytes sent before the server closed the connection, what it
    answered)."""
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        try:
            sock.sendall(head)
            sent = len(head)
            chunk = b"a" * chunk_bytes
            while sent < total:
                sock.sendall(chunk)
                sent += len(chunk)
                if pause_s:
                    time.sleep(pause_s)  # separate reads on the server
        except (BrokenPipeError, ConnectionResetError):
            pass
        return sent, until_closed(sock)


@pytest.mark.parametrize("where", ["a header", "the request line"])
def test_a_request_head_over_the_limit_is_refused_and_its_connection_closed(small_heads: str, where: str) -> None:
    head = (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: " if where == "a header"
            else b"GET /healthz?q=")  # the rest of the line or header is filler, never terminated
    sent, answer = send_head(small_heads, head, 64 * 1024 * 1024)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"connection: close" in answer.lower(), answer[:200]
    assert sent < 16 * 1024 * 1024  # cut off early: the server did not read (and keep) 64 MB first
    assert httpx.get(f"{small_heads}/healthz", timeout=10).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/encode", "/nowhere"])
def test_a_whole_head_over_the_limit_is_a_431_and_one_within_it_is_served(small_heads: str, path: str) -> None:
    filler = "a" * (HEADER_LIMIT - 200)
    with httpx.Client(timeout=10) as client:
        r = client.get(f"{small_heads}{path}", headers={"X-Filler": filler})
        assert r.status_code in (200, 404, 405)  # past the limit check
        r = client.get(f"{small_heads}{path}", headers={"X-Filler": filler, "X-More": "b" * 300})
        assert r.status_code == 431 and r.headers["connection"] == "close", r.text
        assert r.json()["error"]["code"] == "headers_too_large" and "TITOK_MAX_HEADER_BYTES" in r.text
        r = client.get(f"{small_heads}{path}?q={filler}{'c' * 300}")
        assert r.status_code == 431


def one_answer(sock: socket.socket) -> bytes:
    """One answer on a kept-alive connection: its head and its Content-Length of body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += (part := sock.recv(65536))
        if not part:
            return data  # closed: whatever came
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))
    while len(body) < length and (part := sock.recv(65536)):
        body += part
    return head + b"\r\n\r\n" + body


def test_a_head_trickled_in_small_reads_is_cut_off_after_the_limit(small_heads: str) -> None:
    """The head is counted across reads: 100-byte pieces of one endless header add up to the limit."""
    sent, answer = send_head(small_heads, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: ", 1024 * 1024,
                             chunk_bytes=100, pause_s=0.001)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"connection: close" in answer.lower(), answer[:200]
    assert sent < 1024 * 1024  # the server closed the connection long before the client was done


def test_the_second_head_on_a_kept_alive_connection_is_counted_afresh(small_heads: str) -> None:
    """A first request within the limit is answered; the next one on the same connection may not grow unbounded,
    and the count of the first does not carry over to it."""
    host, port = small_heads.removeprefix("http://").split(":")
    filler = b"a" * (HEADER_LIMIT - 300)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        for _ in range(3):  # three heads of nearly the limit each: only a count carried over would refuse them
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: " + filler + b"\r\n\r\n")
            assert one_answer(sock).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: ")
        try:
            for _ in range(64):
                sock.sendall(b"a" * 4096)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]


def test_a_body_in_the_same_read_as_its_head_is_not_counted_as_head(small_heads: str) -> None:
    """A small head and a body many times the head limit, sent in one write, is served (here: a 422 from the app
    for tokens of the wrong length, not the server's 400)."""
    body = b'{"tokens": [' + b"1, " * 40_000 + b'1]}'  # 120 KB: 30x the head limit
    host, port = small_heads.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        answer = one_answer(sock)
    assert answer.startswith(b"HTTP/1.1 4") and not answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert b'"error"' in answer


def test_a_whole_head_is_measured_to_the_byte_with_a_query_string_too(small_heads: str) -> None:
    """The 431 boundary is the head's size on the wire: the request line counts its "?" once, no more."""
    host, port = small_heads.removeprefix("http://").split(":")
    for target in (b"/healthz", b"/healthz?a=b"):
        start = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nX-Filler: "
        for size, status in ((HEADER_LIMIT, b"200"), (HEADER_LIMIT + 1, b"431")):
            with socket.create_connection((host, int(port)), timeout=30) as sock:
                sock.sendall(start + b"a" * (size - len(start) - 4) + b"\r\n\r\n")  # a head of `size` bytes
                answer = one_answer(sock)
            assert answer.startswith(b"HTTP/1.1 " + status), (target, size, answer[:200])


def chunked(path: bytes, chunks: bytes, *headers: bytes) -> bytes:
    """A request with a chunked body (`chunks`: its chunk lines, the last chunk and any trailers included)."""
    return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + b"".join(h + b"\r\n" for h in headers) + b"Transfer-Encoding: chunked\r\n\r\n" + chunks)


def test_trailers_of_a_chunked_body_never_pass_as_headers(tiny_artifact: Path) -> None:
    """httptools hands trailer fields on like header fields: a key in a trailer must not authenticate, a trailer
    must not replace the request id or the content type, and trailer bytes do not count as head bytes."""
    body = b'{"tokens": [1, 2, 3, 4, 5, 6, 7, 8]}'
    key = "k" * 32
    app = build_app(make_settings(tiny_artifact, api_keys=(key,), max_header_bytes=HEADER_LIMIT))
    with serving(app) as url:
        host, port = url.removeprefix("http://").split(":")

        def send(request: bytes) -> bytes:
            with socket.create_connection((host, int(port)), timeout=30) as sock:
                sock.sendall(request)
                return one_answer(sock)

        gone = send(chunked(b"/decode", b"%x\r\n%s\r\n0\r\nAuthorization: Bearer %s\r\n\r\n"
                            % (len(body), body, key.encode())))
        assert gone.startswith(b"HTTP/1.1 401 "), gone[:300]  # the key came only as a trailer
        ok = send(chunked(b"/decode", b"%x\r\n%s\r\n0\r\nX-Request-ID: trailer\r\nContent-Type: text/plain\r\n"
                          b"X-Filler: %s\r\n\r\n" % (len(body), body, b"a" * (HEADER_LIMIT - 200)),
                          b"Authorization: Bearer " + key.encode(), b"X-Request-ID: head"))
        assert ok.startswith(b"HTTP/1.1 200 "), ok[:300]  # not 400 duplicate_header, not 431 for the trailer bytes
        assert b"x-request-id: head\r\n" in ok.lower()


@pytest.mark.parametrize("endless", ["a chunk extension", "a trailer"])
def test_an_endless_chunk_extension_or_trailer_is_cut_off(small_heads: str, endless: str) -> None:
    """llhttp reads both without a bound (a trailer's value piles up in memory): cut off past the head limit."""
    start = (chunked(b"/decode", b"1;ext=") if endless == "a chunk extension"
             else chunked(b"/decode", b"1\r\n{\r\n0\r\nX-Trailer: "))
    sent, answer = send_head(small_heads, start, 64 * 1024 * 1024)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"chunk extension or trailer" in answer, answer[:300]
    assert sent < 16 * 1024 * 1024
    assert httpx.get(f"{small_heads}/healthz", timeout=10).status_code == 200


def test_a_pipelined_head_over_the_limit_is_refused_after_the_answer_before_it(tiny_artifact: Path) -> None:
    """A request still in the model keeps its answer: the 400 for the next, endless head on the same connection
    comes after it, and the first request is not counted as a hang-up."""
    engine = FakeEngine()
    engine.gate.clear()
    app = build_app(make_settings(tiny_artifact, max_header_bytes=HEADER_LIMIT), engine=engine)
    with serving(app) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(b'POST /decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
                         b'Content-Length: 36\r\n\r\n{"tokens": [1, 2, 3, 4, 5, 6, 7, 8]}')
            assert engine.entered.wait(30)  # the first request is in the model, held there
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * (4 * HEADER_LIMIT))
            time.sleep(0.3)  # the server has read past the limit by now
            # Finishing the head and pipelining more changes nothing: after the overflow nothing more is read.
            sock.sendall(b"\r\n\r\n" + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 50)
            time.sleep(0.3)
            engine.gate.set()
            answer = until_closed(sock)
        first, _, rest = answer.partition(b"HTTP/1.1 400 ")
        assert first.startswith(b"HTTP/1.1 200 ") and b"image/png" in first.lower(), answer[:300]
        assert rest and answer.count(b"HTTP/1.1 ") == 2, answer[-300:]  # then the refusal, and the connection closed
        assert requests_total(url, "/decode", 499) == 0


def test_pipelined_requests_behind_a_body_split_across_reads_are_all_answered(small_heads: str) -> None:
    """A read that begins in one request's body and holds many more whole requests is not a chunk's framing: its
    heads (here 60 of them, past the head limit together) are heads, each answered."""
    body = b'{"tokens": [1, 2, 3, 4, 5, 6, 7, 8]}'
    request = (b"POST /decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    stream = request * 61
    assert len(request) * 60 > HEADER_LIMIT
    host, port = small_heads.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        for piece in (stream[:len(request) - 20], stream[len(request) - 20:-20], stream[-20:]):
            sock.sendall(piece)
            time.sleep(0.3)  # separate reads on the server
        statuses, buffer = [], b""
        while len(statuses) < 61:  # answers come back to back: split them by their Content-Length
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0 or len(buffer) < head_end + 4 + int(
                    re.search(rb"content-length: (\d+)", buffer[:head_end].lower()).group(1)):
                part = sock.recv(65536)
                assert part, f"closed after {len(statuses)} answers: {statuses}"
                buffer += part
                continue
            length = int(re.search(rb"content-length: (\d+)", buffer[:head_end].lower()).group(1))
            statuses.append(int(buffer.split(b" ", 2)[1]))
            buffer = buffer[head_end + 4 + length:]
    assert statuses == [200] * 61


def test_the_servers_own_400s_are_json_with_a_request_id_and_counted(small_heads: str) -> None:
    """Bytes that are not HTTP, and a head that runs past the limit, are refused before the app sees a request:
    in the service's error shape all the same, and counted under endpoint "other"."""
    before = requests_total(small_heads, "other", 400)
    _, endless = send_head(small_heads, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: ", 1024 * 1024)
    host, port = small_heads.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        garbage = until_closed(sock)
    for answer, words in ((endless, b"TITOK_MAX_HEADER_BYTES"), (garbage, b"not valid HTTP/1.1")):
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head.lower(), answer[:300]
        error = json.loads(body)["error"]
        assert error["code"] == "bad_request" and words.decode() in error["message"], error
        assert f"x-request-id: {error['request_id']}".encode() in head.lower()
    assert requests_total(small_heads, "other", 400) == before + 2


def test_a_silent_or_slow_head_is_timed_out(tiny_artifact: Path) -> None:
    """uvicorn arms its keep-alive timer only after a first answer: a connection that sends nothing, or a head
    that never ends under the size limit, held its place for ever. Now TITOK_BODY_TIMEOUT_S bounds the head too."""
    with serving(build_app(make_settings(tiny_artifact, body_timeout_s=1.0))) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as silent, \
                socket.create_connection((host, int(port)), timeout=30) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and nothing more
            t0 = time.monotonic()
            assert until_closed(silent) == b""  # closed without a word
            answer = until_closed(slow)
            assert time.monotonic() - t0 < 10
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head.lower(), answer[:300]
        error = json.loads(body)["error"]
        assert error["code"] == "body_timeout" and "TITOK_BODY_TIMEOUT_S" in error["message"]
        assert requests_total(url, "other", 408) == 1 and requests_total(url, "other", 400) == 0
        with httpx.Client(timeout=10) as client:  # a client that is merely slow between requests is not hurried
            assert client.get(f"{url}/healthz").status_code == 200
            time.sleep(1.5)
            assert client.get(f"{url}/healthz").status_code == 200


def test_a_graceful_shutdown_answers_every_request_on_its_way_then_closes(tiny_artifact: Path) -> None:
    """uvicorn's shutdown closed at once every connection without a request in progress: a request already in the
    socket but not yet read, a head half-read, a connection accepted and about to send were all cut without an
    answer (the drain test saw it under load). The event loop is held while they are sent, then each connection
    is shut down as uvicorn's server does it: each is answered, with Connection: close, then closed; a kept-alive
    connection that sends nothing is closed without a word."""
    with serving_server(build_app(make_settings(tiny_artifact), engine=FakeEngine())) as (url, server):
        host, port = url.removeprefix("http://").split(":")
        get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        conns = {name: socket.create_connection((host, int(port)), timeout=30)
                 for name in ("in the socket", "half a head", "idle", "blank lines", "not sent yet")}
        try:
            for name in ("in the socket", "half a head", "idle", "blank lines"):  # each had an answer: kept alive
                conns[name].sendall(get)
                assert one_answer(conns[name]).startswith(b"HTTP/1.1 200 ")
            loop = next(iter(server.server_state.connections)).loop
            held, sent = threading.Event(), threading.Event()

            def shut_down_with_requests_unread() -> None:
                held.set()
                assert sent.wait(30)
                time.sleep(0.1)  # the bytes are in the server's socket buffers, unread
                for connection in list(server.server_state.connections):
                    connection.shutdown()

            loop.call_soon_threadsafe(shut_down_with_requests_unread)
            assert held.wait(30)
            conns["in the socket"].sendall(get)
            conns["half a head"].sendall(get[:20])
            conns["blank lines"].sendall(b"\r\n\r\n")  # begins no request (RFC 9112 lets a server skip them)
            sent.set()
            time.sleep(0.5)  # the shutdown has run
            conns["half a head"].sendall(get[20:])
            conns["not sent yet"].sendall(get)
            for name in ("in the socket", "half a head", "not sent yet"):
                status, headers, body = read_answer(conns[name])  # to the close
                assert (status, headers["connection"], json.loads(body)) == (200, "close", {"status": "ok"}), name
            assert until_closed(conns["idle"]) == b""
            assert until_closed(conns["blank lines"]) == b""  # not taken for a request on its way
        finally:
            for sock in conns.values():
                sock.close()


@pytest.mark.parametrize("how", ["take them in", "plain close"])
def test_connections_waiting_to_be_accepted_when_the_listener_closes_are_answered(tiny_artifact: Path,
                                                                                 how: str) -> None:
    """A connection the kernel has accepted but the event loop not yet (it was busy) is reset when the listener
    closes: its client had connected and sent its request, and got no answer. The drain takes them in first.
    The event loop is held while clients connect and send, then the listener is closed from the loop."""
    app = build_app(make_settings(tiny_artifact), engine=FakeEngine())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = DrainingServer(uvicorn_config(app, app.state.service.settings, "127.0.0.1", port),
                            app.state.service.start_draining, 0.0, 30.0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=30) as probe:
            probe.sendall(get)
            assert one_answer(probe).startswith(b"HTTP/1.1 200 ")
            loop = next(iter(server.server_state.connections)).loop
        held, sent = threading.Event(), threading.Event()

        def close_listener_with_connections_waiting() -> None:
            held.set()
            assert sent.wait(30)
            if how == "take them in":
                server.stop_accepting()
            else:  # what uvicorn's shutdown does
                for listening in server.servers:
                    listening.close()

        loop.call_soon_threadsafe(close_listener_with_connections_waiting)
        assert held.wait(30)
        waiting = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(5)]
        for sock in waiting:
            sock.sendall(get)  # in the kernel's queues: the event loop is held
        time.sleep(0.2)
        sent.set()
        answers = []
        for sock in waiting:
            with sock:
                try:
                    answers.append(one_answer(sock)[:15])
                except ConnectionResetError:
                    answers.append(b"reset")
        expected = [b"HTTP/1.1 200 OK"] * 5 if how == "take them in" else [b"reset"] * 5
        assert answers == expected
    finally:
        server.should_exit = True
        thread.join(60)


def test_blank_lines_between_requests_do_not_hold_a_connection(tiny_artifact: Path) -> None:
    """CRLFs that begin no request cancelled uvicorn's keep-alive timer and armed nothing else: a client sending
    one now and then held its connection (and a graceful shutdown) for ever. Now the head deadline bounds it."""
    with serving(build_app(make_settings(tiny_artifact, body_timeout_s=1.0), engine=FakeEngine())) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert one_answer(sock).startswith(b"HTTP/1.1 200 ")
            t0, closed = time.monotonic(), False
            while not closed and time.monotonic() - t0 < 20:
                try:
                    sock.sendall(b"\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                ready, _, _ = select.select([sock], [], [], 0.2)
                closed = bool(ready) and until_closed(sock) == b""
            assert closed and time.monotonic() - t0 < 10  # about 1 s (TITOK_BODY_TIMEOUT_S), not for ever


def test_the_first_head_must_end_within_the_deadline_of_the_connections_start(tiny_artifact: Path) -> None:
    """The first head's deadline runs from the connection's start, as documented: it was restarted at the head's
    first byte, so a client that waited almost the deadline before sending one byte got a second deadline."""
    with serving(build_app(make_settings(tiny_artifact, body_timeout_s=2.0), engine=FakeEngine())) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            t0 = time.monotonic()
            time.sleep(1.5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # and no more
            answer = until_closed(sock)
            waited = time.monotonic() - t0
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert waited < 3.0  # about 2 s from the connection's start; the restarted deadline gave 3.5 s


def test_a_pipelined_head_left_half_sent_gets_its_408_not_the_keep_alive_close(tiny_artifact: Path) -> None:
    """After an answer uvicorn armed its keep-alive timer even when the next (pipelined) head was already half read,
    and closed the connection without a word when it fired before the head deadline. The head deadline rules."""
    app = build_app(make_settings(tiny_artifact, body_timeout_s=2.5), engine=FakeEngine())
    with serving_server(app, timeout_keep_alive=0.5) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHo")  # and no more
            answer = until_closed(sock)
    first, _, rest = answer.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert b"HTTP/1.1 408 " in rest and b"body_timeout" in rest, answer[-400:]


def test_a_client_that_pipelines_and_stops_reading_then_hangs_up_leaves_no_error(
        tiny_artifact: Path, caplog: pytest.LogCaptureFixture) -> None:
    """uvicorn marks only its newest request cycle disconnected: the one being answered, its write paused by a
    client that does not read, then wrote on the closed transport (uvloop: RuntimeError, an error logged with a
    traceback). Every unanswered cycle is told now."""
    with serving(build_app(make_settings(tiny_artifact), engine=FakeEngine())) as url, caplog.at_level(logging.INFO):
        host, port = url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)), timeout=30)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        get = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.setblocking(False)
        sent = 0
        with contextlib.suppress(BlockingIOError):
            for _ in range(400):  # far more answers than the socket buffers hold, none read
                sent += sock.send(get)
        time.sleep(0.5)
        sock.close()
        time.sleep(0.5)
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    assert sent >= 10 * len(get)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], \
        [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_the_header_limit_is_a_setting_with_a_floor(tiny_artifact: Path) -> None:
    with pytest.raises(ValueError, match="max_header_bytes"):
        make_settings(tiny_artifact, max_header_bytes=100)


def test_hang_ups_while_queued_are_499s_with_no_error_logged(tiny_artifact: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    import gc

    import numpy as np

    from titok.core.arrays import NPY, write_npy

    engine = FakeEngine()
    engine.gate.clear()  # the model holds its first batch: the next requests wait in the queue
    app = build_app(make_settings(tiny_artifact), engine=engine)
    body = write_npy(np.zeros((3, 32, 32, 3), np.uint8))
    with caplog.at_level(logging.INFO), serving(app) as url:
        holder = open_request(url, "/encode", NPY, len(body), body, "holder")
        assert engine.entered.wait(30)
        gone = [open_request(url, "/encode", NPY, len(body), body, f"queued-{i}") for i in range(4)]
        deadline = time.monotonic() + 30
        while app.state.service.batcher.depth < 12 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert app.state.service.batcher.depth == 12  # all four uploads read and queued behind the held batch
        for sock in gone:
            sock.close()
        while any(access_record(caplog, f"queued-{i}") is None for i in range(4)) and time.monotonic() < deadline:
            time.sleep(0.02)
        engine.gate.set()
        head = b""
        while b"\r\n\r\n" not in head and (chunk := holder.recv(65536)):
            head += chunk
        status = int(head.split(b" ", 2)[1])  # the held request itself is answered (its connection stays open)
        holder.close()
        gc.collect()  # an unretrieved future's error is logged when it is collected
        time.sleep(0.2)
    assert status == 200
    assert [access_record(caplog, f"queued-{i}").request["status"] for i in range(4)] == [499] * 4
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]  # e.g. asyncio's "exception was never retrieved"
    assert engine.batches[0] == 3 and sum(engine.batches) == 3  # the four gone requests never reached the model


def test_the_body_of_an_early_answer_must_still_arrive_within_the_deadline(tiny_artifact: Path) -> None:
    """An answer given before the body is read (401 without a key, 404, 413 ...) left the connection open for ever
    when the declared body never came: no body deadline ran any more (the app no longer read) and the keep-alive
    timer had been cancelled. 3,000 such connections held 3,000 descriptors (a hostile pass). Now the rest of the
    body has TITOK_BODY_TIMEOUT_S; a client that does send it keeps its connection."""
    key = "k" * 32
    app = build_app(make_settings(tiny_artifact, body_timeout_s=1.0, api_keys=[key]), engine=FakeEngine())
    with serving(app) as url:
        host, port = url.removeprefix("http://").split(":")
        early = (b"POST /encode HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
                 + b"\x00" * 10)
        with socket.create_connection((host, int(port)), timeout=30) as stalled, \
                socket.create_connection((host, int(port)), timeout=30) as finishes:
            stalled.sendall(early)  # no key: 401 at once, then the 990 other bytes never come
            finishes.sendall(early)
            time.sleep(0.3)
            finishes.sendall(b"\x00" * 990 + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            t0 = time.monotonic()
            answer = until_closed(stalled)
            assert time.monotonic() - t0 < 5
            assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
            finishes.settimeout(5)
            both = b""
            while both.count(b"HTTP/1.1 ") < 2:  # the 401, then the next request's answer on the same connection
                part = finishes.recv(65536)
                assert part, both
                both += part
            assert both.startswith(b"HTTP/1.1 401 ") and b"HTTP/1.1 200 " in both.partition(b"\r\n\r\n")[2]


def test_bodies_in_progress_are_bounded_together_and_the_next_is_refused_before_it_is_read(
        tiny_artifact: Path) -> None:
    """Every body is held until its answer: sixty 32 MiB uploads at once took the process from 0.4 to 2.6 GB (a
    hostile pass). TITOK_MAX_INFLIGHT_UPLOAD_BYTES bounds them together; past it, 503 uploads_busy at once."""
    app = build_app(make_settings(tiny_artifact, max_upload_bytes=64 * 1024, max_inflight_upload_bytes=128 * 1024,
                                  body_timeout_s=10.0), engine=FakeEngine())
    head = (b"POST /encode HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 60000\r\n\r\n"
            + b"\x89PNG" + b"\x00" * 996)
    with serving(app) as url:
        host, port = url.removeprefix("http://").split(":")
        held = [socket.create_connection((host, int(port)), timeout=30) for _ in range(2)]
        try:
            for sock in held:
                sock.sendall(head)  # 60,000 bytes declared, 1,000 sent: both reserve their declared length
            time.sleep(0.5)
            assert 'titok_inflight_upload_bytes 120000.0' in httpx.get(f"{url}/metrics").text
            refused = httpx.post(f"{url}/encode", content=b"\x89PNG" + b"\x00" * 59_996,
                                 headers={"content-type": "image/png"}, timeout=10)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
            error = refused.json()["error"]
            assert error["code"] == "uploads_busy" and "TITOK_MAX_INFLIGHT_UPLOAD_BYTES (131072)" in error["message"]
            small = save(Image.new("RGB", (8, 8), (200, 30, 30)), "PNG")  # a few hundred bytes: room for it
            assert httpx.post(f"{url}/encode", content=small, headers={"content-type": "image/png"}).status_code == 200
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.5)
        metrics = httpx.get(f"{url}/metrics").text
        assert "titok_inflight_upload_bytes 0.0" in metrics
        assert 'titok_rejections_total{reason="uploads_busy"} 1.0' in metrics
        assert httpx.get(f"{url}/info").json()["limits"]["max_inflight_upload_bytes"] == 128 * 1024


def test_a_client_that_stops_reading_its_answers_is_cut_off_after_the_deadline(tiny_artifact: Path) -> None:
    """No write deadline: a client that sent requests and never read the answers held them, and their buffers, for
    as long as it stayed (70 s in a hostile pass, and no bound). Now it must read within TITOK_BODY_TIMEOUT_S."""
    with serving(build_app(make_settings(tiny_artifact, body_timeout_s=1.0), engine=FakeEngine())) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            get = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"
            sock.sendall(get * 600)  # 600 answers of ~15 KB, 9 MB: more than loopback's socket buffers (3-4 MB) hold
            time.sleep(3.0)  # reading nothing, past the deadline
            t0 = time.monotonic()
            answers = until_closed(sock)
            assert time.monotonic() - t0 < 5
        assert answers.count(b"HTTP/1.1 200 ") < 600  # at most what the buffers held before the reset
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


def test_a_websocket_upgrade_is_answered_as_the_http_request_it_also_is(live: tuple[str, object]) -> None:
    """uvicorn's WebSocket layer answered `Upgrade: websocket` with a bare 403 text/plain: no JSON, no request id,
    not counted. The service has no WebSocket route: the request is served as plain HTTP."""
    url, _ = live
    before = requests_total(url, "/healthz", 200)
    r = httpx.get(f"{url}/healthz", headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                             "Sec-WebSocket-Version": "13"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json" and r.headers["x-request-id"]
    assert requests_total(url, "/healthz", 200) == before + 1
