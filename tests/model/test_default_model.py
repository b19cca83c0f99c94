"""The bundled default model: it loads, describes itself, and beats the equal-bits thumbnail on a
held-out photo (Grace Hopper, public domain, shipped inside matplotlib; never trained on)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from titok.core.artifact import load_artifact
from titok.model.data import center_crop
from titok.model.quality import psnr, thumbnail_baseline, to_uint8

DEFAULT = Path(__file__).resolve().parents[2] / "service" / "models" / "default.pt"


@pytest.fixture(scope="module")
def default_model():
    return load_artifact(DEFAULT)


def test_bundled_artifact_has_its_metadata(default_model):
    _, meta = default_model
    for key in ("name", "image_size", "num_tokens", "codebook_size", "config", "content_hash", "torch_version",
                "training", "eval"):
        assert key in meta, key
    assert meta["config"]["image_size"] == meta["image_size"]
    assert meta["eval"]["psnr"] > meta["eval"]["baseline"]["psnr"]
    assert DEFAULT.stat().st_size < 50e6
    # Its data by name, not by the training machine's paths (issue 21, item 16).
    assert meta["training"]["data"] == ["train"] and meta["eval"]["data"] == ["dev-eval"]


def test_bundled_model_beats_the_equal_bits_thumbnail_on_a_held_out_photo(default_model):
    module, meta = default_model
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photo = np.asarray(Image.open(f).convert("RGB"))
    x = center_crop(photo, meta["image_size"])[None]  # (1, 3, S, S) in [0, 1]
    images = to_uint8(x).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    tokens = module.encode(images)
    assert tokens.shape == (1, meta["num_tokens"])
    recon = module.decode(tokens).permute(0, 3, 1, 2).float()
    ours = float(psnr(recon, to_uint8(x)))
    bits = meta["num_tokens"] * math.log2(meta["codebook_size"])
    baseline = float(psnr(thumbnail_baseline(x, bits), to_uint8(x)))
    assert ours > baseline, (ours, baseline)


def test_a_plain_jit_load_of_the_bundled_model_encodes_on_cpu():
    """Stored in fp16: the artifact casts its own inputs, so no dtype handling is needed to run it."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated.*")
        plain = torch.jit.load(str(DEFAULT))
    tokens = plain.encode(torch.zeros(1, 128, 128, 3, dtype=torch.uint8))
    assert tokens.shape == (1, 32) and 0 <= int(tokens.min()) and int(tokens.max()) < 4096
    assert plain.decode(tokens).shape == (1, 128, 128, 3)
