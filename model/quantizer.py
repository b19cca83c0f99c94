"""Vector quantizer: nearest code by the matmul form, straight-through gradient, fp32 always."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class VectorQuantizer(nn.Module):
    """`quantized, indices, loss = vq(z)`; `vq.lookup(indices)` gives back exactly `quantized` in eval."""

    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25, l2_norm: bool = True,
                 dead_code_steps: int = 200) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.dim = dim
        self.beta = beta
        self.l2_norm = l2_norm
        self.dead_code_steps = dead_code_steps
        self.embedding = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        # Steps since each code was last chosen (a buffer, so it checkpoints). It starts "dead", so the
        # first re-seeding initialises the codebook from real encoder outputs.
        self.register_buffer("steps_unused", torch.full((codebook_size,), dead_code_steps, dtype=torch.long))

    def _codebook(self) -> torch.Tensor:
        e = self.embedding.weight.float()  # (N, D)
        if self.l2_norm:
            e = F.normalize(e, dim=-1)
        return e

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Indices of the nearest codes. z: (M, D) fp32 -> (M,) int64."""
        e = self._codebook()
        if self.l2_norm:
            z = F.normalize(z, dim=-1)
            # ||z - e||^2 = 2 - 2 z.e for unit vectors: argmax of the dot product
            return torch.argmax(z @ e.t(), dim=-1)
        d = z.pow(2).sum(-1, keepdim=True) - 2.0 * (z @ e.t()) + e.pow(2).sum(-1)[None, :]  # (M, N)
        return torch.argmin(d, dim=-1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors for indices: (...,) int64 -> (..., D) fp32."""
        return F.embedding(indices, self._codebook())

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z: (B, K, D) -> quantized (B, K, D) fp32, indices (B, K) int64, loss (scalar)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            if self.l2_norm:
                z = F.normalize(z, dim=-1)
            flat = z.reshape(-1, self.dim)  # (B*K, D)
            idx = self.nearest(flat)
            q = self.lookup(idx).view_as(z)  # (B, K, D)
            codebook_loss = F.mse_loss(q, z.detach())
            commitment = F.mse_loss(z, q.detach())
            loss = codebook_loss + self.beta * commitment
            if self.training:
                with torch.no_grad():
                    used = torch.bincount(idx, minlength=self.codebook_size) > 0
                    self.steps_unused.add_(1).masked_fill_(used, 0)
            quantized = q + (z - z.detach())  # straight-through; the value is exactly q
        return quantized, idx.view(z.shape[0], z.shape[1]), loss

    @torch.no_grad()
    def reseed_dead_codes(self, z: torch.Tensor) -> int:
        """Re-seed codes unused for `dead_code_steps` steps from current encoder outputs z (B, K, D).

        Under DistributedDataParallel every rank must call this at the same step: ranks agree on the
        dead set (minimum of their counters) and take the replacement vectors from rank 0.
        """
        steps = self.steps_unused.clone()
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            dist.all_reduce(steps, op=dist.ReduceOp.MIN)
        dead = torch.nonzero(steps >= self.dead_code_steps).flatten()
        n = int(dead.numel())
        if n == 0:
            return 0
        flat = z.detach().float().reshape(-1, self.dim)
        pick = torch.randint(0, flat.shape[0], (n,), device=flat.device)
        new = flat[pick] + 0.01 * flat.std() * torch.randn(n, self.dim, device=flat.device)
        if distributed:
            dist.broadcast(new, src=0)
        self.embedding.weight.data[dead] = new.to(self.embedding.weight.dtype)
        self.steps_unused[dead] = 0
        return n


def codebook_stats(indices: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Usage (fraction of codes chosen at least once) and perplexity of the token distribution."""
    counts = torch.bincount(indices.flatten().cpu(), minlength=codebook_size).double()
    p = counts / counts.sum().clamp(min=1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"usage": float((counts > 0).double().mean()), "perplexity": float(entropy.exp())}
