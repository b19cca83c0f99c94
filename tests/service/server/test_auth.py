"""API keys: which paths need one, the 401 answers, rotation with several keys, and keys kept out of logs."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from service_helpers import FakeEngine, make_settings, serving

from titok.keys import key_id, parse_keys
from titok.server.app import build_app
from titok.server.middleware import LogFormatter
from titok.settings import Settings

OLD, NEW = "old-key-0123456789abcdef", "new-key-fedcba9876543210"
GUARDED = [("POST", "/encode"), ("POST", "/decode"), ("GET", "/info"), ("POST", "/ui/input"),
           ("GET", "/any/new/route"), ("GET", "/ui/other.js")]


@pytest.fixture
def logs() -> Iterator[list[logging.LogRecord]]:
    """Every record of the service's loggers (they may not propagate to the root once configured)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("titok")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def app_with(**settings: object) -> TestClient:
    return TestClient(build_app(make_settings(Path("unused.pt"), **settings), engine=FakeEngine()),
                      raise_server_exceptions=False)


def call(c: TestClient, method: str, path: str, headers: dict[str, str] | None = None):
    body = {"json": {"tokens": [1] * 8}} if path == "/decode" else {}
    if path == "/encode":
        body = {"content": b"not an image", "headers": {"content-type": "image/png"}}
    return c.request(method, path, headers={**body.pop("headers", {}), **(headers or {})}, **body)


def test_keys_from_a_list_or_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_keys(f" {OLD} ,{NEW},") == (OLD, NEW)
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# rotated 2026-11\n{OLD}\n\n  {NEW}  \n")
    assert parse_keys(f"@{keys}") == (OLD, NEW)
    monkeypatch.setenv("TITOK_API_KEYS", f"@{keys}")
    assert Settings().api_keys == (OLD, NEW)
    monkeypatch.setenv("TITOK_API_KEYS", "")
    assert Settings().api_keys == ()


@pytest.mark.parametrize("bad", ["short", "has a space in this key", f"@{'/nonexistent/keys.txt'}"])
def test_unusable_keys_stop_start_up_without_echoing_the_key(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TITOK_API_KEYS", bad)
    with pytest.raises(ValidationError) as e:
        Settings()
    messages = " ".join(err["msg"] for err in e.value.errors())
    assert "api key" in messages.lower() or "key file" in messages
    if not bad.startswith("@"):
        assert bad not in messages and key_id(bad) in messages


@pytest.mark.parametrize("method, path", GUARDED)
def test_guarded_paths_answer_401_without_a_key(method: str, path: str) -> None:
    with app_with(api_keys=(OLD,)) as c:
        r = call(c, method, path)
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == 'Bearer realm="titok"'
        error = r.json()["error"]
        assert error["code"] == "unauthorized" and "Authorization: Bearer KEY" in error["message"]
        assert error["request_id"] == r.headers["x-request-id"]


@pytest.mark.parametrize("headers, words", [
    ({"Authorization": f"Bearer {OLD}x"}, "not accepted"),
    ({"Authorization": f"Bearer {OLD[:-1]}"}, "not accepted"),
    ({"X-API-Key": NEW}, "not accepted"),
    ({"Authorization": f"Basic {OLD}"}, "must be 'Bearer KEY'"),
    ({"Authorization": "Bearer "}, "must be 'Bearer KEY'"),
])
def test_a_wrong_key_is_401_invalid_token(headers: dict[str, str], words: str) -> None:
    with app_with(api_keys=(OLD,)) as c:
        r = c.get("/info", headers=headers)
        assert r.status_code == 401 and words in r.json()["error"]["message"]
        assert r.headers["www-authenticate"].startswith('Bearer realm="titok"')
        assert OLD not in r.text


@pytest.mark.parametrize("headers", [
    {"X-API-Key": OLD.encode() + b"\xa0"},  # a non-breaking space is part of the key, not whitespace
    {"Authorization": b"Bearer " + OLD.encode() + b"\xa0"},
    {"Authorization": b"Bearer \xa0" + OLD.encode()},
])
def test_only_ascii_whitespace_is_stripped_from_a_key(headers: dict[str, bytes]) -> None:
    with app_with(api_keys=(OLD,)) as c:
        assert c.get("/info", headers=headers).status_code == 401
        for padded in ({"X-API-Key": f" {OLD}\t"}, {"Authorization": f"Bearer  {OLD} "}):
            assert c.get("/info", headers=padded).status_code == 200


@pytest.mark.parametrize("headers", [
    [("Authorization", f"Bearer {OLD}"), ("Authorization", f"Bearer {NEW}")],
    [("Authorization", f"Bearer {OLD}"), ("Authorization", f"Bearer {OLD}")],
    [("X-API-Key", NEW), ("X-API-Key", OLD)],
    [("Authorization", f"Bearer {OLD}"), ("X-Model-Hash", "ab" * 32), ("x-model-hash", "cd" * 32)],
    [("Authorization", f"Bearer {OLD}"), ("Content-Type", "application/json"), ("Content-Type", "text/plain")],
])
def test_a_header_that_carries_meaning_sent_twice_is_refused(headers: list[tuple[str, str]]) -> None:
    with app_with(api_keys=(OLD,)) as c:
        r = c.post("/decode", json={"tokens": [1] * 8}, headers=headers)
        assert r.status_code == 400 and r.json()["error"]["code"] == "duplicate_header", r.text
        assert "more than once" in r.json()["error"]["message"]
        twice_id = [("Authorization", f"Bearer {OLD}"), ("X-Request-ID", "a"), ("X-Request-ID", "b")]
        assert c.post("/decode", json={"tokens": [1] * 8}, headers=twice_id).status_code == 200


def test_either_header_and_every_configured_key_is_let_in() -> None:
    with app_with(api_keys=(OLD, NEW)) as c:
        for headers in ({"Authorization": f"Bearer {OLD}"}, {"authorization": f"bearer {NEW}"}, {"X-API-Key": OLD}):
            assert c.get("/info", headers=headers).status_code == 200
            assert call(c, "POST", "/decode", headers).status_code == 200
            assert call(c, "POST", "/encode", headers).status_code == 400  # let in; the image itself is bad


def test_with_both_headers_authorization_is_the_key_checked() -> None:
    """One documented rule, in either order of the headers: Authorization is checked, X-API-Key is not read."""
    with app_with(api_keys=(OLD, NEW)) as c:
        assert c.get("/info", headers={"Authorization": f"Bearer {OLD}", "X-API-Key": "wrong-key-0123456789"}
                     ).status_code == 200
        r = c.get("/info", headers={"X-API-Key": OLD, "Authorization": "Bearer wrong-key-0123456789"})
        assert r.status_code == 401 and "key ID" in r.json()["error"]["message"], r.text


def test_health_readiness_docs_metrics_and_the_page_files_stay_open() -> None:
    with app_with(api_keys=(OLD,)) as c:
        for path in ("/healthz", "/readyz", "/docs", "/openapi.json", "/metrics", "/", "/ui/app.js", "/ui/style.css"):
            assert c.get(path).status_code == 200, path
    with app_with(api_keys=(OLD,), ui=False) as c:  # no page: "/" is just another guarded path
        assert c.get("/").status_code == 401
        assert c.get("/", headers={"X-API-Key": OLD}).status_code == 404


def test_docs_files_are_open_but_a_path_that_climbs_out_of_them_is_not(tiny_artifact: Path) -> None:
    with app_with(api_keys=(OLD,)) as c:
        for path in ("/docs", "/docs/oauth2-redirect", "/docs/assets/swagger-ui.css", "/docs/no-such-file.css"):
            assert c.get(path).status_code in (200, 404), path  # let in (where the file exists), not refused
    app = build_app(make_settings(tiny_artifact, api_keys=(OLD,)))
    with serving(app) as url:
        host, port = url.removeprefix("http://").split(":")
        for path in (b"/docs/../info", b"/docs/%2e%2e/info", b"/healthz/../info", b"//info"):
            with socket.create_connection((host, int(port)), timeout=30) as s:  # raw: no client-side cleanup
                s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
            assert answer.split(b" ", 2)[1] in (b"401", b"404"), (path, answer[:200])
            assert b'"ready"' not in answer and b"batching" not in answer


def test_metrics_auth_guards_metrics_too() -> None:
    with app_with(api_keys=(OLD,), metrics_auth=True) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"X-API-Key": OLD}).status_code == 200
        assert c.get("/healthz").status_code == 200


def test_without_keys_the_service_is_open_and_says_so(logs: list[logging.LogRecord]) -> None:
    with app_with() as c:
        for method, path in GUARDED[:3]:
            assert call(c, method, path).status_code != 401
    opened = [r.getMessage() for r in logs if r.name == "titok.app" and "authentication off" in r.getMessage()]
    assert len(opened) == 1 and "TITOK_API_KEYS" in opened[0]


def test_logs_and_metrics_carry_the_key_id_never_the_key(logs: list[logging.LogRecord]) -> None:
    with app_with(api_keys=(OLD, NEW)) as c:
        assert c.get("/info", headers={"X-API-Key": NEW}).status_code == 200
        assert c.get("/info", headers={"X-API-Key": OLD + "-wrong"}).status_code == 401
        metrics = c.get("/metrics").text
    text = "\n".join(LogFormatter("json").format(r) for r in logs)
    assert f'"key_id": "{key_id(NEW)}"' in text and f"key IDs {key_id(OLD)}, {key_id(NEW)}" in text
    assert OLD not in text and NEW not in text
    assert f'titok_authenticated_requests_total{{key_id="{key_id(NEW)}"}} 1.0' in metrics
    assert 'titok_rejections_total{reason="unauthorized"} 1.0' in metrics
    assert 'titok_requests_total{endpoint="/info",status="401"} 1.0' in metrics
    assert OLD not in metrics and NEW not in metrics


def test_the_schema_declares_the_keys_on_guarded_operations_only() -> None:
    with app_with(api_keys=(OLD,)) as c:
        schema = c.get("/openapi.json").json()
    assert set(schema["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    for path, method in (("/encode", "post"), ("/decode", "post"), ("/info", "get")):
        assert schema["paths"][path][method]["security"] and "401" in schema["paths"][path][method]["responses"]
    for path in ("/healthz", "/readyz", "/metrics"):
        assert "security" not in schema["paths"][path]["get"]
    with app_with() as c:
        assert "securitySchemes" not in c.get("/openapi.json").json().get("components", {})
