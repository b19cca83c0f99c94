"""Model-test fixtures: a micro config and folders of synthetic photos (fast, offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from titok.model.config import get_preset

MICRO = dict(image_size=32, patch_size=8, num_tokens=16, enc_width=64, enc_depth=2, enc_heads=2,
             dec_width=64, dec_depth=2, dec_heads=2, codebook_size=256, head_channels=8, dead_code_steps=20,
             lowfreq_size=8)


def micro_config(**overrides):
    return get_preset("tiny", **{**MICRO, **overrides})


def synthetic_photo(seed: int, size: int = 48) -> np.ndarray:
    """A smooth, structured RGB image: gradients, a disc and a bar (uint8 HxWx3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3))
    for c in range(3):
        a, b, ph = rng.uniform(-1, 1, 3)
        img[..., c] = 0.5 + 0.35 * np.sin(3 * (a * x + b * y) + ph * 3)
    cy, cx, r = rng.uniform(0.3, 0.7, 2).tolist() + [rng.uniform(0.15, 0.3)]
    img[(y - cy) ** 2 + (x - cx) ** 2 < r**2] = rng.uniform(0, 1, 3)
    img[:, int(rng.uniform(0.1, 0.9) * size):][:, :4] = rng.uniform(0, 1, 3)
    return (img.clip(0, 1) * 255).astype(np.uint8)


def write_photos(folder: Path, n: int, size: int = 48, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"photo{i}.png"
        Image.fromarray(synthetic_photo(start + i, size)).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def micro_cfg():
    return micro_config


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    write_photos(folder, 6)
    return folder
