"""Image quality on uint8 pixels: the one PSNR of the project (the service's ?quality=true, the evaluation and
training all measure with it, so a figure means the same thing wherever it is reported)."""

from __future__ import annotations

import numpy as np

PSNR_FLOOR_MSE = 1e-10  # identical images: ~148 dB rather than infinity


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of a against b, both (B, ...) with values in 0..255 (uint8 or float) -> float64 (B,).

    The layout after the batch axis does not matter (HWC or CHW), only that a and b share it.
    """
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ, {a.shape} and {b.shape}")
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(255.0**2 / np.maximum(mse, PSNR_FLOOR_MSE))
