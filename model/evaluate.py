"""`titok eval`: reconstruction quality of a checkpoint or an exported artifact against the equal-bits
thumbnail baseline, on uint8 outputs (what a user of the service receives)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import torch

from .data import load_center_crops, portable_paths
from .quality import psnr, ssim, thumbnail_baseline, thumbnail_side, to_uint8
from .quantizer import codebook_stats
from .runlog import save_grid

log = logging.getLogger("titok.eval")


def add_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a training checkpoint (RUNDIR/checkpoint.pt)")
    src.add_argument("--artifact", help="an exported TorchScript artifact (.pt)")
    p.add_argument("--data", action="append", required=True, help="image folder (repeatable)")
    p.add_argument("--out", help="directory for eval.json and eval_grid.png (default: beside the input)")
    p.add_argument("--raw-weights", action="store_true", help="with --checkpoint: the raw weights, not the EMA")
    p.add_argument("--batch-size", type=int, default=16)


def load_codec(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """(encode uint8 BHWC -> tokens, decode tokens -> uint8 BHWC, meta) for either input kind."""
    if args.artifact:
        from service.core.artifact import load_artifact

        module, meta = load_artifact(args.artifact)
        return module.encode, module.decode, meta
    from .export import ExportedTokenizer, load_checkpoint_model

    model, cfg, ckpt, _ = load_checkpoint_model(args.checkpoint, use_ema=not args.raw_weights)
    wrapper = ExportedTokenizer(model.eval(), cfg.image_size, cfg.num_tokens, cfg.codebook_size)
    meta = {"name": Path(args.checkpoint).parent.name, "image_size": cfg.image_size, "num_tokens": cfg.num_tokens,
            "codebook_size": cfg.codebook_size, "step": ckpt.get("step")}
    return wrapper.encode, wrapper.decode, meta


@torch.no_grad()
def evaluate(encode: Any, decode: Any, meta: dict[str, Any], images: torch.Tensor,
             batch_size: int = 16) -> tuple[dict[str, Any], torch.Tensor]:
    """images: (N, 3, S, S) float in [0, 1] -> (figures, reconstructions (N, 3, S, S) in [0, 1])."""
    tokens, recons = [], []
    for i in range(0, len(images), batch_size):
        batch = to_uint8(images[i:i + batch_size]).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        t = encode(batch)
        tokens.append(t)
        recons.append(decode(t).permute(0, 3, 1, 2).float() / 255.0)
    tok, recon = torch.cat(tokens), torch.cat(recons)
    ref, recon8 = to_uint8(images), to_uint8(recon)
    bits = meta["num_tokens"] * math.log2(meta["codebook_size"])
    base = thumbnail_baseline(images, bits)
    stats = codebook_stats(tok, meta["codebook_size"])
    figures = {
        "model": meta.get("name"),
        "images": len(images),
        "image_size": images.shape[-1],
        "psnr": float(psnr(recon8, ref).mean()),
        "ssim": float(ssim(recon8, ref).mean()),
        "codebook_usage": stats["usage"],
        # N images carry N*K tokens: on a small set, usage cannot exceed this.
        "codebook_usage_bound": min(1.0, tok.numel() / meta["codebook_size"]),
        "token_perplexity": stats["perplexity"],
        "bits_per_image": bits,
        "baseline": {
            "kind": f"RGB thumbnail {thumbnail_side(bits)}x{thumbnail_side(bits)} (bicubic upsampling)",
            "bytes": thumbnail_side(bits) ** 2 * 3,
            "psnr": float(psnr(base, ref).mean()),
            "ssim": float(ssim(base, ref).mean()),
        },
    }
    figures["psnr_gain_db"] = figures["psnr"] - figures["baseline"]["psnr"]
    return figures, recon


def format_table(f: dict[str, Any]) -> str:
    b = f["baseline"]
    rows = [
        ("", "tokenizer", "thumbnail baseline"),
        ("bits per image", f"{f['bits_per_image']:.0f}", f"{b['bytes'] * 8}"),
        ("PSNR (dB)", f"{f['psnr']:.2f}", f"{b['psnr']:.2f}"),
        ("SSIM", f"{f['ssim']:.4f}", f"{b['ssim']:.4f}"),
        ("codebook usage", f"{f['codebook_usage']:.1%} (at most {f['codebook_usage_bound']:.1%} here)", "-"),
        ("token perplexity", f"{f['token_perplexity']:.1f}", "-"),
    ]
    lines = [f"| {a} | {b_} | {c} |" for a, b_, c in rows]
    lines.insert(1, "|---|---|---|")
    return "\n".join(lines) + f"\n\n{f['images']} images at {f['image_size']}px; PSNR gain over the baseline: " \
        f"{f['psnr_gain_db']:+.2f} dB\n"


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    encode, decode, meta = load_codec(args)
    images, report = load_center_crops(args.data, meta["image_size"])
    figures, recon = evaluate(encode, decode, meta, images, args.batch_size)
    figures["data"] = portable_paths(args.data)  # eval.json goes into meta.json (titok export --eval-json)
    figures["skipped"] = report.skipped
    out = Path(args.out) if args.out else Path(args.artifact or args.checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(figures, indent=1))
    save_grid([images, recon], out / "eval_grid.png")
    sys.stdout.write(format_table(figures))
    sys.stdout.write(f"wrote {out / 'eval.json'} and {out / 'eval_grid.png'}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="titok eval")
    add_args(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
