"""The artifact loader and the engine (no `model` import in the service itself)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.core.artifact import load_artifact
from service.core.engine import Engine
from service.errors import ModelLoadError


def test_engine_runs_both_directions(tiny_artifact: Path) -> None:
    engine = Engine.load(tiny_artifact, device="cpu", torch_threads=1)
    try:
        assert (engine.name, engine.image_size, engine.num_tokens, engine.codebook_size) == ("test-tiny", 32, 8, 64)
        images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
        tokens = engine.run("encode", images)
        assert tokens.shape == (3, 8) and tokens.dtype == np.int64 and tokens.min() >= 0 and tokens.max() < 64
        pixels = engine.run("decode", tokens)
        assert pixels.shape == (3, 32, 32, 3) and pixels.dtype == np.uint8
        engine.warmup(4)
        assert engine.info()["device"] == "cpu"
    finally:
        engine.close()


def test_fp16_stored_weights_are_computed_in_fp32_on_cpu(tmp_path: Path) -> None:
    from model.config import get_preset
    from model.export import export_model
    from model.tokenizer import TiTok

    cfg = get_preset("tiny", image_size=32, patch_size=8, num_tokens=8, enc_width=32, enc_depth=1, enc_heads=2,
                     dec_width=32, dec_depth=1, dec_heads=2, codebook_size=64, head_channels=8)
    path = tmp_path / "half.pt"
    export_model(TiTok(cfg), cfg, path, {"name": "half"}, fp16_storage=True)
    module, meta = load_artifact(path)
    assert meta["weights_dtype"] == "float16"
    assert {p.dtype for p in module.parameters()} == {torch.float32}


def test_missing_corrupt_and_wrong_dtype_are_clear_errors(tmp_path: Path, tiny_artifact: Path) -> None:
    with pytest.raises(ModelLoadError, match="model file not found"):
        load_artifact(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a zip archive" * 10)
    with pytest.raises(ModelLoadError, match="not a valid TorchScript artifact"):
        load_artifact(junk)
    with pytest.raises(ModelLoadError, match="CUDA only"):
        load_artifact(tiny_artifact, "cpu", "float16")
