"""Shared fixtures: a tiny random-weight artifact, built once per session (the service never imports model/)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model.config import get_preset
    from model.export import export_model
    from model.tokenizer import TiTok

    cfg = get_preset("tiny", image_size=32, patch_size=8, num_tokens=8, enc_width=32, enc_depth=1, enc_heads=2,
                     dec_width=32, dec_depth=1, dec_heads=2, codebook_size=64, head_channels=8)
    path = tmp_path_factory.mktemp("artifact") / "tiny.pt"
    export_model(TiTok(cfg), cfg, path, {"name": "test-tiny"})
    return path
