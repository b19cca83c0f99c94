"""Image-quality measures on uint8 outputs, and the equal-bits thumbnail baseline."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from titok.core import quality as core_quality  # the one PSNR: the service's


def to_uint8(x01: torch.Tensor) -> torch.Tensor:
    """Float in [0, 1] -> the uint8 values a user would receive (as float tensor 0..255)."""
    return (x01.clamp(0, 1) * 255).round()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB between uint8-valued tensors (B, 3, H, W) in 0..255 -> float64 (B,) on a's device.

    titok.core.quality.psnr computes it, so the evaluation's figure is the service's ?quality=true one.
    """
    value = core_quality.psnr(a.detach().cpu().numpy(), b.detach().cpu().numpy())
    return torch.from_numpy(value).to(a.device)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, size, size)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5), mean over RGB channels.

    a, b: (B, 3, H, W) in 0..255.
    """
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    a, b = a.double(), b.double()
    ch = a.shape[1]
    w = _gaussian_window().to(a.device).expand(ch, 1, -1, -1)

    def filt(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, groups=ch)  # valid region only

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def thumbnail_side(bits: float) -> int:
    """Side of the largest square RGB thumbnail (8 bits a channel) that fits in `bits`."""
    return max(1, math.isqrt(int(bits // 24)))


def thumbnail_baseline(x01: torch.Tensor, bits: float) -> torch.Tensor:
    """The equal-bits baseline: an RGB thumbnail holding the same bytes, upsampled back with bicubic.

    x01: (B, 3, H, W) in [0, 1] -> uint8-valued (B, 3, H, W).
    """
    side = thumbnail_side(bits)
    thumb = to_uint8(F.interpolate(x01, size=(side, side), mode="area"))  # stored as uint8
    up = F.interpolate(thumb / 255.0, size=x01.shape[-2:], mode="bicubic", align_corners=False)
    return to_uint8(up)


def prefix_lengths(num_tokens: int) -> list[int]:
    """The prefix lengths an ordered (prefix-decodable) tokenizer is evaluated at: 1, 2, 4, ... below K, and K."""
    lengths = [1 << i for i in range(num_tokens.bit_length()) if 1 << i < num_tokens]
    return lengths + [num_tokens]
