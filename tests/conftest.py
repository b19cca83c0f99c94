"""Shared fixtures: a tiny random-weight artifact, built once per session (the service never imports model/)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `cuda` run only with TITOK_DEVICE=cuda on a machine with CUDA (scripts/gpu_check.sh)."""
    if os.environ.get("TITOK_DEVICE") == "cuda":
        import torch

        if torch.cuda.is_available():
            return
        reason = "marker cuda: TITOK_DEVICE=cuda but torch sees no CUDA device"
    else:
        reason = "marker cuda: needs TITOK_DEVICE=cuda and a CUDA device (scripts/gpu_check.sh runs these)"
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from titok.model.config import get_preset
    from titok.model.export import export_model
    from titok.model.tokenizer import TiTok

    cfg = get_preset("tiny", image_size=32, patch_size=8, num_tokens=8, enc_width=32, enc_depth=1, enc_heads=2,
                     dec_width=32, dec_depth=1, dec_heads=2, codebook_size=64, head_channels=8)
    path = tmp_path_factory.mktemp("artifact") / "tiny.pt"
    export_model(TiTok(cfg), cfg, path, {"name": "test-tiny"})
    return path
