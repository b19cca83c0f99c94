"""The evaluation measures what the service serves: its input crop is /ui/input's, its PSNR the service's."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import torch
from fastapi.testclient import TestClient
from PIL import Image
from sample_images import all_formats, save

from titok.core.quality import psnr as service_psnr
from titok.model.data import load_center_crops
from titok.model.quality import psnr as eval_psnr


def _structured(w: int, h: int) -> Image.Image:
    """Not square, not uniform: a crop that is off by a pixel shows."""
    y, x = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([x * 255 // w, y * 255 // h, (x * y) % 256], -1).astype(np.uint8))


def test_the_evals_input_crop_equals_ui_inputs(client: TestClient, tmp_path: Path) -> None:
    images = {**{f"{k}.{'jpg' if k in ('cmyk', 'exif_rotated') else 'tif' if k == 'tiff' else 'png'}": v
                 for k, v in all_formats().items() if k not in ("jpeg", "webp", "gif", "bmp")},
              "wide.png": save(_structured(97, 41), "PNG"), "tall.jpg": save(_structured(33, 120), "JPEG"),
              "webp.webp": all_formats()["webp"], "gif.gif": all_formats()["gif"], "bmp.bmp": all_formats()["bmp"]}
    folder = tmp_path / "eval"
    folder.mkdir()
    for name, data in images.items():
        (folder / name).write_bytes(data)
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:  # and once more from a WebDataset shard
        for name in ("wide.png", "tall.jpg"):
            tar.add(folder / name, arcname=f"sample-{name}")
    crops, report = load_center_crops([folder, tmp_path / "shard.tar"], 32)  # (N, 3, 32, 32) in [0, 1]
    names = sorted(images) + ["sample-wide.png", "sample-tall.jpg"]
    assert report.loaded == len(names) and not report.skipped
    for name, crop in zip(names, crops, strict=True):
        data = images[name.removeprefix("sample-")]
        served = client.post("/ui/input?resize=crop", content=data, headers={"content-type": "image/png"})
        assert served.status_code == 200, served.text
        shown = np.asarray(Image.open(io.BytesIO(served.content)))
        ours = (crop.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        assert np.array_equal(ours, shown), name


def test_the_evals_psnr_is_the_services() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, 3, 3, 8, 8), dtype=np.uint8)
    ours = eval_psnr(torch.from_numpy(a).double(), torch.from_numpy(b).double()).numpy()
    assert np.array_equal(ours, service_psnr(a, b))
    assert service_psnr(a, a.copy())[0] > 140  # identical: the floor, not infinity
