"""What a run leaves behind for people to read: metrics.jsonl, curves PNG, reconstruction grids."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .quality import to_uint8


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def save_grid(rows: list[torch.Tensor], path: Path, pad: int = 2) -> None:
    """Rows of images (each (B, 3, H, W) in [0, 1]) stacked into one PNG: originals above reconstructions."""
    b, _, h, w = rows[0].shape
    grid = np.full((len(rows) * (h + pad) + pad, b * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for r, imgs in enumerate(rows):
        arr = to_uint8(imgs.detach()).byte().permute(0, 2, 3, 1).cpu().numpy()
        for i in range(b):
            y, x = pad + r * (h + pad), pad + i * (w + pad)
            grid[y:y + h, x:x + w] = arr[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


def plot_curves(records: list[dict[str, Any]], path: Path, baseline_psnr: float | None = None) -> None:
    """Training loss, held-out PSNR (with the equal-bits baseline) and codebook usage against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if train:
        steps = [r["step"] for r in train]
        axes[0].plot(steps, [r["loss"] for r in train], label="total")
        axes[0].plot(steps, [r["recon"] for r in train], label="reconstruction")
        axes[0].set_yscale("log")
        axes[0].set_title("training loss")
        axes[0].legend()
        axes[2].plot(steps, [100 * r["usage"] for r in train])
        axes[2].set_title("codebook usage (%)")
        axes[2].set_ylim(0, 100)
    if evals:
        axes[1].plot([r["step"] for r in evals], [r["psnr"] for r in evals], marker="o", label="tokenizer")
        if baseline_psnr is not None:
            axes[1].axhline(baseline_psnr, color="grey", linestyle="--", label="equal-bits thumbnail")
        axes[1].legend()
    axes[1].set_title("held-out PSNR (dB)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
