"""The web page's server side: `/` and its files, TITOK_UI=false, and /ui/input (the model's exact input)."""

from __future__ import annotations

import io
import re
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sample_images import all_formats, header_only_png, save, two_halves
from service_helpers import make_settings, serving

from titok.core import codec
from titok.server.app import build_app


def test_the_page_and_its_files_are_served_with_a_self_only_policy(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    # every file the page names is served, and none lies outside this service (no CDN)
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "ui/app.js" in refs and "ui/style.css" in refs
    for ref in refs:
        assert not re.match(r"[a-z]+://|//", ref), ref
        if ref.startswith("ui/"):
            r = client.get(f"/{ref}")
            assert r.status_code == 200 and r.text, ref
    for name in ("app.js", "api.js", "card.js"):  # the modules import each other by relative URL
        script = client.get(f"/ui/{name}")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        for imported in re.findall(r'from "\./([^"]+)"', script.text):
            assert client.get(f"/ui/{imported}").status_code == 200, (name, imported)
    assert client.get("/ui/style.css").headers["content-type"].startswith("text/css")


def test_only_the_pages_own_files_are_served(client: TestClient) -> None:
    for path in ("/ui/index.html", "/ui/__init__.py", "/ui/..%2F..%2Fsettings.py", "/ui/", "/ui/nope.js"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "not_found"


def test_the_page_is_not_in_the_api_docs(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/encode" in paths and not [p for p in paths if p == "/" or p.startswith("/ui")]


def test_titok_ui_false_turns_the_page_off(tiny_artifact: Path, monkeypatch) -> None:
    monkeypatch.setenv("TITOK_UI", "false")
    with TestClient(build_app(make_settings(tiny_artifact))) as c:
        for method, path in (("GET", "/"), ("GET", "/ui/app.js"), ("POST", "/ui/input")):
            r = c.request(method, path, content=b"x")
            assert r.status_code == 404, path
            assert r.json()["error"]["code"] == "not_found" and r.json()["error"]["request_id"]
        assert c.get("/info").status_code == 200  # the API itself is untouched


def test_model_input_is_the_codecs_own_array(client: TestClient) -> None:
    for name, data in all_formats().items():
        for resize in ("crop", "pad", "stretch"):
            r = client.post(f"/ui/input?resize={resize}", content=data, headers={"content-type": "image/png"})
            assert r.status_code == 200 and r.headers["content-type"] == "image/png", (name, r.text)
            shown = np.asarray(Image.open(io.BytesIO(r.content)))
            assert np.array_equal(shown, codec.load_image(data, 32, resize)), (name, resize)


def test_model_input_refuses_bad_input_with_json_errors(client: TestClient) -> None:
    png = save(two_halves(), "PNG")
    cases = [
        ({"content": b""}, 400, "empty_body"),
        ({"content": b"not an image at all"}, 400, "invalid_image"),
        ({"content": png[: len(png) // 2]}, 400, "invalid_image"),
        ({"content": header_only_png(60_000, 60_000)}, 413, "image_too_large"),
        ({"content": b"\0" * (300 * 1024)}, 413, "payload_too_large"),
        ({"content": png, "params": {"resize": "zoom"}}, 422, "invalid_request"),
    ]
    for kwargs, status, code in cases:
        r = client.post("/ui/input", **kwargs)
        assert r.status_code == status, (code, r.text)
        err = r.json()["error"]
        assert err["code"] == code and err["message"] and err["request_id"]
    assert client.post("/ui/input", content=png).status_code == 200  # and it keeps serving


def test_model_input_survives_a_client_that_hangs_up_half_way(tiny_artifact: Path) -> None:
    import httpx

    png = save(two_halves(), "PNG")
    with serving(build_app(make_settings(tiny_artifact))) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"POST /ui/input HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                      + f"Content-Length: {len(png)}\r\n\r\n".encode() + png[:100])
        counted = ""
        for _ in range(3000):  # the server notices the hang-up: a 499, logged and counted, never a 500
            counted = httpx.get(f"{url}/metrics").text
            if 'status="499"' in counted:
                break
            threading.Event().wait(0.01)
        assert 'titok_requests_total{endpoint="/ui/input",status="499"} 1.0' in counted
        assert 'status="500"' not in counted
        r = httpx.post(f"{url}/ui/input", content=png, timeout=30)
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (32, 32)


def test_model_input_keeps_to_the_request_pixel_budget(tiny_artifact: Path) -> None:
    """The page's door decodes through /encode's fair queue and budget, so it is no way around them."""
    with TestClient(build_app(make_settings(tiny_artifact, max_request_pixels=10_000)),
                    raise_server_exceptions=False) as c:
        r = c.post("/ui/input", content=header_only_png(200, 200))  # 40,000 pixels: refused from the header
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_pixels", r.text
        assert "TITOK_MAX_REQUEST_PIXELS" in r.json()["error"]["message"]
        small = io.BytesIO()
        Image.new("RGB", (90, 90), (200, 30, 30)).save(small, "PNG")
        ok = c.post("/ui/input", content=small.getvalue())
        assert ok.status_code == 200 and Image.open(io.BytesIO(ok.content)).size == (32, 32)


def test_model_input_drops_the_image_of_a_client_that_hung_up(tiny_artifact: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """As /encode does: an image still waiting for the codec when its client leaves is never decoded (a 499)."""
    import httpx

    decoded: list[bytes] = []
    gate = threading.Event()
    real_load = codec.load_image

    def held_load(data: bytes, *args, **kwargs):
        decoded.append(data)
        assert gate.wait(30)
        return real_load(data, *args, **kwargs)

    monkeypatch.setattr(codec, "load_image", held_load)
    first, second = save(two_halves(), "PNG"), save(two_halves(48, 40), "PNG")
    app = build_app(make_settings(tiny_artifact, codec_threads=1))
    with serving(app) as url:
        held = {}
        waiting = threading.Thread(target=lambda: held.update(r=httpx.post(f"{url}/ui/input", content=first,
                                                                           timeout=60)))
        waiting.start()
        for _ in range(3000):  # the first image holds the only codec thread
            if decoded:
                break
            threading.Event().wait(0.01)
        with httpx.Client(timeout=httpx.Timeout(60, read=0.3)) as impatient, pytest.raises(httpx.ReadTimeout):
            impatient.post(f"{url}/ui/input", content=second)
        rejections = app.state.service.metrics.rejections.labels("client_disconnected")
        for _ in range(3000):
            if rejections._value.get() == 1:  # noqa: SLF001
                break
            threading.Event().wait(0.01)
        gate.set()
        waiting.join(30)
        assert held["r"].status_code == 200
        metrics = httpx.get(f"{url}/metrics").text
    assert rejections._value.get() == 1  # noqa: SLF001
    assert decoded == [first]  # the second image was never decoded
    assert 'titok_requests_total{endpoint="/ui/input",status="499"} 1.0' in metrics
    assert 'titok_requests_total{endpoint="/ui/input",status="200"} 1.0' in metrics
