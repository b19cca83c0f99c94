"""Known traffic in, scraped values out."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sample_images import all_formats
from service_helpers import make_settings

from titok.server.app import build_app
from titok.server.metrics import Metrics, batch_buckets


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_scraped_values_match_the_traffic_sent(tiny_artifact: Path) -> None:
    png = all_formats()["png"]
    with TestClient(build_app(make_settings(tiny_artifact, max_batch_size=8))) as c:
        for n in (1, 2, 3):  # 6 images in 3 requests, each alone: spread over the 2 idle workers, [1], [1, 1], [2, 1]
            files = [("images", (f"{i}.png", png, "image/png")) for i in range(n)]
            assert c.post("/encode", files=files).status_code == 200
        assert c.post("/decode", json={"tokens": [0] * 8}).status_code == 200
        assert c.post("/decode", json={"tokens": [[0] * 8] * 3}).status_code == 200
        assert c.post("/decode", json={"tokens": [0] * 7}).status_code == 422
        assert c.get("/nope").status_code == 404
        m = scrape(c)

    def get(name: str, **labels: str) -> float:
        return m[(name, tuple(sorted(labels.items())))]

    assert get("titok_items_processed_total", op="encode") == 6
    assert get("titok_items_processed_total", op="decode") == 4
    assert get("titok_batch_size_count", op="encode") == 5
    assert get("titok_batch_size_sum", op="encode") == 6
    assert get("titok_batch_size_count", op="decode") == 3  # [1], then [2, 1]
    assert get("titok_batch_size_bucket", op="decode", le="1.0") == 2
    assert get("titok_model_compute_seconds_count", op="decode") == 3
    assert get("titok_queue_wait_seconds_count", op="encode") == 6
    assert get("titok_requests_total", endpoint="/encode", status="200") == 3
    assert get("titok_requests_total", endpoint="/decode", status="200") == 2
    assert get("titok_requests_total", endpoint="/decode", status="422") == 1
    assert get("titok_requests_total", endpoint="other", status="404") == 1
    assert get("titok_request_duration_seconds_count", endpoint="/encode") == 3
    assert get("titok_queue_depth") == 0
    assert get("titok_ready") == 1
    info = [k for k in m if k[0] == "titok_model_info"]
    assert info and ("name", "test-tiny") in info[0][1]


def test_every_metric_has_the_prefix_and_the_batch_buckets_end_at_the_max() -> None:
    metrics = Metrics(max_batch_size=48)
    names = [f.name for f in metrics.registry.collect()]
    assert names and all(n.startswith("titok_") for n in names)
    assert batch_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    assert batch_buckets(1) == (1,)


def test_the_dtype_probe_shows_in_info_and_metrics(tiny_artifact: Path) -> None:
    """TITOK_DTYPE=auto (the default): the start-up probe's figures and its choice, in /info and /metrics."""
    with TestClient(build_app(make_settings(tiny_artifact, dtype="auto"))) as c:
        model = c.get("/info").json()["model"]
        m = scrape(c)
    probe = model["dtype_probe"]
    assert probe["requested"] == "auto" and probe["chosen"] == model["dtype"] in ("float32", "bfloat16")
    for dtype in ("float32", "bfloat16"):
        for op in ("encode", "decode"):
            value = m[("titok_dtype_probe_images_per_second", (("dtype", dtype), ("op", op)))]
            assert value == probe["images_per_s"][dtype][op] > 0
    info = next(v for (name, labels), v in m.items() if name == "titok_model_info")
    assert info == 1.0
    assert any(name == "titok_model_info" and ("dtype", model["dtype"]) in labels for name, labels in m)


def test_the_image_codec_is_counted_per_uploaded_image(tiny_artifact: Path) -> None:
    """titok_codec_*: each uploaded image's wait for a codec thread and its decoding time, and the images waiting
    (none once the requests are answered): where /encode of photos spends its time when decoding sets the pace."""
    png = all_formats()["png"]
    with TestClient(build_app(make_settings(tiny_artifact))) as c:
        for n in (1, 3):
            assert c.post("/encode", files=[("images", (f"{i}.png", png, "image/png")) for i in range(n)]
                          ).status_code == 200
        assert c.post("/decode", json={"tokens": [0] * 8}).status_code == 200  # no image to decode
        m = scrape(c)
    assert m[("titok_codec_wait_seconds_count", ())] == 4
    assert m[("titok_codec_decode_seconds_count", ())] == 4
    assert 0 < m[("titok_codec_decode_seconds_sum", ())] < 10
    assert m[("titok_codec_wait_seconds_sum", ())] >= 0
    assert m[("titok_codec_queue_depth", ())] == 0
