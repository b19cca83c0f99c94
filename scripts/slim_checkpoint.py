"""Shrink a training checkpoint to what `titok export` and `titok train --init` read: the config, the EMA weights
(or the raw ones) in float16, and the run's record, without the optimizer state. A 22M-parameter run's
checkpoint goes from about 350 MB to 44 MB: small enough to bring back from a lent GPU machine.

    python scripts/slim_checkpoint.py RUN/checkpoint.pt RUN/slim.pt
    titok export --checkpoint RUN/slim.pt --out model.pt --fp16

Not a resume point: `--resume` needs the optimizer state; `--init slim.pt` starts a fresh optimizer from the weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from titok.core.artifact import QUANTIZER


def slim(src: Path, dst: Path) -> dict:
    """Write dst from the checkpoint src; returns what was written. Floating tensors become float16, except the
    quantizer's (its codebook), which stay float32 as in every exported artifact (titok.core.artifact), so that
    `titok export --fp16` of the slim file gives the same artifact as of the full one."""
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "config" not in ckpt:
        raise ValueError("no config in it (an exported artifact or another torch file?)")
    weights = ckpt.get("ema") or ckpt["model"]
    half = {k: v.half() if v.is_floating_point() and QUANTIZER not in k.split(".") else v
            for k, v in weights.items()}
    out = {"config": ckpt["config"], "preset": ckpt.get("preset"), "ema": half, "step": ckpt.get("step"),
           "elapsed_s": ckpt.get("elapsed_s"), "training": {**ckpt.get("training", {}), "slimmed": True}}
    torch.save(out, dst)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out", type=Path)
    args = p.parse_args(argv)
    if not args.checkpoint.is_file():
        p.error(f"no checkpoint file at {args.checkpoint}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        out = slim(args.checkpoint, args.out)
    except Exception as exc:  # noqa: BLE001 - torch raises several kinds for a file that is not a checkpoint
        p.exit(2, f"{p.prog}: {args.checkpoint} is not a training checkpoint (RUNDIR/checkpoint.pt): "
                  f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n")
    n = sum(v.numel() for v in out["ema"].values())
    sys.stdout.write(f"{args.out}: step {out['step']}, {n / 1e6:.2f}M values, {args.out.stat().st_size / 1e6:.1f} MB\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
