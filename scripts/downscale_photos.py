"""Copy a folder of photos with each shorter side reduced to --side pixels (JPEG, quality 90): a training set
small enough to travel to a GPU machine (the 332 training photos: 65 MB -> about 5 MB at 160 px).

    python scripts/downscale_photos.py photos/train photos/train-small
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError


def downscale(src: Path, dst: Path, side: int = 160) -> int:
    """Write dst/<relative path>.jpg for every readable image under src; returns how many were written."""
    n = 0
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        try:
            im = ImageOps.exif_transpose(Image.open(f)).convert("RGB")
        except (UnidentifiedImageError, OSError):
            continue
        scale = side / min(im.size)
        if scale < 1:
            size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
            im = im.resize(size, Image.Resampling.LANCZOS)
        out = dst / f.relative_to(src).with_suffix(".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        im.save(out, quality=90)
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--side", type=int, default=160, help="shorter side in pixels (default: 160)")
    args = p.parse_args(argv)
    if not args.src.is_dir():
        sys.stderr.write(f"downscale_photos: {args.src} is not a folder\n")
        return 2
    sys.stdout.write(f"{downscale(args.src, args.dst, args.side)} photos -> {args.dst}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
