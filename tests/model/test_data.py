"""Training data paths as checkpoints and artifacts record them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from titok.model.data import portable_paths


@pytest.mark.parametrize(("paths", "recorded"), [
    (["/home/alice/photos/train"], ["train"]),
    (["/data/photos/train", "/data/shards/00000.tar"], ["photos/train", "shards/00000.tar"]),
    (["/data/photos", "/data/photos/extra"], ["photos", "photos/extra"]),
    (["/srv/a/00000.tar", "/srv/a/00001.tar"], ["00000.tar", "00001.tar"]),
    ([], []),
])
def test_paths_are_kept_relative_to_the_folder_that_holds_them_all(paths: list[str], recorded: list[str]) -> None:
    assert portable_paths(paths) == recorded


def test_relative_paths_are_taken_from_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert portable_paths(["photos/train", Path("photos/dev-eval")]) == ["train", "dev-eval"]
    assert not any(str(tmp_path) in p or os.path.isabs(p) for p in portable_paths(["x/a.tar", "y"]))


def _photos(n: int = 3) -> list:
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):  # smooth photo-like gradients plus noise, of different sizes
        h, w = 90 + 20 * i, 130 - 10 * i
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 127 // (h + w))], -1)
        out.append(np.clip(img + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8))
    return out


def test_device_crops_draw_the_same_crops_as_the_pillow_path() -> None:
    """The on-device path (here given the CPU as its device) makes the same crops (same draws, same order) as
    Pillow's, resized by a close kernel: within a few levels of 255 on average, and the RNG ends in the same state."""
    import torch

    from titok.model.data import RandomCrops

    images = _photos()
    pil, dev = RandomCrops(images, 32, seed=3), RandomCrops(images, 32, seed=3, device=torch.device("cpu"))
    a, b = pil.sample(16), dev.sample(16)
    assert a.shape == b.shape == (16, 3, 32, 32) and b.dtype == torch.float32
    assert 0.0 <= float(b.min()) and float(b.max()) <= 1.0
    assert float((a - b).abs().mean()) < 4 / 255, float((a - b).abs().mean())
    per_crop = (a - b).abs().mean(dim=(1, 2, 3))  # every crop, those at an image's edge included: none darkened
    assert float(per_crop.max()) < 8 / 255, per_crop
    assert pil.rng.bit_generator.state == dev.rng.bit_generator.state
    other = RandomCrops(images, 32, seed=4, device=torch.device("cpu")).sample(16)
    assert float((other - b).abs().mean()) > 10 / 255  # other draws: other crops (the check above can fail)
