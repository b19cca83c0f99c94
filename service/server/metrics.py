"""Every Prometheus object of the service, defined once (prefix titok_, base units, histograms)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)  # sequence lengths: K is 32..256 for TiTok-like models


def batch_buckets(max_batch_size: int) -> tuple[float, ...]:
    """1, 2, 4, ... up to the max batch size (which is always a bucket edge)."""
    edges, b = [], 1
    while b < max_batch_size:
        edges.append(float(b))
        b *= 2
    return (*edges, float(max_batch_size))


class Metrics:
    """One registry per app, so several apps (tests, benchmarks) never share counters."""

    def __init__(self, max_batch_size: int = 32, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.requests = Counter("titok_requests", "HTTP requests by endpoint and status code.",
                                ["endpoint", "status"], registry=r)
        self.request_duration = Histogram("titok_request_duration_seconds", "Time from request to response.",
                                          ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("titok_queue_wait_seconds", "Time an item waits in the queue before compute.",
                                    ["op"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("titok_batch_size", "Items per model call.", ["op"],
                                    buckets=batch_buckets(max_batch_size), registry=r)
        self.model_compute = Histogram("titok_model_compute_seconds", "Model time per batch.", ["op"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.encode_tokens = Histogram("titok_encode_tokens_per_image", "Tokens returned per encoded image "
                                       "(K, or fewer under num_tokens / target_psnr).", buckets=TOKEN_BUCKETS,
                                       registry=r)
        self.decode_tokens = Histogram("titok_decode_tokens_per_item", "Tokens per decoded sequence (its length).",
                                       buckets=TOKEN_BUCKETS, registry=r)
        self.queue_depth = Gauge("titok_queue_depth", "Items waiting in the queue.", registry=r)
        # The image codec in front of /encode (titok.server.decoding.DecodeQueue): where photo uploads wait when
        # decoding, not the model, sets the pace.
        self.codec_depth = Gauge("titok_codec_queue_depth", "Uploaded images waiting for a codec thread.",
                                 registry=r)
        self.codec_wait = Histogram("titok_codec_wait_seconds", "Time an uploaded image waits for a codec thread.",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.codec_decode = Histogram("titok_codec_decode_seconds", "Time to decode and resize one uploaded image.",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.inflight_upload_bytes = Gauge("titok_inflight_upload_bytes", "Bytes of request bodies held now "
                                           "(TITOK_MAX_INFLIGHT_UPLOAD_BYTES bounds it).", registry=r)
        self.items_processed = Counter("titok_items_processed", "Items (images or token sequences) computed.",
                                       ["op"], registry=r)
        self.rejections = Counter("titok_rejections", "Requests or items refused, by reason.", ["reason"], registry=r)
        self.key_requests = Counter("titok_authenticated_requests", "Requests let in, by API key ID.", ["key_id"],
                                    registry=r)
        self.model_info = Info("titok_model", "The served model.", registry=r)
        self.ready = Gauge("titok_ready", "1 when warmed up and not draining.", registry=r)
        self.dtype_probe = Gauge("titok_dtype_probe_images_per_second",
                                 "Images/s measured by the start-up dtype probe (TITOK_DTYPE), by dtype and op; "
                                 "titok_model_info's dtype label is the one chosen.", ["dtype", "op"], registry=r)

    def set_model_info(self, info: dict[str, Any]) -> None:
        self.model_info.info({k: str(v) for k, v in info.items() if not isinstance(v, dict)})
        for dtype, speeds in (info.get("dtype_probe") or {}).get("images_per_s", {}).items():
            for op, value in speeds.items():
                self.dtype_probe.labels(dtype, op).set(value)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
