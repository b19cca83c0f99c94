"""Research: what the vector quantizer costs a recipe. Runs `titok train` with its quantizer's output changed.

    python scripts/quantizer_ablation.py none --preset tiny --set num_tokens=128 --tail-drop ... (titok train's options)
    python scripts/quantizer_ablation.py rotation --preset tiny --set num_tokens=128 --tail-drop ...

Modes (the first argument; everything after it goes to `titok train` as it is):
- ste: `titok train` unchanged, the straight-through estimator (the baseline, for a side-by-side run).
- none: the decoder gets the l2-normalised encoder output itself, in training and in the held-out evaluation: no
  codebook between them, so no bits limit. What the encoder and decoder reach in the same steps without the
  quantizer; the gap to `ste` is what the quantizer costs at that point of training.
- rotation: the rotation trick (Fifty et al., "Restructuring Vector Quantization with the Rotation Trick", ICLR 2025)
  in place of the straight-through estimator: the decoder sees exactly the code (the same forward value); the
  gradient reaches the encoder output through the rotation (and rescaling) that takes it onto its code, treated as
  a constant, instead of being copied unchanged.

The checkpoint is a research record, not a model to ship: a `none` run's weights were never trained with a codebook
(an export of it quantizes, and decodes far worse than its logged PSNR). The model card's quantizer section
used it. Exit status and errors are titok train's.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn.functional as F

MODES = ("ste", "none", "rotation")


def rotated_onto(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The rotation trick: z (N, D) mapped onto q (N, D) by the rotation and rescaling that take z's direction to
    q's, both held constant, so the value is q (to float rounding) and the gradient flows to z through that map.

    With e = z/|z|, p = q/|q| and r = (e + p)/|e + p|, the rotation R = I - 2 r r^T + 2 p e^T sends e to p
    (Fifty et al., 2025, section 4.2); the output is (|q|/|z|) R z. fp32 in, fp32 out.
    """
    with torch.no_grad():
        e = F.normalize(z, dim=-1)
        p = F.normalize(q, dim=-1)
        r = F.normalize(e + p, dim=-1)
        scale = q.norm(dim=-1, keepdim=True) / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    rotated = z - 2 * r * (r * z).sum(-1, keepdim=True) + 2 * p * (e * z).sum(-1, keepdim=True)
    return scale * rotated


def patch(mode: str) -> None:
    """Replace VectorQuantizer.forward (and, for `none`, the held-out evaluation) in this process."""
    from titok.model import quantizer
    from titok.model import train as train_module

    if mode == "ste":
        return
    original = quantizer.VectorQuantizer.forward

    def forward(self: Any, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        straight, idx, loss = original(self, z)  # straight = q + (zn - zn.detach()): the value is the code q
        with torch.autocast(device_type=z.device.type, enabled=False):
            zn = F.normalize(z.float(), dim=-1) if self.l2_norm else z.float()
            if mode == "none":
                return zn, idx, loss * 0.0
            return rotated_onto(zn, straight.detach()), idx, loss

    quantizer.VectorQuantizer.forward = forward
    if mode == "none":
        heldout = train_module.evaluate_heldout

        @torch.no_grad()
        def evaluate_heldout(model: Any, images: torch.Tensor) -> tuple[float, torch.Tensor, dict[int, float]]:
            """evaluate_heldout's figures with the continuous latents decoded instead of the codes."""
            was = model.training
            model.eval()
            z = F.normalize(model.encoder(images * 2.0 - 1.0).float(), dim=-1).to(model.decoder.embed.weight.dtype)

            def decoded(k: int) -> torch.Tensor:
                return model.decoder(z[:, :k]).float() * 0.5 + 0.5

            def score(recon: torch.Tensor) -> float:
                return float(train_module.psnr(train_module.to_uint8(recon), train_module.to_uint8(images)).mean())

            k_all = model.cfg.num_tokens
            recon = decoded(k_all)
            by_k = {k: score(decoded(k)) for k in train_module.prefix_lengths(k_all)} if model.cfg.tail_drop else {}
            model.train(was)
            return score(recon), recon, by_k

        evaluate_heldout.original = heldout  # type: ignore[attr-defined]
        train_module.evaluate_heldout = evaluate_heldout


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in MODES:
        sys.stderr.write(f"quantizer_ablation: the first argument must be one of {', '.join(MODES)} (then titok "
                         f"train's options), not {args[0] if args else 'nothing'!r}\n")
        return 2
    patch(args[0])
    from titok.model.train import main as train_main

    return train_main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
