"""`titok bench`'s body-format rows: the same batch sent as .npy arrays against JPEG uploads / JSON with PNG answers.

A pipeline holds arrays: .npy bodies skip image decoding on /encode and PNG encoding on /decode. Each
row is a closed loop of whole-batch requests; items/s counts images or token sequences.
"""

from __future__ import annotations

import json
from functools import partial

import httpx
import numpy as np

from ..core.arrays import NPY, write_npy
from ..core.codec import load_image
from . import loadgen

HEADER = ("| op | body -> answer | items / request | requests | items/s | p50 ms | p99 ms | request KB | answer KB |\n"
          "|---|---|---|---|---|---|---|---|---|")


def _cases(url: str, photos: list[bytes], tokens: list[list[int]], image_size: int,
           batch: int) -> list[tuple[str, str, bytes, str, str | None]]:
    """(op, name, body, content type, accept) for each format, all holding the same `batch` items."""
    chosen = [photos[i % len(photos)] for i in range(batch)]
    multipart = httpx.Request("POST", f"{url}/encode",
                              files=[("images", (f"{i}.jpg", p, "image/jpeg")) for i, p in enumerate(chosen)])
    multipart.read()
    images = np.stack([load_image(p, image_size) for p in chosen])  # (B, S, S, 3): what a pipeline holds
    ids = np.array([tokens[i % len(tokens)] for i in range(batch)], dtype=np.int64)  # (B, K)
    return [
        ("encode", "JPEG multipart -> JSON", multipart.content, multipart.headers["content-type"], None),
        ("encode", ".npy -> .npy", write_npy(images), NPY, NPY),
        ("decode", "JSON -> JSON of base64 PNGs", json.dumps({"tokens": ids.tolist()}).encode(),
         "application/json", None),
        ("decode", ".npy -> .npy", write_npy(ids), NPY, NPY),
    ]


def table(url: str, photos: list[bytes], tokens: list[list[int]], image_size: int, batch: int, requests: int,
          concurrency: int = 2) -> str:
    """One row per format: `requests` requests of `batch` items, `concurrency` at a time."""
    rows = [HEADER]
    for op, name, body, ctype, accept in _cases(url, photos, tokens, image_size, batch):
        headers = {"content-type": ctype, **({"accept": accept} if accept else {})}
        answer = httpx.post(f"{url}/{op}", content=body, headers=headers, timeout=120)
        if answer.status_code != 200:
            rows.append(f"| {op} | {name} | {batch} | failed: {answer.status_code} {answer.text[:80]} |")
            continue
        request = loadgen.post(url, f"/{op}", body, ctype, accept)
        tally, seconds = loadgen.run(partial(loadgen.closed_loop, url, [request], concurrency, requests))
        p50, p99 = np.percentile(tally.latencies, [50, 99]) * 1000 if tally.latencies else (float("nan"),) * 2
        rows.append(f"| {op} | {name} | {batch} | {tally.ok + tally.failed} | {tally.ok * batch / seconds:.1f} | "
                    f"{p50:.0f} | {p99:.0f} | {len(body) / 1024:.0f} | {len(answer.content) / 1024:.0f} |")
    return "\n".join(rows) + "\n"
