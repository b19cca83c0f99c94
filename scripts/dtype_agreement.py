"""The share of token positions a reduced compute dtype gives equal to fp32's, on the same photos.

    python scripts/dtype_agreement.py --images photos/dev-eval service/models/default.pt runs/random-l32.pt
    python scripts/dtype_agreement.py --images photos/dev-eval --device cuda --dtypes bfloat16,float16 MODEL...

Each model is loaded once in fp32 (the exact tokens), then cast in place to each dtype the way the service does
it (titok.core.artifact.to_compute_dtype: the transformer in the dtype, the quantizer in fp32) and back.
Prints one markdown row per model and dtype; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from titok.core.artifact import load_artifact, resolve_device, restore_weights, to_compute_dtype, weights_snapshot
from titok.core.codec import IMAGE_EXTS, load_image

HEADER = ("| model | device | dtype | images | positions | equal to fp32 | encode s (all images) |\n"
          "|---|---|---|---|---|---|---|")


def encode(module: torch.nn.Module, images: np.ndarray, device: str, batch: int = 8) -> tuple[np.ndarray, float]:
    """uint8 (N, S, S, 3) -> int64 (N, K) tokens and the seconds it took."""
    out = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            out.append(module.encode(torch.from_numpy(images[start:start + batch]).to(device)).cpu().numpy())
    return np.concatenate(out), time.perf_counter() - t0


def agreement(model: Path, files: list[Path], device: str, dtypes: list[str]) -> list[str]:
    """Markdown rows: fp32, then each dtype with its share of positions equal to fp32's."""
    module, meta = load_artifact(model, device, "float32")
    images = np.stack([load_image(f.read_bytes(), int(meta["image_size"])) for f in files])  # (N, S, S, 3)
    exact, seconds = encode(module, images, device)
    rows = [f"| {meta['name']} | {device} | float32 | {len(files)} | {exact.size} | 100.00% | {seconds:.2f} |"]
    snapshot = weights_snapshot(module)
    for dtype in dtypes:
        to_compute_dtype(module, dtype)
        encode(module, images[:1], device)  # warm-up: kernel selection
        tokens, seconds = encode(module, images, device)
        restore_weights(snapshot)
        rows.append(f"| {meta['name']} | {device} | {dtype} | {len(files)} | {tokens.size} | "
                    f"{100 * float((tokens == exact).mean()):.2f}% | {seconds:.2f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", type=Path, help="artifacts (.pt)")
    p.add_argument("--images", type=Path, required=True, help="folder of photos (e.g. photos/dev-eval: 8 held-out)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtypes", default="bfloat16", help="comma-separated reduced dtypes (default: bfloat16)")
    args = p.parse_args(argv)
    files = sorted(f for f in args.images.rglob("*") if f.suffix[1:].lower() in IMAGE_EXTS)
    if not files:
        sys.stderr.write(f"dtype_agreement: no images under {args.images}\n")
        return 2
    device = resolve_device(args.device)
    sys.stdout.write(HEADER + "\n")
    for model in args.models:
        for row in agreement(model, files, device, args.dtypes.split(",")):
            sys.stdout.write(row + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
