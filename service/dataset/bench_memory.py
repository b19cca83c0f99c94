"""The dataset job's memory against images done: one tar shard of N tiny PNGs, RSS sampled as the job goes.

    python -m titok.dataset.bench_memory [--images 20000] [--model PATH | --tiny-model] [--workers 0]

A shard is written only when its last image has its tokens, so everything the job keeps per image grows
until then; this prints the main process's resident memory at each tenth of the images and the growth per
image between the second and the last tenth (kept rows are a key, two sizes and K token bytes: well under
1 KB each). Prints a markdown table; asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..settings import Settings
from .progress import Progress


def rss_bytes() -> int:
    """This process's resident set size, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def tiny_pngs_tar(path: Path, n: int) -> None:
    """A WebDataset tar of n 2 x 2 PNGs (64 distinct pictures, keys 000000000 ...)."""
    pngs = []
    for i in range(64):
        buf = io.BytesIO()
        Image.fromarray(np.full((2, 2, 3), (4 * i, 255 - 4 * i, 128), np.uint8)).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            info = tarfile.TarInfo(f"{i:09d}.png")
            info.size = len(pngs[i % 64])
            tar.addfile(info, io.BytesIO(pngs[i % 64]))


class RssProgress(Progress):
    """A progress bar that also samples RSS each time another `every` images are done."""

    def __init__(self, total_bytes: int, shards: int, every: int) -> None:
        super().__init__(total_bytes, shards, stream=io.StringIO())
        self.every, self.next_at = every, every
        self.samples: list[tuple[int, int]] = [(0, rss_bytes())]

    def update(self, images: int = 0, nbytes: int = 0, shards: int = 0) -> None:
        super().update(images, nbytes, shards)
        if self.images >= self.next_at:
            self.samples.append((self.images, rss_bytes()))
            self.next_at += self.every


def _tiny_model(tmp: Path) -> Path:
    from titok.model.config import get_preset
    from titok.model.export import export_model
    from titok.model.tokenizer import TiTok

    cfg = get_preset("tiny", image_size=32, patch_size=8, num_tokens=8, enc_width=32, enc_depth=1, enc_heads=2,
                     dec_width=32, dec_depth=1, dec_heads=2, codebook_size=64, head_channels=8)
    export_model(TiTok(cfg), cfg, tmp / "tiny.pt", {"name": "bench-tiny-32px"})
    return tmp / "tiny.pt"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m titok.dataset.bench_memory", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20_000, help="tiny PNGs in the one shard (default: %(default)s)")
    p.add_argument("--model", type=Path, help="artifact (default: TITOK_MODEL_PATH or the bundled model)")
    p.add_argument("--tiny-model", action="store_true", help="a random 32 px, 8-token model exported on the spot "
                   "(needs the train extra): the model's time out of the way, the job's memory is what is measured")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="images per model call (default: %(default)s)")
    args = p.parse_args(argv)
    from ..core.engine import Engine
    from .inputs import plan_shards
    from .local import JobOptions, run_local
    from .writer import job_meta, prepare_output

    tmp = Path(tempfile.mkdtemp(prefix="titok-bench-memory-"))
    try:
        tar = tmp / "00000.tar"
        tiny_pngs_tar(tar, args.images)
        model = _tiny_model(tmp) if args.tiny_model else (args.model or Settings().model_path)
        engine = Engine.load(model, "cpu")
        try:
            meta = job_meta(engine.model_info, "crop")
            prepare_output(tmp / "out", meta)
            shards = plan_shards([str(tar)])
            progress = RssProgress(tar.stat().st_size, 1, every=max(args.images // 10, 1))
            t0 = time.perf_counter()
            summary = run_local(shards, engine, meta, JobOptions(tmp / "out", "crop", args.batch_size, args.workers),
                                progress)
            seconds = time.perf_counter() - t0
            info = engine.model_info
        finally:
            engine.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    samples = progress.samples
    base = samples[0][1]
    lines = [f"| {n} | {rss / 2**20:.1f} | {(rss - base) / 2**20:+.1f} |" for n, rss in samples]
    (n1, r1), (n2, r2) = samples[min(2, len(samples) - 1)], samples[-1]  # after the warm-up's allocations
    slope = (r2 - r1) / max(n2 - n1, 1)
    sys.stdout.write(
        f"\n#### dataset job memory ({info.name}, {summary.images} images of 2 x 2 px in one tar shard, "
        f"{args.workers} decoding workers, batch {args.batch_size}, {seconds:.1f} s)\n\n"
        "| images done | RSS (MiB) | since start (MiB) |\n|---|---|---|\n" + "\n".join(lines) +
        f"\n\ngrowth from {n1} to {n2} images: {slope:.0f} bytes per image\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
