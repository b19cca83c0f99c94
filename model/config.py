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
    # Side of a low-frequency image path (0: off). The encoder adds a linear map of the area-downsampled
    # image to its K codes, and the decoder adds a linear map of the codes to a lowfreq_size^2 image,
    # upsampled: a linear autoencoder alongside the ViTs, which learns in a few hundred steps what
    # attention takes thousands to route, while the ViTs learn the rest.
    lowfreq_size: int = 0
    # Tail token drop (One-D-Piece): trained so that every prefix of the K tokens decodes. Training decodes
    # a random prefix each step; an exported model with it accepts any 1 <= k <= K tokens in `decode`.
    tail_drop: bool = False
    # Training-only knobs that belong to the model (they shape the checkpoint's behaviour)
    dead_code_steps: int = 200  # a code unused for this many steps is re-seeded
    # Which architecture family: "titok" (ours) or "reference" (published TiTok layouts, see reference.py)
    arch: str = "titok"
    # Options of arch="reference" (model/reference.py); our own architecture ignores them.
    # legacy: the published L-32/B-64/S-128 quirk of reshaping (not permuting) the latents before the
    # encoder's 1x1 projection (reference `is_legacy`).
    legacy: bool = True
    # Decoder head: "maskgit" predicts logits over the MaskGIT-VQGAN codes and runs its pixel decoder
    # (reference `finetune_decoder: True`); "pixels" predicts RGB patches directly (the VQ-8k models).
    pixel_head: str = "maskgit"
    # The MaskGIT-VQGAN pixel decoder: base channels, multiplier per resolution level (it upsamples
    # x2 between levels), ResNet blocks per level, and its codebook (size, dim). Published: 128,
    # (1, 1, 2, 2, 4), 2, 1024, 256; configurable so that tests can build a small one.
    pixel_channels: int = 128
    pixel_channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    pixel_res_blocks: int = 2
    pixel_codebook_size: int = 1024
    pixel_code_dim: int = 256
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Raises ValueError for a configuration no model can be built from, naming the field."""
        sizes = ("image_size", "patch_size", "num_tokens", "enc_width", "enc_depth", "enc_heads", "dec_width",
                 "dec_depth", "dec_heads", "code_dim", "head_channels")
        for name in sizes:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if isinstance(self.codebook_size, bool) or not isinstance(self.codebook_size, int) or self.codebook_size < 2:
            raise ValueError(f"codebook_size must be an integer of at least 2, not {self.codebook_size!r}")
        if isinstance(self.lowfreq_size, bool) or not isinstance(self.lowfreq_size, int) or self.lowfreq_size < 0:
            raise ValueError(f"lowfreq_size must be 0 (off) or a positive integer, not {self.lowfreq_size!r}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be positive, not {self.mlp_ratio!r}")
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


# The reference ViT sizes, (width, depth, heads), as named in its configs (`vit_enc_model_size`).
REFERENCE_VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "small": (512, 8, 8),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}


def _reference(enc: str, dec: str, tokens: int, codebook: int, code_dim: int, legacy: bool,
               tail_drop: bool = False) -> dict[str, Any]:
    """A published bytedance/1d-tokenizer model (arch="reference", loads its checkpoints; 256 px, patch 16).

    tail_drop: a One-D-Piece model (turingmotors/One-D-Piece): the same layout, trained so every prefix decodes.
    """
    enc_width, enc_depth, enc_heads = REFERENCE_VIT_SIZES[enc]
    dec_width, dec_depth, dec_heads = REFERENCE_VIT_SIZES[dec]
    return dict(
        arch="reference", image_size=256, patch_size=16, num_tokens=tokens,
        enc_width=enc_width, enc_depth=enc_depth, enc_heads=enc_heads,
        dec_width=dec_width, dec_depth=dec_depth, dec_heads=dec_heads,
        codebook_size=codebook, code_dim=code_dim, l2_norm_codes=legacy,
        legacy=legacy, pixel_head="maskgit" if legacy else "pixels", stem="patch", head="linear",
        tail_drop=tail_drop,
    )


PRESETS: dict[str, dict[str, Any]] = {
    # The CPU default that ships: small enough to train on 2 cores in about two hours.
    "tiny": dict(
        image_size=128, patch_size=16, num_tokens=32,
        enc_width=256, enc_depth=4, enc_heads=4, dec_width=256, dec_depth=4, dec_heads=4,
        codebook_size=4096, code_dim=12, l2_norm_codes=True, stem="patch", head="linear", lowfreq_size=16,
    ),
    # The seed configuration this project started from.
    "seed": dict(
        image_size=256, patch_size=64, num_tokens=16,
        enc_width=1024, enc_depth=12, enc_heads=16, dec_width=1024, dec_depth=12, dec_heads=16,
        codebook_size=8192, code_dim=1024, l2_norm_codes=False, beta=0.25, stem="patch", head="linear",
    ),
    # The published TiTok tokenizers (`titok convert` loads their checkpoints into these). The
    # original three: 4096 x 12 L2-normalised codes, legacy encoder, MaskGIT-VQGAN pixel decoder.
    "titok-l-32": _reference("large", "large", 32, 4096, 12, legacy=True),
    "titok-b-64": _reference("base", "base", 64, 4096, 12, legacy=True),
    "titok-s-128": _reference("small", "small", 128, 4096, 12, legacy=True),
    # The VQ-8k models: 8192 x 64 codes without L2 norm, fixed encoder, direct-pixel head.
    "titok-bl-64-vq8k": _reference("base", "large", 64, 8192, 64, legacy=False),
    "titok-bl-128-vq8k": _reference("base", "large", 128, 8192, 64, legacy=False),
    "titok-sl-256-vq8k": _reference("small", "large", 256, 8192, 64, legacy=False),
    # One-D-Piece (turingmotors/One-D-Piece): TiTok's original layout at 256 tokens, trained with tail token
    # drop, so that the first k of the 256 tokens decode for every k (hub: turing-motors/One-D-Piece-*-256).
    "one-d-piece-s-256": _reference("small", "small", 256, 4096, 12, legacy=True, tail_drop=True),
    "one-d-piece-b-256": _reference("base", "base", 256, 4096, 12, legacy=True, tail_drop=True),
    "one-d-piece-l-256": _reference("large", "large", 256, 4096, 12, legacy=True, tail_drop=True),
}


def get_preset(name: str, **overrides: Any) -> TiTokConfig:
    """The named preset with any fields overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return TiTokConfig(**{**PRESETS[name], **overrides})
