"""The engine and the app on CUDA, in the dtype of TITOK_DTYPE (auto, float32, float16, bfloat16).

Marked `cuda`: skipped unless TITOK_DEVICE=cuda on a machine with CUDA; scripts/gpu_check.sh runs them once per
dtype. Tokens are compared with the CPU's fp32 tokens of the same images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from titok.core.artifact import load_artifact
from titok.core.engine import Engine
from titok.server.app import build_app
from titok.settings import Settings

pytestmark = pytest.mark.cuda
DTYPE = os.environ.get("TITOK_DTYPE", "auto")


def _images(n: int = 8) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_engine_on_cuda_in_the_chosen_dtype_gives_cpu_fp32_tokens_nearly_everywhere(tiny_artifact: Path) -> None:
    cpu, _ = load_artifact(tiny_artifact, "cpu", "float32")
    with torch.inference_mode():
        exact = cpu.encode(torch.from_numpy(_images())).numpy()
    engine = Engine.load(tiny_artifact, "cuda", DTYPE)
    try:
        expected = {"auto": "bfloat16" if torch.cuda.is_bf16_supported() else "float16"}.get(DTYPE, DTYPE)
        assert engine.dtype == expected and engine.device == "cuda"
        probe = engine.info()["dtype_probe"]
        assert probe["chosen"] == expected and probe["images_per_s"]["float32"]["encode"] > 0
        assert {p.dtype for p in engine.module.model.quantize.parameters()} == {torch.float32}
        tokens = engine.run("encode", _images())
        share = float((tokens == exact).mean())
        assert share == 1.0 if expected == "float32" else share >= 0.9, share
        pixels = engine.run("decode", tokens)
        assert pixels.shape == (8, 32, 32, 3) and pixels.dtype == np.uint8
        engine.warmup(64)
    finally:
        engine.close()


def test_the_app_serves_on_cuda(tiny_artifact: Path) -> None:
    settings = Settings(model_path=tiny_artifact, device="cuda", dtype=DTYPE, max_batch_size=16)
    with TestClient(build_app(settings)) as c:
        model = c.get("/info").json()["model"]
        assert model["device"] == "cuda" and model["dtype"] == model["dtype_probe"]["chosen"]
        r = c.post("/decode", json={"tokens": [[1] * 8] * 3})
        assert r.status_code == 200 and len(r.json()["images"]) == 3
        assert "titok_dtype_probe_images_per_second" in c.get("/metrics").text
