"""`titok bench-tokenize`: the dataset job's throughput next to the raw artifact's, on the same image files.

The raw artifact is the plain way to do the job: one loop that reads each file, decodes it with the
service's codec and calls the TorchScript module on full batches, nothing else (timed before and after
the job's runs, the better of the two counts). The
job runs on the same files as a folder input, with 0, 1, 2, ... decoding workers, writing its Parquet
shards. Both load the model before their clock starts; the job's clock includes starting its worker
pool and writing its output. Prints markdown tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..core.artifact import load_artifact
from ..core.codec import load_image
from ..core.models import model_argument, resolve_model
from ..settings import settings_with_dtype


def _folder(src: Path | None, repeat: int, tmp: Path) -> Path:
    """The benchmark's images as one folder: `src`'s images (or synthetic photos), `repeat` times over."""
    from ..bench.bench import synthetic_photos
    from ..core.codec import IMAGE_EXTS

    files = sorted(p for p in src.rglob("*") if p.suffix[1:].lower() in IMAGE_EXTS) if src else []
    if src and not files:
        raise SystemExit(f"titok bench-tokenize: no images under {src}")
    data = [p.read_bytes() for p in files] if src else synthetic_photos(256)
    names = [p.name for p in files] if src else [f"synthetic-{i:04d}.jpg" for i in range(len(data))]
    folder = tmp / "images"
    for r in range(repeat):
        for i, (name, blob) in enumerate(zip(names, data, strict=True)):
            path = folder / f"{r:02d}" / f"{i:05d}-{name}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
    return folder


def raw_artifact(model: Path, files: list[Path], batch: int, dtype: str = "float32") -> float:
    """Images/s of read + decode + encode in one loop, the module called directly on full batches in `dtype`."""
    import torch

    module, meta = load_artifact(model, "cpu", dtype)
    size = int(meta["image_size"])

    def run(paths: list[Path]) -> None:
        for start in range(0, len(paths), batch):
            pixels = np.stack([load_image(p.read_bytes(), size) for p in paths[start : start + batch]])
            with torch.inference_mode():
                module.encode(torch.from_numpy(pixels))  # (B, S, S, 3) -> (B, K)

    run(files[:batch])  # warm-up
    t0 = time.perf_counter()
    run(files)
    return len(files) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="titok bench-tokenize", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=model_argument, help="an artifact's path, a bundled model's name (default, "
                   "ordered) or a Hub name (default: TITOK_MODEL, else TITOK_MODEL_PATH, else the bundled default)")
    p.add_argument("--images", type=Path, help="folder of images (default: 256 synthetic 320 px photos)")
    p.add_argument("--repeat", type=int, default=1, help="use the images this many times over (default: 1)")
    p.add_argument("--workers", default="0,1,2", help="decoding worker counts to run the job with (default: 0,1,2)")
    p.add_argument("--batch-size", type=int, default=32, help="images per model call, raw and job (default: 32)")
    p.add_argument("--dtype", help="as titok tokenize's: auto (default, or TITOK_DTYPE), float32, bfloat16, float16")
    args = p.parse_args(argv)

    from ..core.engine import Engine, cpu_flags
    from ..errors import ModelLoadError
    from .inputs import plan_shards
    from .local import JobOptions, run_local
    from .writer import job_meta, prepare_output

    settings = settings_with_dtype("titok bench-tokenize", args.dtype)
    if settings is None:
        return 2
    try:
        model = resolve_model(args.model or settings.model_source)
    except ModelLoadError as e:
        sys.stderr.write(f"titok bench-tokenize: {e}\n")
        return 2
    threads = os.cpu_count() or 1
    import torch

    torch.set_num_threads(threads)  # the raw loop's; the job's model thread gets the same count
    tmp = Path(tempfile.mkdtemp(prefix="titok-bench-tokenize-"))
    try:
        folder = _folder(args.images, args.repeat, tmp)
        files = sorted(f for f in folder.rglob("*") if f.is_file())
        try:
            engine = Engine.load(model, "cpu", settings.dtype, torch_threads=threads)  # settles the dtype (probe)
        except ModelLoadError as e:
            sys.stderr.write(f"titok bench-tokenize: {e}\n")
            return 2
        dtype = engine.dtype
        first_raw = raw_artifact(model, files, args.batch_size, dtype)
        engine.warmup(args.batch_size)
        info = engine.model_info
        meta = job_meta(info, "crop", compute_dtype=dtype)
        jobs = []
        for w in (int(x) for x in args.workers.split(",")):
            out = tmp / f"out-{w}"
            prepare_output(out, meta)
            summary = run_local(plan_shards([str(folder)], shard_size=1000), engine, meta,
                                JobOptions(out, "crop", args.batch_size, w))
            jobs.append((w, summary))
        engine.close()
        # Once before and once after the jobs; the better of the two: a busy machine cannot flatter the job.
        raw = max(first_raw, raw_artifact(model, files, args.batch_size, dtype))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [f"| raw artifact (read + decode + encode, one loop; best of 2) | {dtype} | - | {len(files)} | {raw:.1f} "
            "| 1.00 |"]
    rows += [f"| titok tokenize | {dtype} | {w} | {s.images} | {s.images_per_s:.1f} | {s.images_per_s / raw:.2f} |"
             for w, s in jobs]
    source = f"{len(files)} images from {args.images} x{args.repeat}" if args.images else f"{len(files)} synthetic"
    sys.stdout.write(f"\n#### titok bench-tokenize ({info.name}, cpu, {threads} torch threads, batch "
                     f"{args.batch_size}, {source}; TITOK_DTYPE={settings.dtype}; CPU flags: "
                     f"{' '.join(cpu_flags()) or 'unknown'})\n\n"
                     "| run | dtype | decoding workers | images | images/s | / raw |\n"
                     "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
