"""The published TiTok architecture (bytedance/1d-tokenizer), laid out so its checkpoints load strictly.

Parameter names and shapes are the reference's (`load_state_dict(strict=True)` on its `.bin` /
`model.safetensors`), and so is the arithmetic, quirks included, because the point is to give the
published models' tokens and pixels:
- encoder sequence `[class token, patches, latent tokens]`, attention in nn.MultiheadAttention's
  packed layout, sequence-first like the reference;
- the legacy reshape (not a permute) of the latents before the encoder's 1x1 projection;
- the quantizer's squared-distance argmin on L2-normalised vectors (same formula, same ties);
- decoder sequence `[class token, mask tokens, latent tokens]`; either the legacy head (logits over the
  1024 MaskGIT-VQGAN codes -> softmax -> soft code embedding -> MaskGIT-VQGAN pixel decoder, with its
  SAME padding, GroupNorm eps 1e-6 and shortcut applied to the block output) or the VQ-8k direct-pixel head.

Pixels enter as float (B, 3, 256, 256) in [0, 1] without normalisation and leave unclamped, nominally
[0, 1]. The VAE variants (LL-32/BL-64/BL-128 VAE) and TA-TiTok are out of scope.
Everything here scripts with TorchScript: the served artifact is this module, scripted.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import TiTokConfig

PIXEL_HEADS = ("maskgit", "pixels")
GROUPS = 32  # MaskGIT-VQGAN's GroupNorm groups


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x += attn(ln_1(x)); x += mlp(ln_2(x)). Sequence-first (L, B, W), as in the reference."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        # nn.MultiheadAttention itself: its packed in_proj (q, k, v) is the checkpoint's layout, and the
        # same kernel keeps eager outputs identical to the reference's.
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(hidden, width)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


def latents_to_conv_input(x: torch.Tensor, legacy: bool) -> torch.Tensor:
    """(B, K, W) contiguous -> (B, W, K, 1), the "image" the encoder's 1x1 conv_out projects.

    legacy=True reproduces the published models' bug: a reshape, not a permute, so element [c, k] is
    token (c*K + k) // W, channel (c*K + k) % W. Their weights were trained through it (issue #90).
    """
    b, k, w = x.shape
    if legacy:
        return x.reshape(b, w, k, 1)
    return x.reshape(b, k, w, 1).permute(0, 2, 1, 3)


class ReferenceEncoder(nn.Module):
    def __init__(self, cfg: TiTokConfig) -> None:
        super().__init__()
        w = cfg.enc_width
        self.width = w
        self.num_tokens = cfg.num_tokens
        self.num_patches = cfg.num_patches
        self.code_dim = cfg.code_dim
        self.legacy = cfg.legacy
        self.patch_embed = nn.Conv2d(3, w, cfg.patch_size, stride=cfg.patch_size, bias=True)
        scale = w ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(1, w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.num_patches + 1, w))
        self.latent_token_positional_embedding = nn.Parameter(scale * torch.randn(cfg.num_tokens, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = nn.ModuleList(
            [ResidualAttentionBlock(w, cfg.enc_heads, cfg.mlp_ratio) for _ in range(cfg.enc_depth)])
        self.ln_post = nn.LayerNorm(w)
        self.conv_out = nn.Conv2d(w, cfg.code_dim, 1, bias=True)

    def forward(self, x: torch.Tensor, latent_tokens: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) in [0, 1]; latent_tokens: (K, W) -> (B, code_dim, 1, K)."""
        b = x.shape[0]
        x = self.patch_embed(x)  # (B, W, g, g)
        x = x.reshape(b, self.width, -1).permute(0, 2, 1)  # (B, N, W), row-major patches
        cls = self.class_embedding.to(x.dtype).unsqueeze(0).expand(b, -1, -1)  # (B, 1, W)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, 1+N, W)
        lat = latent_tokens.to(x.dtype).unsqueeze(0).expand(b, -1, -1)
        lat = lat + self.latent_token_positional_embedding.to(x.dtype)  # (B, K, W)
        x = self.ln_pre(torch.cat([x, lat], dim=1))  # (B, 1+N+K, W)
        x = x.permute(1, 0, 2)  # (L, B, W)
        for blk in self.transformer:
            x = blk(x)
        x = x.permute(1, 0, 2)  # (B, L, W)
        lat = self.ln_post(x[:, 1 + self.num_patches:])  # (B, K, W)
        z = self.conv_out(latents_to_conv_input(lat, self.legacy))  # (B, C, K, 1)
        return z.reshape(b, self.code_dim, 1, self.num_tokens)  # (B, C, 1, K)


class ReferenceQuantizer(nn.Module):
    """Nearest-code lookup of the reference VectorQuantizer (inference only; no buffers, no losses)."""

    def __init__(self, codebook_size: int, dim: int, l2_norm: bool) -> None:
        super().__init__()
        self.l2_norm = l2_norm
        self.embedding = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """z: (M, D) -> (M,) int64. The reference's formula, in fp32, so that ties and rounding agree."""
        z = z.float()
        e = self.embedding.weight.float()  # (N, D)
        if self.l2_norm:
            z = F.normalize(z, dim=-1)
            e = F.normalize(e, dim=-1)
        d = (torch.sum(z ** 2, dim=1, keepdim=True) + torch.sum(e ** 2, dim=1)
             - 2 * torch.einsum("bd,dn->bn", [z, e.t()]))  # (M, N)
        return torch.argmin(d, dim=1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(M,) int64 -> (M, D) fp32; normalised after the lookup, as the reference's get_codebook_entry."""
        q = F.embedding(indices, self.embedding.weight.float())
        if self.l2_norm:
            q = F.normalize(q, dim=-1)
        return q


class PatchesToImage(nn.Module):
    """einops `b (p1 p2 c) h w -> b c (h p1) (w p2)` (the VQ-8k head's Rearrange; no weights)."""

    def __init__(self, patch: int) -> None:
        super().__init__()
        self.patch = patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        p = self.patch
        x = x.reshape(b, p, p, 3, h, w).permute(0, 3, 4, 1, 5, 2)  # (B, 3, h, p1, w, p2)
        return x.reshape(b, 3, h * p, w * p)


class ReferenceDecoder(nn.Module):
    def __init__(self, cfg: TiTokConfig) -> None:
        super().__init__()
        w = cfg.dec_width
        self.width = w
        self.grid = cfg.grid
        self.num_patches = cfg.num_patches
        self.decoder_embed = nn.Linear(cfg.code_dim, w, bias=True)
        scale = w ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(1, w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.num_patches + 1, w))
        self.mask_token = nn.Parameter(scale * torch.randn(1, 1, w))
        self.latent_token_positional_embedding = nn.Parameter(scale * torch.randn(cfg.num_tokens, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = nn.ModuleList(
            [ResidualAttentionBlock(w, cfg.dec_heads, cfg.mlp_ratio) for _ in range(cfg.dec_depth)])
        self.ln_post = nn.LayerNorm(w)
        if cfg.pixel_head == "maskgit":
            # Logits over the MaskGIT-VQGAN codebook; "ffn.1" is the Tanh.
            self.ffn = nn.Sequential(
                nn.Conv2d(w, 2 * w, 1, bias=True), nn.Tanh(), nn.Conv2d(2 * w, cfg.pixel_codebook_size, 1, bias=True))
            self.conv_out = nn.Identity()
        else:
            p = cfg.patch_size
            self.ffn = nn.Sequential(nn.Conv2d(w, p * p * 3, 1, bias=True), PatchesToImage(p))
            self.conv_out = nn.Conv2d(3, 3, 3, padding=1, bias=True)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, K, C) codes -> (B, pixel_codebook_size, g, g) logits, or (B, 3, H, W) pixels."""
        x = self.decoder_embed(z)  # (B, K, W)
        b, k = x.shape[0], x.shape[1]
        masks = self.mask_token.repeat(b, self.num_patches, 1).to(x.dtype)  # (B, N, W)
        cls = self.class_embedding.to(x.dtype).unsqueeze(0).expand(b, -1, -1)  # (B, 1, W)
        masks = torch.cat([cls, masks], dim=1) + self.positional_embedding.to(x.dtype)  # (B, 1+N, W)
        x = x + self.latent_token_positional_embedding[:k]
        x = self.ln_pre(torch.cat([masks, x], dim=1))  # (B, 1+N+K, W)
        x = x.permute(1, 0, 2)  # (L, B, W)
        for blk in self.transformer:
            x = blk(x)
        x = x.permute(1, 0, 2)  # (B, L, W)
        x = self.ln_post(x[:, 1:1 + self.num_patches])  # (B, N, W): the mask positions
        x = x.permute(0, 2, 1).reshape(b, self.width, self.grid, self.grid)  # (B, W, g, g), row-major
        return self.conv_out(self.ffn(x.contiguous()))


# ---- MaskGIT-VQGAN pixel decoder (the open-muse port the reference uses) ----


def same_conv(c_in: int, c_out: int, kernel: int, bias: bool) -> nn.Conv2d:
    """The port's Conv2dSame for stride 1: TF "SAME" pads k-1 in total, k//2 per side for odd k."""
    if kernel % 2 != 1:
        raise ValueError(f"SAME padding is symmetric only for odd kernels, not {kernel}")
    return nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=bias)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GN, SiLU, conv3x3, GN, SiLU, conv3x3 (no biases) plus a residual.

    MaskGIT's quirk, kept because the weights depend on it: when the width changes, the 1x1
    nin_shortcut (out -> out) is applied to the block's OUTPUT, and the input is not used as residual.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm1 = group_norm(c_in)
        self.conv1 = same_conv(c_in, c_out, 3, bias=False)
        self.norm2 = group_norm(c_out)
        self.conv2 = same_conv(c_out, c_out, 3, bias=False)
        self.nin_shortcut: nn.Conv2d | None = same_conv(c_out, c_out, 1, bias=False) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.nin_shortcut is not None:
            residual = self.nin_shortcut(h)
        return h + residual


class UpBlock(nn.Module):
    """ResNet blocks at one resolution level, then (above level 0) nearest x2 upsampling and a 3x3 conv."""

    def __init__(self, c_in: int, c_out: int, num_blocks: int, upsample: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList([ResnetBlock(c_in if i == 0 else c_out, c_out) for i in range(num_blocks)])
        self.upsample_conv: nn.Conv2d | None = same_conv(c_out, c_out, 3, bias=True) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.block:
            x = blk(x)
        if self.upsample_conv is not None:
            # nearest x2 as plain repeats: F.interpolate, scripted, inlines a body naming ops that older torch
            # releases lack (see Decoder.forward in tokenizer.py); the same numbers.
            x = self.upsample_conv(x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
        return x


class PixelDecoder(nn.Module):
    """(B, z_channels, g, g) soft code embedding -> (B, 3, g * 2**(levels-1), ...) pixels, unclamped."""

    def __init__(self, channels: int, channel_mult: Sequence[int], num_res_blocks: int, z_channels: int) -> None:
        super().__init__()
        mult = list(channel_mult)
        levels = len(mult)
        self.conv_in = same_conv(z_channels, channels * mult[-1], 3, bias=True)
        self.mid = nn.ModuleList([ResnetBlock(channels * mult[-1], channels * mult[-1])
                                  for _ in range(num_res_blocks)])
        # `up.{level}` as in the checkpoint, but registered from the lowest resolution up: a ModuleList
        # iterates in registration order, and TorchScript cannot iterate one in reverse.
        self.up = nn.ModuleList()
        for level in reversed(range(levels)):
            c_in = channels * mult[min(level + 1, levels - 1)]
            self.up.add_module(str(level), UpBlock(c_in, channels * mult[level], num_res_blocks, level != 0))
        self.norm_out = group_norm(channels * mult[0])
        self.conv_out = same_conv(channels * mult[0], 3, 3, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for blk in self.mid:
            x = blk(x)
        for blk in self.up:  # level L-1 (16 x 16) ... level 0 (256 x 256)
            x = blk(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class PixelCodebook(nn.Module):
    """Holds `pixel_quantize.embedding` (the MaskGIT-VQGAN codebook, fine-tuned with the decoder)."""

    def __init__(self, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, dim)


class ReferenceTiTok(nn.Module):
    """The reference TiTok (VQ): encode_indices / decode_indices for ExportedTokenizer."""

    def __init__(self, cfg: TiTokConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_size = cfg.image_size
        self.num_tokens = cfg.num_tokens
        self.codebook_size = cfg.codebook_size
        self.code_dim = cfg.code_dim
        # A direct parameter, registered first: the checkpoint's top-level `latent_tokens`.
        self.latent_tokens = nn.Parameter(cfg.enc_width ** -0.5 * torch.randn(cfg.num_tokens, cfg.enc_width))
        self.encoder = ReferenceEncoder(cfg)
        self.decoder = ReferenceDecoder(cfg)
        self.quantize = ReferenceQuantizer(cfg.codebook_size, cfg.code_dim, cfg.l2_norm_codes)
        self.pixel_quantize: PixelCodebook | None = None
        self.pixel_decoder: PixelDecoder | None = None
        if cfg.pixel_head == "maskgit":
            self.pixel_quantize = PixelCodebook(cfg.pixel_codebook_size, cfg.pixel_code_dim)
            self.pixel_decoder = PixelDecoder(cfg.pixel_channels, cfg.pixel_channel_mult, cfg.pixel_res_blocks,
                                              cfg.pixel_code_dim)

    def decode_codes(self, q: torch.Tensor) -> torch.Tensor:
        """q: (B, K, C) code vectors -> (B, 3, H, W) pixels, nominally [0, 1] (unclamped)."""
        x = self.decoder(q.to(self.decoder.decoder_embed.weight.dtype))
        pixel_quantize = self.pixel_quantize
        pixel_decoder = self.pixel_decoder
        if pixel_quantize is not None and pixel_decoder is not None:
            # (B, 1024, g, g) logits -> a softmax-weighted (soft) MaskGIT code embedding (B, 256, g, g)
            soft = torch.einsum("nchw,cd->ndhw", [x.softmax(1), pixel_quantize.embedding.weight])
            x = pixel_decoder(soft)
        return x

    def forward(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Evaluation-style pass, shaped like model.tokenizer.TiTok's: recon (B, 3, H, W) unclamped,
        indices (B, K), a zero loss (inference only), codes (B, K, C)."""
        indices = self.encode_indices(x01)
        q = self.quantize.lookup(indices.reshape(-1)).view(indices.shape[0], self.num_tokens, self.code_dim)
        return self.decode_codes(q), indices, torch.zeros((), device=x01.device), q

    @torch.jit.export
    def encode_indices(self, x01: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> (B, K) int64."""
        z = self.encoder(x01, self.latent_tokens)  # (B, C, 1, K)
        b = z.shape[0]
        rows = z.float().permute(0, 2, 3, 1).reshape(-1, self.code_dim)  # (B*K, C), token-major
        return self.quantize.nearest(rows).view(b, self.num_tokens)

    @torch.jit.export
    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, k) int64, the first k <= K tokens -> (B, 3, H, W) float, nominally [0, 1] (unclamped).

        A prefix decodes as One-D-Piece's `decode_tokens(tokens, length=k)`: the decoder runs on
        [class token, mask tokens, k latents] with the first k latent position embeddings.
        """
        b, k = indices.shape[0], indices.shape[1]
        q = self.quantize.lookup(indices.reshape(-1)).view(b, k, self.code_dim)  # (B, k, C)
        return self.decode_codes(q)


def check_reference_config(cfg: TiTokConfig) -> None:
    """Refuse configs the reference layout cannot represent, with what is allowed."""
    if cfg.pixel_head not in PIXEL_HEADS:
        raise ValueError(f"pixel_head must be one of {PIXEL_HEADS}, not {cfg.pixel_head!r}")
    if cfg.pixel_head == "maskgit":
        upsampled = cfg.grid * 2 ** (len(cfg.pixel_channel_mult) - 1)
        if upsampled != cfg.image_size:
            raise ValueError(f"the MaskGIT pixel decoder turns the {cfg.grid}x{cfg.grid} grid into "
                             f"{upsampled}x{upsampled} pixels, not {cfg.image_size}: adjust pixel_channel_mult")
        if cfg.pixel_channels % GROUPS:
            raise ValueError(f"pixel_channels must be a multiple of {GROUPS} (GroupNorm groups)")


def build_reference_model(cfg: TiTokConfig) -> ReferenceTiTok:
    """The reference model for a config with arch="reference" (works under `torch.device("meta")`)."""
    check_reference_config(cfg)
    return ReferenceTiTok(cfg)
