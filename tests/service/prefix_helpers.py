"""A toy prefix-decodable artifact whose PSNR rises strictly with k, and images to feed it.

The toy model (TorchScript, saved with titok.core.artifact.save_artifact, meta `prefix_decodable: true`)
cuts a 32 x 32 image into K = 8 bands of 4 rows; token j is band j's mean level // 4 (codebook 64).
decode(k tokens) paints the first k bands at their level and the others mid-grey. For images whose bands
are far from grey (`banded_images`), each further token replaces a big error by a small one, so the PSNR
grows strictly with k and the fewest tokens reaching a target is well defined: a brute-force scan checks
the service's search.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from titok.core.artifact import save_artifact

SIZE, K, CODEBOOK = 32, 8, 64
META = {"name": "toy-prefix", "image_size": SIZE, "num_tokens": K, "codebook_size": CODEBOOK,
        "prefix_decodable": True, "content_hash": "70e" * 21 + "a"}


class ToyPrefixTokenizer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.num_tokens = K
        self.band = SIZE // K
        self.size = SIZE
        self.top = CODEBOOK - 1

    @torch.jit.export
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        bands = images.float().reshape(b, self.num_tokens, self.band * self.size * 3).mean(2)  # (B, K)
        return (bands / 4).floor().clamp(0, self.top).long()

    @torch.jit.export
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        k = tokens.shape[1]
        if k < 1 or k > self.num_tokens:
            raise ValueError("decode expects 1 to 8 tokens per row")
        b = tokens.shape[0]
        levels = torch.full((b, self.num_tokens), 128.0)
        levels[:, :k] = tokens.float() * 4 + 2
        rows = levels.repeat_interleave(self.band, dim=1)  # (B, SIZE)
        return rows[:, :, None, None].expand(b, self.size, self.size, 3).round().to(torch.uint8).contiguous()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)


def write_toy_prefix_artifact(path: Path, **meta: object) -> Path:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated.*")
        scripted = torch.jit.script(ToyPrefixTokenizer())
    save_artifact(scripted, path, {**META, **meta})
    return path


@pytest.fixture(scope="session")
def prefix_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_prefix_artifact(tmp_path_factory.mktemp("prefix") / "toy-prefix.pt")


def banded_images(n: int, seed: int = 0) -> np.ndarray:
    """uint8 (n, 32, 32, 3): each band one level, far from grey (0..40 or 215..255), a little noise."""
    rng = np.random.default_rng(seed)
    levels = np.where(rng.random((n, K)) < 0.5, rng.integers(0, 40, (n, K)), rng.integers(215, 255, (n, K)))
    rows = np.repeat(levels, SIZE // K, axis=1)
    img = np.broadcast_to(rows[:, :, None, None], (n, SIZE, SIZE, 3)).astype(np.int64)
    return np.clip(img + rng.integers(-1, 2, img.shape), 0, 255).astype(np.uint8)


def psnr_by_k(engine: object, image: np.ndarray) -> list[float]:
    """The PSNR of `image` decoded from its first k tokens, for k = 1..K, by direct engine calls."""
    from titok.core.engine import psnr

    tokens = engine.run("encode", image[None])  # type: ignore[attr-defined]
    return [float(psnr(engine.run("decode", tokens[:, :k]), image[None])[0])  # type: ignore[attr-defined]
            for k in range(1, K + 1)]


@pytest.fixture(scope="session")
def tiny_prefix_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight TiTok of tests/conftest.py, exported with tail drop: a real prefix-decodable artifact."""
    from titok.model.config import get_preset
    from titok.model.export import export_model
    from titok.model.tokenizer import TiTok

    cfg = get_preset("tiny", image_size=32, patch_size=8, num_tokens=8, enc_width=32, enc_depth=1, enc_heads=2,
                     dec_width=32, dec_depth=1, dec_heads=2, codebook_size=64, head_channels=8, tail_drop=True)
    path = tmp_path_factory.mktemp("artifact") / "tiny-prefix.pt"
    export_model(TiTok(cfg), cfg, path, {"name": "test-tiny-prefix"})
    return path
