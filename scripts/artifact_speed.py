"""Raw engine speed of artifacts side by side: images/s of encode and of decode at one batch size, per dtype.

    python scripts/artifact_speed.py service/models/default.pt service/models/ordered.pt [--batch 32]
        [--threads 2] [--dtypes float32,bfloat16] [--repeats 4]

One run measures every artifact in every dtype (after two warm-up calls of each), on random images, through
titok.core.engine.Engine (what the service runs), and prints a Markdown table; ratios between rows of one run are
what to read on a noisy machine. Exit code 2 for a path that is not an artifact.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np

from titok.core.errors import ModelLoadError


def measure(path: str, dtype: str, batch: int, threads: int, repeats: int) -> tuple[float, float]:
    """(encode, decode) images/s of the artifact at `path` on the CPU: `repeats` calls of `batch` images each."""
    from titok.core.engine import Engine

    engine = Engine.load(path, "cpu", dtype, torch_threads=threads)
    try:
        images = (np.random.default_rng(0).random((batch, engine.image_size, engine.image_size, 3)) * 255).astype(
            np.uint8)
        for _ in range(2):
            tokens = engine.run("encode", images)
            engine.run("decode", tokens)
        t0 = time.perf_counter()
        for _ in range(repeats):
            tokens = engine.run("encode", images)
        encode_s = (time.perf_counter() - t0) / repeats
        t0 = time.perf_counter()
        for _ in range(repeats):
            engine.run("decode", tokens)
        decode_s = (time.perf_counter() - t0) / repeats
    finally:
        engine.close()
    return batch / encode_s, batch / decode_s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifacts", nargs="+", help="artifact paths or bundled model names")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--repeats", type=int, default=4)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated")
    sys.stdout.write(f"batch {args.batch}, {args.threads} threads\n\n| artifact | dtype | encode images/s | decode "
                     "images/s |\n|---|---|---|---|\n")
    for dtype in args.dtypes.split(","):
        for path in args.artifacts:
            try:
                enc, dec = measure(path, dtype, args.batch, args.threads, args.repeats)
            except (OSError, ValueError, ModelLoadError) as exc:
                sys.stderr.write(f"{path}: {exc}\n")
                return 2
            sys.stdout.write(f"| {path} | {dtype} | {enc:.0f} | {dec:.0f} |\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
