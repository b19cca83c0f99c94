"""The tokenizer's configuration and the table of named presets (the one place sizes live)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TiTokConfig:
    """Everything needed to rebuild a tokenizer; stored inside every checkpoint and artifact."""

    image_size: int = 128
    patch_size: int = 8
    num_tokens: int = 32  # K, the length of the 1D token sequence
    enc_width: int = 256
    enc_depth: int = 4
    enc_heads: int = 4
    dec_width: int = 256
    dec_depth: int = 4
    dec_heads: int = 4
    mlp_ratio: float = 4.0
    codebook_size: int = 4096
    code_dim: int = 12
    l2_norm_codes: bool = True
    beta: float = 0.25  # commitment weight
    # "patch": one strided conv (plain ViT); "conv": a small convolutional stem down to the patch grid
    stem: str = "conv"
    # "linear": linear to P*P*3 then unpatchify; "conv": linear to P*P*head_channels, then 3x3 convs
    head: str = "conv"
    head_channels: int = 32
    # Training-only knobs that belong to the model (they shape the checkpoint's behaviour)
    dead_code_steps: int = 200  # a code unused for this many steps is re-seeded
    # Which architecture family: "titok" (ours) or "reference" (published TiTok layouts, see reference.py)
    arch: str = "titok"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.enc_width % self.enc_heads or self.dec_width % self.dec_heads:
            raise ValueError("widths must be multiples of their head counts")
        if self.stem not in ("patch", "conv"):
            raise ValueError(f"stem must be 'patch' or 'conv', not {self.stem!r}")
        if self.head not in ("linear", "conv"):
            raise ValueError(f"head must be 'linear' or 'conv', not {self.head!r}")
        if self.stem == "conv" and self.patch_size & (self.patch_size - 1):
            raise ValueError("the conv stem needs a power-of-two patch_size")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def bits_per_image(self) -> float:
        import math

        return self.num_tokens * math.log2(self.codebook_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TiTokConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **overrides: Any) -> TiTokConfig:
        return dataclasses.replace(self, **overrides)


def _published(width: int, depth: int, heads: int, tokens: int) -> dict[str, Any]:
    return dict(
        image_size=256, patch_size=16, num_tokens=tokens,
        enc_width=width, enc_depth=depth, enc_heads=heads,
        dec_width=width, dec_depth=depth, dec_heads=heads,
        codebook_size=4096, code_dim=12, l2_norm_codes=True, stem="patch", head="linear",
    )


PRESETS: dict[str, dict[str, Any]] = {
    # The CPU default that ships: small enough to train on 2 cores in about two hours.
    "tiny": dict(
        image_size=128, patch_size=8, num_tokens=32,
        enc_width=256, enc_depth=4, enc_heads=4, dec_width=256, dec_depth=4, dec_heads=4,
        codebook_size=4096, code_dim=12, l2_norm_codes=True, stem="conv", head="conv",
    ),
    # The seed configuration this project started from.
    "seed": dict(
        image_size=256, patch_size=64, num_tokens=16,
        enc_width=1024, enc_depth=12, enc_heads=16, dec_width=1024, dec_depth=12, dec_heads=16,
        codebook_size=8192, code_dim=1024, l2_norm_codes=False, beta=0.25, stem="patch", head="linear",
    ),
    # The published TiTok sizes (our architecture at their sizes; see model/reference.py for the
    # layout that loads their checkpoints).
    "titok-s-128": _published(512, 8, 8, 128),
    "titok-b-64": _published(768, 12, 12, 64),
    "titok-l-32": _published(1024, 24, 16, 32),
}


def get_preset(name: str, **overrides: Any) -> TiTokConfig:
    """The named preset with any fields overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return TiTokConfig(**{**PRESETS[name], **overrides})
