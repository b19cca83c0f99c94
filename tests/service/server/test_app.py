"""The HTTP surface: happy paths, JSON errors, request ids, readiness, model errors and a full queue."""

from __future__ import annotations

import base64
import io
import logging
import threading
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from sample_images import all_formats
from service_helpers import FakeEngine, make_settings

from titok.server.app import build_app


def test_encode_every_format_in_one_multipart_request(client: TestClient) -> None:
    formats = all_formats()
    names = list(formats)[:4]
    files = [("images", (f"{n}.img", formats[n], "application/octet-stream")) for n in names]
    r = client.post("/encode", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "test-tiny" and body["num_tokens"] == 8 and body["codebook_size"] == 64
    assert len(body["tokens"]) == 4 and all(len(t) == 8 for t in body["tokens"])
    assert all(0 <= t < 64 for seq in body["tokens"] for t in seq)


def test_encode_keeps_upload_order_and_matches_single_requests(client: TestClient) -> None:
    formats = all_formats()
    singles = [client.post("/encode", content=formats[n], headers={"content-type": "image/png"}).json()["tokens"][0]
               for n in ("png", "grey", "exif_rotated")]
    files = [("images", (n, formats[n], "image/png")) for n in ("png", "grey", "exif_rotated")]
    assert client.post("/encode", files=files).json()["tokens"] == singles


def test_decode_one_sequence_returns_a_png(client: TestClient) -> None:
    r = client.post("/decode", json={"tokens": list(range(8))})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (32, 32)


def test_decode_several_sequences_returns_base64_pngs_in_order(client: TestClient) -> None:
    seqs = [[i] * 8 for i in (3, 40, 3)]
    r = client.post("/decode", json={"tokens": seqs})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(s)))) for s in r.json()["images"]]
    assert len(images) == 3 and images[0].shape == (32, 32, 3)
    assert np.array_equal(images[0], images[2])
    single = client.post("/decode", json={"tokens": seqs[1]}).content
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(single))), images[1])


def test_health_ready_info_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    info = client.get("/info").json()
    assert info["model"]["name"] == "test-tiny" and info["batching"]["max_batch_size"] == 8
    spec = client.get("/openapi.json").json()
    assert {"413", "415", "503", "504"} <= set(spec["paths"]["/encode"]["post"]["responses"])
    assert "422" in spec["paths"]["/decode"]["post"]["responses"]
    assert client.get("/docs").status_code == 200


def test_errors_are_json_everywhere_with_the_request_id(client: TestClient) -> None:
    for method, path, status in (("GET", "/nope", 404), ("GET", "/encode", 405), ("POST", "/healthz", 405)):
        r = client.request(method, path, headers={"X-Request-ID": "trace-42"})
        assert r.status_code == status
        assert r.json()["error"]["request_id"] == "trace-42" == r.headers["x-request-id"]
        assert r.json()["error"]["code"] in ("not_found", "method_not_allowed")
    r = client.post("/encode?resize=sideways", content=all_formats()["png"], headers={"content-type": "image/png"})
    assert r.status_code == 422 and "resize" in r.json()["error"]["message"]


def test_request_ids_are_sanitised_or_generated(client: TestClient) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc-1.2_3:4"}).headers["x-request-id"] == "abc-1.2_3:4"
    for bad in ("has space", "<script>", "x" * 500):
        rid = client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert rid != bad and len(rid) == 32
    assert len(client.get("/healthz").headers["x-request-id"]) == 32


def test_one_structured_log_line_per_request(client: TestClient, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="titok.access"):
        client.post("/decode", json={"tokens": [0] * 8}, headers={"X-Request-ID": "log-me"})
    lines = [r for r in caplog.records if r.name == "titok.access"]
    assert len(lines) == 1
    fields = lines[0].request
    assert fields["request_id"] == "log-me" and fields["status"] == 200 and fields["path"] == "/decode"
    assert fields["items"] == 1 and fields["duration_ms"] >= 0


def test_not_ready_before_the_lifespan_and_draining_after(tiny_artifact: Path) -> None:
    app = build_app(make_settings(tiny_artifact))
    assert TestClient(app).get("/readyz").status_code == 503  # no lifespan has run: nothing loaded
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 200
        app.state.service.start_draining()
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
        r = c.post("/decode", json={"tokens": [0] * 8})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert c.get("/healthz").status_code == 200


def test_a_model_error_is_a_500_for_that_request_only(tiny_artifact: Path) -> None:
    engine = FakeEngine()
    with TestClient(build_app(make_settings(tiny_artifact), engine=engine)) as c:
        engine.fail_next = True
        r = c.post("/decode", json={"tokens": [0] * 8})
        assert r.status_code == 500 and r.json()["error"]["code"] == "model_error"
        assert c.post("/decode", json={"tokens": [0] * 8}).status_code == 200


def test_a_full_queue_is_a_503_with_retry_after(tiny_artifact: Path) -> None:
    engine = FakeEngine()
    with TestClient(build_app(make_settings(tiny_artifact, max_queue_size=2), engine=engine)) as c:
        engine.gate.clear()
        held = {}
        first = threading.Thread(target=lambda: held.update(r=c.post("/decode", json={"tokens": [0] * 8})))
        first.start()
        assert engine.entered.wait(30)
        r = c.post("/decode", json={"tokens": [[0] * 8] * 3})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "queue_full"
        engine.gate.set()
        first.join(30)
        assert held["r"].status_code == 200


def test_items_of_a_client_that_hung_up_are_skipped(tiny_artifact: Path) -> None:
    import httpx
    from service_helpers import serving

    engine = FakeEngine()
    app = build_app(make_settings(tiny_artifact), engine=engine)
    with serving(app) as url:
        engine.gate.clear()
        held = {}
        first = threading.Thread(target=lambda: held.update(r=httpx.post(f"{url}/decode", json={"tokens": [0] * 8},
                                                                        timeout=60)))
        first.start()
        assert engine.entered.wait(30)
        batcher = app.state.service.batcher
        with httpx.Client(timeout=httpx.Timeout(60, read=0.3)) as impatient:  # gives up while its item is queued
            try:
                impatient.post(f"{url}/decode", json={"tokens": [[0] * 8] * 2})
                raise AssertionError("the request should not have been answered while the engine is held")
            except httpx.ReadTimeout:
                pass
        rejections = app.state.service.metrics.rejections
        for _ in range(3000):  # the server notices the hang-up and cancels the queued items
            if rejections.labels("client_disconnected")._value.get() == 1:  # noqa: SLF001
                break
            threading.Event().wait(0.01)
        assert rejections.labels("client_disconnected")._value.get() == 1  # noqa: SLF001
        assert batcher.depth == 2  # cancelled, still queued until the worker reaches them
        engine.gate.set()
        first.join(30)
        assert held["r"].status_code == 200
        assert httpx.post(f"{url}/decode", json={"tokens": [0] * 8}, timeout=60).status_code == 200
        assert engine.batches == [1, 1]  # the two items of the hung-up request never reached the model
        assert rejections.labels("cancelled")._value.get() == 2  # noqa: SLF001
