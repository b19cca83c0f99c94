"""`titok eval`: reconstruction quality of a checkpoint or an exported artifact against the equal-bits
thumbnail baseline, on uint8 outputs (what a user of the service receives).

For a prefix-decodable model it also evaluates every prefix length k = 1, 2, 4, ..., K (the first k tokens of
each encoding): PSNR, SSIM and the thumbnail holding the same k * log2(codebook) bits, as a table
(`by_length` in eval.json), a plot of PSNR against bits per image (eval_by_length.png) and a grid of a few
photos at every length (eval_lengths_grid.png).
"""

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
from .quality import prefix_lengths, psnr, ssim, thumbnail_baseline, thumbnail_side, to_uint8
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
    p.add_argument("--grid-images", type=int, default=3,
                   help="photos in the grid of reconstructions by prefix length (prefix-decodable models)")


def load_codec(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """(encode uint8 BHWC -> tokens, decode tokens -> uint8 BHWC, meta) for either input kind."""
    if args.artifact:
        from titok.core.artifact import load_artifact

        module, meta = load_artifact(args.artifact)
        return module.encode, module.decode, meta
    from .export import ExportedTokenizer, load_checkpoint_model

    model, cfg, ckpt, _ = load_checkpoint_model(args.checkpoint, use_ema=not args.raw_weights)
    wrapper = ExportedTokenizer(model.eval(), cfg.image_size, cfg.num_tokens, cfg.codebook_size, cfg.tail_drop)
    meta = {"name": Path(args.checkpoint).parent.name, "image_size": cfg.image_size, "num_tokens": cfg.num_tokens,
            "codebook_size": cfg.codebook_size, "step": ckpt.get("step"), "prefix_decodable": cfg.tail_drop}
    return wrapper.encode, wrapper.decode, meta


@torch.no_grad()
def evaluate(encode: Any, decode: Any, meta: dict[str, Any], images: torch.Tensor,
             batch_size: int = 16) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """images: (N, 3, S, S) float in [0, 1] -> (figures, reconstructions (N, 3, S, S) in [0, 1], tokens (N, K))."""
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
    return figures, recon, tok


@torch.no_grad()
def evaluate_by_length(decode: Any, tokens: torch.Tensor, meta: dict[str, Any], images: torch.Tensor,
                       batch_size: int = 16) -> tuple[list[dict[str, Any]], dict[int, torch.Tensor]]:
    """Quality of the first k tokens for k = 1, 2, 4, ..., K, each against the thumbnail of the same bits.

    tokens: (N, K) int64, the full encodings of images (N, 3, S, S) float in [0, 1].
    Returns (one row per k: k, bits, psnr, ssim, baseline {side, bytes, psnr, ssim}; reconstructions by k,
    each (N, 3, S, S) in [0, 1]).
    """
    ref = to_uint8(images)
    rows, recons = [], {}
    for k in prefix_lengths(meta["num_tokens"]):
        parts = [decode(tokens[i:i + batch_size, :k].contiguous()).permute(0, 3, 1, 2).float() / 255.0
                 for i in range(0, len(tokens), batch_size)]
        recon = torch.cat(parts)
        recons[k] = recon
        bits = k * math.log2(meta["codebook_size"])
        base = thumbnail_baseline(images, bits)
        side = thumbnail_side(bits)
        rows.append({
            "k": k, "bits": bits,
            "psnr": float(psnr(to_uint8(recon), ref).mean()), "ssim": float(ssim(to_uint8(recon), ref).mean()),
            "baseline": {"side": side, "bytes": side * side * 3, "psnr": float(psnr(base, ref).mean()),
                         "ssim": float(ssim(base, ref).mean())},
        })
    return rows, recons


def format_length_table(rows: list[dict[str, Any]]) -> str:
    """The by-length figures as a Markdown table."""
    lines = ["| tokens k | bits | PSNR (dB) | SSIM | thumbnail | thumbnail PSNR (dB) | thumbnail SSIM | PSNR gain |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = r["baseline"]
        lines.append(f"| {r['k']} | {r['bits']:.0f} | {r['psnr']:.2f} | {r['ssim']:.4f} | {b['side']}x{b['side']} "
                     f"({b['bytes'] * 8} bits) | {b['psnr']:.2f} | {b['ssim']:.4f} | {r['psnr'] - b['psnr']:+.2f} |")
    return "\n".join(lines) + "\n"


def plot_by_length(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """PSNR against bits per image: the tokenizer's prefixes beside the equal-bits thumbnails."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot([r["bits"] for r in rows], [r["psnr"] for r in rows], marker="o", label="tokenizer, first k tokens")
    for r in rows:
        ax.annotate(f"k={r['k']}", (r["bits"], r["psnr"]), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.plot([r["baseline"]["bytes"] * 8 for r in rows], [r["baseline"]["psnr"] for r in rows], marker="s",
            linestyle="--", color="grey", label="RGB thumbnail (bicubic), at most the same bits")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bits per image")
    ax.set_ylabel("held-out PSNR (dB)")
    ax.set_title(title or "PSNR by number of tokens")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    figures, recon, tokens = evaluate(encode, decode, meta, images, args.batch_size)
    figures["data"] = portable_paths(args.data)  # eval.json goes into meta.json (titok export --eval-json)
    figures["skipped"] = report.skipped
    figures["prefix_decodable"] = bool(meta.get("prefix_decodable", False))
    out = Path(args.out) if args.out else Path(args.artifact or args.checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "eval.json", out / "eval_grid.png"]
    if figures["prefix_decodable"]:
        rows, recons = evaluate_by_length(decode, tokens, meta, images, args.batch_size)
        figures["by_length"] = rows
        plot_by_length(rows, out / "eval_by_length.png", f"{meta.get('name')}: {len(images)} images")
        n = min(args.grid_images, len(images))
        # one row per photo: the photo, then its reconstructions from the first 1, 2, 4, ..., K tokens
        save_grid([torch.stack([images[i]] + [recons[k][i] for k in sorted(recons)]) for i in range(n)],
                  out / "eval_lengths_grid.png")
        written += [out / "eval_by_length.png", out / "eval_lengths_grid.png"]
    (out / "eval.json").write_text(json.dumps(figures, indent=1))
    save_grid([images, recon], out / "eval_grid.png")
    sys.stdout.write(format_table(figures))
    if figures["prefix_decodable"]:
        sys.stdout.write("\nby prefix length (the first k tokens of each encoding):\n\n"
                         + format_length_table(figures["by_length"]))
    sys.stdout.write(f"wrote {', '.join(str(p) for p in written)}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="titok eval")
    add_args(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
