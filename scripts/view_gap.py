"""Where a model's reconstruction PSNR falls short: whole photos against training-style crops, held-out photos
against training photos, each beside the equal-bits thumbnail (the model card's "three 5-minute candidates").

    python scripts/view_gap.py service/models/ordered.pt --heldout photos/dev-eval --train photos/train-small

Whole views are what evaluation and the service see (the shorter side brought to the model's size, centre crop);
crops are the training sampler's (titok.model.data.RandomCrops: 0.35 to 1 of the shorter side of the photo at
2.5 times the model's size, resized). Prints one markdown row per artifact: PSNR in dB (thumbnail PSNR).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

from titok.core.artifact import load_artifact
from titok.model.data import RandomCrops, load_center_crops, load_images
from titok.model.quality import psnr, thumbnail_baseline, to_uint8


def model_and_thumbnail_psnr(module, x: torch.Tensor, bits: float) -> tuple[float, float]:
    """Mean PSNR (dB) of the artifact's reconstruction of x (N, 3, S, S) in [0, 1], and of the equal-bits thumbnail."""
    u8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    with torch.inference_mode():
        recon = module.decode(module.encode(u8)).permute(0, 3, 1, 2).float() / 255
    return (float(psnr(to_uint8(recon), to_uint8(x)).mean()),
            float(psnr(thumbnail_baseline(x, bits), to_uint8(x)).mean()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifacts", type=Path, nargs="+")
    p.add_argument("--heldout", type=Path, default=Path("photos/dev-eval"))
    p.add_argument("--train", type=Path, default=Path("photos/train-small"))
    p.add_argument("--crops", type=int, default=64, help="crops drawn from each set (seed 0)")
    args = p.parse_args(argv)
    sys.stdout.write("| model | held-out whole views | held-out crops | training whole views | training crops |\n"
                     "|---|---|---|---|---|\n")
    for path in args.artifacts:
        module, meta = load_artifact(path)
        size, bits = int(meta["image_size"]), meta["num_tokens"] * (int(meta["codebook_size"]) - 1).bit_length()
        held, _ = load_images([args.heldout], max_side=int(size * 2.5))
        train, _ = load_images([args.train], max_side=int(size * 2.5))
        sets = [load_center_crops([args.heldout], size)[0], RandomCrops(held, size, seed=0).sample(args.crops),
                RandomCrops(train, size, min_scale=1.0, seed=0).sample(args.crops),
                RandomCrops(train, size, seed=0).sample(args.crops)]
        cells = [model_and_thumbnail_psnr(module, x, bits) for x in sets]
        sys.stdout.write(f"| {meta['name']} | " + " | ".join(f"{m:.2f} ({t:.2f})" for m, t in cells) + " |\n")
    return 0


if __name__ == "__main__":
    warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated.*")
    sys.exit(main())
