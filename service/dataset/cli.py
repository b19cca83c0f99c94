"""`titok tokenize` (a dataset -> Parquet shards of tokens) and `titok detokenize` (chosen rows -> PNGs)."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import typing
from pathlib import Path

from pydantic import ValidationError

from ..core.artifact import DTYPES, ModelInfo, read_meta
from ..core.codec import IMAGE_EXTS, RESIZE_MODES
from ..core.cpus import available_cpus
from ..core.models import model_argument, resolve_model
from ..errors import ModelLoadError
from ..settings import MAX_THREADS, Settings, describe_invalid
from .inputs import AUTO, PARQUET_IMAGE_COLUMNS, DatasetError

_DEFAULTS = Settings.model_fields


def _settings(args: argparse.Namespace) -> Settings:
    """The service's own settings (TITOK_* from the environment), with this command's --model/--device/--dtype."""
    given = {k: v for k, v in {"model": args.model, "device": args.device, "dtype": args.dtype}.items() if v}
    try:
        settings = Settings(**given)
    except ValidationError as e:
        raise DatasetError(describe_invalid(e, given)) from None
    # A Hub name is pulled once here, so that every worker (and the Ray driver's read_meta) opens a file.
    return settings.model_copy(update={"model_path": resolve_model(settings.model_source), "model": ""})


def _threads(text: str) -> int:
    """argparse `type` for a thread count: 0 (the default) to MAX_THREADS."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= n <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"{n} is outside 0..{MAX_THREADS} (0: the CPUs this process may use)")
    return n


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=model_argument, metavar="NAME_OR_PATH",
                   help="a bundled model's name (default, ordered), a Hugging Face Hub name (owner/name[@revision], "
                   "see `titok models`) or an artifact path (default: TITOK_MODEL, TITOK_MODEL_PATH or the bundled "
                   "default)")
    p.add_argument("--device", help="auto (default, or TITOK_DEVICE), cpu or cuda")
    p.add_argument("--dtype", help="auto (default, or TITOK_DTYPE: bf16 where it measures faster; float32 with "
                   "--ray on CPUs, so that every actor agrees), float32 (exact tokens), bfloat16 or float16")


def tokenize_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="titok tokenize", description="Tokenize image folders, WebDataset tar shards and Parquet files into "
        "Parquet shards of token IDs (one output shard per input shard; a rerun resumes).")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image folder (recursive), .tar shard or Parquet file; globs and brace ranges such as "
                        "'shards/train-{000000..000099}.tar' are expanded (quote them)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    _model_args(p)
    p.add_argument("--resize", default="crop", choices=RESIZE_MODES,
                   help="as /encode's ?resize=: crop (default), pad or stretch")
    p.add_argument("--batch-size", type=int,
                   help=f"images per model call (default: TITOK_MAX_BATCH_SIZE, {_DEFAULTS['max_batch_size'].default})")
    p.add_argument("--workers", type=int, default=available_cpus(),
                   help="decoding processes; 0 decodes in the main process (default: the CPUs this process may use, "
                        "%(default)s; "
                        "not with --ray: Ray runs one decoding task per free CPU)")
    p.add_argument("--torch-threads", type=_threads, default=0,
                   help="torch threads of the model (default: the CPUs this process may use; "
                   "not with --ray: each actor takes its node's default)")
    p.add_argument("--shard-size", type=int, default=10_000, help="images per output shard of a folder")
    p.add_argument("--image-column", default=AUTO,
                   help="Parquet: the column of image bytes (default: auto, the first of "
                        f"{', '.join(PARQUET_IMAGE_COLUMNS)}); tar: the image member's extension (default: auto, the "
                        f"first of {', '.join(IMAGE_EXTS)})")
    p.add_argument("--max-image-pixels", type=int, help="larger images are skipped as errors, checked in the image "
                   f"header before decoding (default: TITOK_MAX_IMAGE_PIXELS, {_DEFAULTS['max_image_pixels'].default})")
    p.add_argument("--max-image-bytes", type=int, help="larger image files, tar members and Parquet cells are "
                   "skipped as errors, checked before they are read (default: TITOK_MAX_UPLOAD_BYTES, "
                   f"{_DEFAULTS['max_upload_bytes'].default})")
    p.add_argument("--overwrite", action="store_true", help="delete shards of another model in --out")
    group = p.add_argument_group("token budget (prefix-decodable models; one of the two)")
    budget = group.add_mutually_exclusive_group()
    budget.add_argument("--num-tokens", type=int, metavar="K",
                        help="keep each image's first K tokens (1 to the model's number of tokens)")
    budget.add_argument("--target-psnr", type=float, metavar="DB",
                        help="keep, per image, the fewest tokens whose reconstruction reaches DB (0 < DB <= 100); "
                             "rows get their own lengths (a list column) with num_tokens, psnr and reached columns")
    ray = p.add_argument_group(
        "Ray Data (pip install 'titok-service[ray]')",
        "The inputs must be at the same absolute paths on every node (a shared file system); the output is "
        "written by this process and the model travels through Ray's object store. --workers and "
        "--torch-threads do not apply.")
    ray.add_argument("--ray", action="store_true", help="run on Ray Data instead of this machine's processes")
    ray.add_argument("--ray-address", help="the cluster to join (default: RAY_ADDRESS, else a local instance)")
    ray.add_argument("--concurrency", type=int, default=1, help="tokenizer actors, 1 CPU each; the cluster needs "
                     "at least one CPU more, for reading (default: %(default)s)")
    ray.add_argument("--num-gpus", type=float, help="GPUs per actor (default: 1 with --device cuda, else 0)")
    ray.add_argument("--ray-stall-timeout", type=float, default=600.0, metavar="SECONDS",
                     help="stop with an error when no image is done for this long (default: %(default)g)")
    return p


def _budget(args: argparse.Namespace, info: ModelInfo) -> typing.Any:
    """--num-tokens / --target-psnr checked against the model, as /encode checks them."""
    from ..core.budgets import check_budget
    from ..core.errors import CoreError

    try:
        return check_budget(args.num_tokens, args.target_psnr, info.num_tokens, info.prefix_decodable, info.name)
    except CoreError as e:
        raise DatasetError(e.message.replace("num_tokens", "--num-tokens").replace("target_psnr", "--target-psnr")) \
            from None


def _dtype_of_the_run(out: Path, dtype: str, content_hash: str) -> str:
    """`auto` on a rerun into a directory whose shards this model made: their compute dtype, so that one output
    holds tokens of one dtype (a timed probe could answer otherwise this time). Else `dtype` as given."""
    from .reader import read_dir_meta

    if dtype != "auto":
        return dtype
    try:
        before = read_dir_meta(out)
    except DatasetError:  # no complete shard yet (or a mix the job will refuse anyway)
        return dtype
    kept = before.get("compute_dtype")
    return kept if before.get("content_hash") == content_hash and kept in DTYPES else dtype


def _tokenize(args: argparse.Namespace) -> int:
    from .inputs import plan_shards
    from .writer import job_meta, prepare_output

    settings = _settings(args)
    batch_size = settings.max_batch_size if args.batch_size is None else args.batch_size
    max_pixels = settings.max_image_pixels if args.max_image_pixels is None else args.max_image_pixels
    max_bytes = settings.max_upload_bytes if args.max_image_bytes is None else args.max_image_bytes
    counts = {"--batch-size": batch_size, "--concurrency": args.concurrency, "--max-image-pixels": max_pixels,
              "--max-image-bytes": max_bytes}
    for option, value in counts.items():
        if value < 1:
            raise DatasetError(f"{option} is {value}; it must be at least 1")
    if args.workers < 0:
        raise DatasetError(f"--workers is {args.workers}; it must be 0 or more")
    if not math.isfinite(args.ray_stall_timeout) or args.ray_stall_timeout <= 0:
        raise DatasetError(f"--ray-stall-timeout is {args.ray_stall_timeout}; it must be a finite number of seconds "
                           "above 0")
    shards = plan_shards(args.inputs, args.shard_size, args.image_column)  # every input checked before any work
    from .local import JobOptions

    out = args.out.resolve()  # every path is resolved here, on the driver: Ray's workers have other working dirs
    if args.ray:
        from .on_ray import run_ray

        model = Path(settings.model_path).resolve()
        info = ModelInfo.from_meta(read_meta(model))
        budget = _budget(args, info)
        opts = JobOptions(out, args.resize, batch_size, args.workers, max_pixels, max_bytes, budget=budget)
        # One dtype for every actor: on CPUs `auto` is a timed probe, which actors on a busy cluster could
        # answer differently, mixing tokens of two dtypes in one output. So under Ray it is float32 there (ask
        # for bfloat16 where the nodes have matrix units); on CUDA `auto` is a fixed rule (bf16 where supported).
        gpus = args.num_gpus if args.num_gpus is not None else (1.0 if settings.device == "cuda" else 0.0)
        dtype = _dtype_of_the_run(out, settings.dtype, info.content_hash)
        dtype = "float32" if dtype == "auto" and not gpus else dtype
        meta = job_meta(info, args.resize, budget, compute_dtype=dtype)
        prepare_output(out, meta, args.overwrite)
        summary = run_ray(shards, model, settings.device, dtype, meta, opts, args.ray_address,
                          args.concurrency, gpus, args.ray_stall_timeout)
    else:
        from ..core.engine import Engine
        from .local import run_local

        dtype = _dtype_of_the_run(out, settings.dtype, ModelInfo.from_meta(read_meta(settings.model_path)).content_hash)
        engine = Engine.load(settings.model_path, settings.device, dtype, args.torch_threads)
        try:
            budget = _budget(args, engine.model_info)
            opts = JobOptions(out, args.resize, batch_size, args.workers, max_pixels, max_bytes, budget=budget)
            meta = job_meta(engine.model_info, args.resize, budget, compute_dtype=engine.dtype)
            prepare_output(out, meta, args.overwrite)
            summary = run_local(shards, engine, meta, opts)
        finally:
            engine.close()
    sys.stdout.write(summary.table() + f"{'model':<34} {meta['model']} (content hash {meta['content_hash'][:12]})\n"
                     f"{'compute dtype':<34} {meta['compute_dtype']}\n")
    return 0


def _run(prog: str, parser: argparse.ArgumentParser, body: typing.Callable[[argparse.Namespace], int],
         argv: list[str] | None) -> int:
    args = parser.parse_args(argv)
    try:
        return body(args)
    except (DatasetError, ModelLoadError) as e:
        sys.stderr.write(f"{prog}: error: {e}\n")
        if getattr(e, "exit_hard", False):  # a Ray run this process started failed under Ray Data's threads
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted; the shards already written are kept (a rerun resumes)\n")
        if getattr(args, "ray", False):  # Ray's threads would print tracebacks, or start a Ray, on the way out
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        return 130


def tokenize_main(argv: list[str] | None = None) -> int:
    return _run("titok tokenize", tokenize_parser(), _tokenize, argv)


def detokenize_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="titok detokenize", description="Decode chosen rows of a `titok tokenize` "
                                "output directory to PNGs, to look at what the tokens hold.")
    p.add_argument("directory", type=Path, help="a `titok tokenize --out` directory")
    p.add_argument("--keys", nargs="+", help="the rows' keys (default: the first --first rows)")
    p.add_argument("--first", type=int, default=8, help="rows to decode when no --keys are given (default: 8)")
    p.add_argument("--out", type=Path, required=True, help="folder for the PNGs (KEY.png, '/' in keys as '__')")
    _model_args(p)
    return p


def _detokenize(args: argparse.Namespace) -> int:
    import numpy as np

    from ..core.codec import encode_png
    from ..core.engine import Engine
    from .reader import read_ragged
    from .writer import describe

    if not args.keys and args.first < 1:
        raise DatasetError(f"--first is {args.first}; it must be 1 or more (the number of rows to decode)")
    meta, keys, ids, offsets = read_ragged(args.directory)  # any row length: --num-tokens / --target-psnr too
    if not args.model and not any(os.environ.get(v) for v in ("TITOK_MODEL", "TITOK_MODEL_PATH")):
        from ..core.models import model_with_hash

        found = model_with_hash(str(meta.get("content_hash") or ""))
        if found is None:  # the default (or any model) would decode them to noise: say which model is missing
            raise DatasetError(f"{args.directory} holds tokens of {describe(meta)}, and no bundled model and no "
                               "model in the titok cache has that content hash (a bundled model replaced since, or "
                               "a model from elsewhere); pass the directory's model with --model")
        args.model = str(found)  # the model the directory records, not the default (which may be another)
        sys.stderr.write(f"titok detokenize: decoding with {found}, the model {args.directory} records "
                         f"({meta.get('model')}, found by its content hash)\n")
    settings = _settings(args)
    index = {k: i for i, k in reversed(list(enumerate(keys)))}  # a repeated key: its first row
    missing = [k for k in args.keys or [] if k not in index]
    if missing:
        raise DatasetError(f"{args.directory} has no row with key {', '.join(map(repr, missing[:5]))} "
                           f"(e.g. {', '.join(map(repr, keys[:3]))})")
    rows = [index[k] for k in args.keys] if args.keys else list(range(min(args.first, len(keys))))
    engine = Engine.load(settings.model_path, settings.device, settings.dtype)
    sys.stderr.write(f"titok detokenize: {engine.model_info.name} on {engine.device}, compute dtype {engine.dtype}\n")
    try:
        served = engine.model_info
        if served.content_hash != meta["content_hash"] or served.name != meta["model"]:
            raise DatasetError(f"{args.directory} holds tokens of {describe(meta)}, but the model is {served.name} "
                               f"(content hash {served.short_hash}; --model, TITOK_MODEL or the default): its codebook "
                               "would decode them to noise; pass the directory's model with --model")
        by_length: dict[int, list[int]] = {}  # a prefix model decodes one length per call
        for n, i in enumerate(rows):
            by_length.setdefault(int(offsets[i + 1] - offsets[i]), []).append(n)
        pixels = np.empty((len(rows), served.image_size, served.image_size, 3), np.uint8)
        for group in by_length.values():
            tokens = np.stack([ids[offsets[rows[n]]:offsets[rows[n] + 1]] for n in group]).astype(np.int64)
            pixels[group] = engine.run("decode", tokens)  # (n, k) -> (n, S, S, 3)
    finally:
        engine.close()
    args.out.mkdir(parents=True, exist_ok=True)
    for i, image in zip(rows, pixels, strict=True):
        path = args.out / (re.sub(r"[^\w.-]", "_", keys[i].replace("/", "__")) + ".png")
        path.write_bytes(encode_png(image))
        sys.stdout.write(f"{keys[i]} -> {path}\n")
    return 0


def detokenize_main(argv: list[str] | None = None) -> int:
    return _run("titok detokenize", detokenize_parser(), _detokenize, argv)
