"""The TiTok-style 1D tokenizer: ViT encoder -> K latent tokens -> vector quantizer -> ViT decoder.

Pixels enter and leave as float (B, 3, H, W) in [0, 1]; the model works in [-1, 1] inside.
Every module here is TorchScript-friendly: the exported artifact scripts it as it is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import TiTokConfig
from .quantizer import VectorQuantizer


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, W); mask: None, or bool broadcastable to (B, heads, N, N), True where a query may attend a key."""
        b, n, w = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, h, N, d)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)  # (B, h, N, d)
        return self.proj(y.transpose(1, 2).reshape(b, n, w))


class Block(nn.Module):
    """Pre-LN transformer block: attention then MLP (GELU), each with a residual."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


def conv_stem(width: int, patch: int) -> nn.Sequential:
    """Strided 3x3 convolutions from pixels down to the patch grid (one halving per layer)."""
    layers: list[nn.Module] = []
    steps = int(math.log2(patch))
    ch_in = 3
    for i in range(steps):
        ch_out = width if i == steps - 1 else max(32, width >> (steps - 1 - i))
        layers.append(nn.Conv2d(ch_in, ch_out, 3, stride=2, padding=1))
        if i < steps - 1:
            layers.append(nn.GELU())
        ch_in = ch_out
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    def __init__(self, cfg: TiTokConfig) -> None:
        super().__init__()
        w = cfg.enc_width
        self.num_tokens = cfg.num_tokens
        if cfg.stem == "conv":
            self.patch_embed = conv_stem(w, cfg.patch_size)
        else:
            self.patch_embed = nn.Sequential(nn.Conv2d(3, w, cfg.patch_size, stride=cfg.patch_size))
        scale = w ** -0.5
        self.pos_embed = nn.Parameter(scale * torch.randn(cfg.num_patches, w))
        self.latent_tokens = nn.Parameter(scale * torch.randn(cfg.num_tokens, w))
        self.latent_pos_embed = nn.Parameter(scale * torch.randn(cfg.num_tokens, w))
        self.ln_pre = nn.LayerNorm(w)
        self.blocks = nn.ModuleList([Block(w, cfg.enc_heads, cfg.mlp_ratio) for _ in range(cfg.enc_depth)])
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Linear(w, cfg.code_dim)
        self.code_dim = cfg.code_dim
        self.lowfreq_size = cfg.lowfreq_size
        self.lowfreq = nn.Linear(3 * cfg.lowfreq_size**2, cfg.num_tokens * cfg.code_dim) if cfg.lowfreq_size \
            else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) in [-1, 1] -> (B, K, code_dim)."""
        z = self._vit(x)
        if self.lowfreq_size > 0:
            small = F.adaptive_avg_pool2d(x, self.lowfreq_size).flatten(1)  # (B, 3*s*s)
            z = z + self.lowfreq(small).view(x.shape[0], self.num_tokens, self.code_dim)
        return z

    def _vit(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, W)
        lat = (self.latent_tokens + self.latent_pos_embed).unsqueeze(0).expand(p.shape[0], -1, -1)  # (B, K, W)
        h = self.ln_pre(torch.cat([p, lat], dim=1))  # (B, N+K, W)
        for blk in self.blocks:
            h = blk(h)
        return self.proj(self.ln_post(h[:, -self.num_tokens:]))  # (B, K, code_dim)


class Decoder(nn.Module):
    def __init__(self, cfg: TiTokConfig) -> None:
        super().__init__()
        w = cfg.dec_width
        self.grid = cfg.grid
        self.patch = cfg.patch_size
        self.num_patches = cfg.num_patches
        self.head_channels = cfg.head_channels if cfg.head == "conv" else 3
        scale = w ** -0.5
        self.embed = nn.Linear(cfg.code_dim, w)
        self.mask_token = nn.Parameter(scale * torch.randn(1, 1, w))
        self.pos_embed = nn.Parameter(scale * torch.randn(cfg.num_patches, w))
        self.latent_pos_embed = nn.Parameter(scale * torch.randn(cfg.num_tokens, w))
        self.ln_pre = nn.LayerNorm(w)
        self.blocks = nn.ModuleList([Block(w, cfg.dec_heads, cfg.mlp_ratio) for _ in range(cfg.dec_depth)])
        self.ln_post = nn.LayerNorm(w)
        self.to_pixels = nn.Linear(w, cfg.patch_size * cfg.patch_size * self.head_channels)
        if cfg.head == "conv":
            c = cfg.head_channels
            self.refine = nn.Sequential(
                nn.Conv2d(c, c, 3, padding=1), nn.GELU(), nn.Conv2d(c, c, 3, padding=1), nn.GELU(),
                nn.Conv2d(c, 3, 3, padding=1),
            )
        else:
            self.refine = nn.Sequential(nn.Identity())
        self.image_size = cfg.image_size
        self.lowfreq_size = cfg.lowfreq_size
        self.num_tokens = cfg.num_tokens
        self.lowfreq = nn.Linear(cfg.num_tokens * cfg.code_dim, 3 * cfg.lowfreq_size**2) if cfg.lowfreq_size \
            else nn.Identity()

    def forward(self, codes: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """codes: (B, k, code_dim), the first k <= K codes -> (B, 3, H, W) in [-1, 1] (unclamped).

        A prefix (k < K) is decoded as it is: the transformer sees N mask tokens and k latents (the first k
        latent position embeddings), and the low-frequency path reads the k codes through the first k * code_dim
        columns of its linear map (the absent codes contribute nothing). With k = K this is the full decode.

        keep: the same prefix decode with static shapes (for torch.compile in training): codes holds all K codes,
        keep is bool (K,) or (B, K), True for the codes present (a prefix); the absent ones are masked out of every
        key and zeroed on the low-frequency path, which gives what decoding the first k codes gives (up to float
        rounding), at the cost of all K latents in the transformer.
        """
        b, k = codes.shape[0], codes.shape[1]
        mask: torch.Tensor | None = None
        if keep is not None:
            keep2 = keep.view(-1, k) if keep.dim() == 2 else keep.view(1, k)  # (B or 1, K)
            codes = codes * keep2.unsqueeze(-1).to(codes.dtype)
            present = torch.ones(keep2.shape[0], self.num_patches, dtype=torch.bool, device=keep.device)
            mask = torch.cat([present, keep2], dim=1)[:, None, None, :]  # (B or 1, 1, 1, N + K): keys attended
        lat = self.embed(codes) + self.latent_pos_embed[:k]  # (B, k, W)
        masks = (self.mask_token + self.pos_embed).expand(b, -1, -1)  # (B, N, W)
        h = self.ln_pre(torch.cat([masks, lat], dim=1))
        for blk in self.blocks:
            h = blk(h, mask)
        h = self.to_pixels(self.ln_post(h[:, : self.num_patches]))  # (B, N, P*P*C)
        g, p, c = self.grid, self.patch, self.head_channels
        img = h.view(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, g * p, g * p)  # (B, C, H, W)
        out = self.refine(img)
        if self.lowfreq_size > 0:
            s = self.lowfreq_size
            flat = codes.flatten(1)  # (B, k*D); the linear map's remaining columns meet absent codes
            flat = F.pad(flat, [0, (self.num_tokens - k) * codes.shape[2]])  # (B, K*D), zero past the prefix
            small = self.lowfreq(flat).view(b, 3, s, s)
            # The aten op itself, not F.interpolate: scripted, F.interpolate inlines its whole body, which names
            # every mode's op, so an artifact exported by a newer torch (2.13 added lanczos) failed to load on an
            # older one ("Unknown builtin op: aten::_upsample_lanczos2d_aa"). Same numbers as
            # F.interpolate(small, size, mode="bicubic", align_corners=False).
            out = out + torch._C._nn.upsample_bicubic2d(small, [self.image_size, self.image_size], False)
        return out


class TiTok(nn.Module):
    """encode: pixels -> token ids; decode: token ids -> pixels; forward: training reconstruction."""

    def __init__(self, cfg: TiTokConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_size = cfg.image_size
        self.num_tokens = cfg.num_tokens
        self.codebook_size = cfg.codebook_size
        self.encoder = Encoder(cfg)
        self.quantize = VectorQuantizer(cfg.codebook_size, cfg.code_dim, cfg.beta, cfg.l2_norm_codes,
                                        cfg.dead_code_steps)
        self.decoder = Decoder(cfg)
        self.apply(_init_weights)

    def forward(self, x01: torch.Tensor, prefix: int = 0, keep: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x01: (B, 3, H, W) in [0, 1] -> recon in [0, 1] (unclamped), indices (B, K), vq loss, z (B, K, D).

        prefix: decode only the first `prefix` of the K quantized tokens (tail drop, 1 <= prefix <= K);
        0 decodes all K. The encoder, the quantizer and its loss always see all K tokens.
        keep: instead of prefix, bool (K,) True for the tokens decoded (a prefix), with static shapes (Decoder).
        """
        z = self.encoder(x01 * 2.0 - 1.0)
        q, idx, vq_loss = self.quantize(z)
        if prefix > 0:
            q = q[:, :prefix]
        recon = self.decoder(q, keep) * 0.5 + 0.5
        return recon, idx, vq_loss, z

    @torch.jit.export
    def encode_indices(self, x01: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> (B, K) int64."""
        z = self.encoder(x01 * 2.0 - 1.0)
        b, k, d = z.shape
        return self.quantize.nearest(z.float().reshape(b * k, d)).view(b, k)

    @torch.jit.export
    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, k) int64, the first k <= K tokens -> (B, 3, H, W) float, nominally [0, 1] (unclamped).

        Any 1 <= k <= K decodes; only a model trained with tail drop gives useful pictures for k < K
        (ExportedTokenizer refuses k != K for the others).
        """
        q = self.quantize.lookup(indices)  # (B, K, D) fp32
        dtype = self.decoder.embed.weight.dtype
        return self.decoder(q.to(dtype)).float() * 0.5 + 0.5


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def build_model(cfg: TiTokConfig) -> nn.Module:
    """The model for a config: ours, or the published layout (titok.model.reference) when cfg.arch says so."""
    if cfg.arch == "reference":
        from .reference import build_reference_model

        return build_reference_model(cfg)
    return TiTok(cfg)
