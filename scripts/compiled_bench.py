"""TorchScript as loaded against compiled ways of running the same model, in fp32 and bf16, on the same batches.

    python scripts/compiled_bench.py                                # the bundled model, batch 32
    python scripts/compiled_bench.py --model runs/random-l32.pt --batch 8 --variants jit,frozen

Variants (each in each --dtypes):
  jit       the TorchScript artifact as the service loads it (titok.core.artifact.load_artifact)
  frozen    the same after torch.jit.freeze(preserved encode/decode) + torch.jit.optimize_for_inference
  compile   the eager model (rebuilt from meta.json's config and the artifact's weights) under torch.compile
  aoti      the eager model through torch.export + AOTInductor (a .pt2 package, compiled for this batch size)

Variants are built first, then timed in interleaved rounds (each variant's least time over the rounds counts,
the figure least disturbed by other work on a shared machine). Prints images/s per variant, dtype and
direction, the speed-up over `jit` in the same dtype, the build time (compilation and two warm-up calls),
and the share of tokens / pixels equal to `jit`'s in the same dtype (a variant that changes the answer must
not be adopted silently). Model time only: the codec is not in the loop. Asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from titok.core.artifact import load_artifact, to_compute_dtype
from titok.core.engine import cpu_flags
from titok.settings import DEFAULT_MODEL_PATH

VARIANTS = ("jit", "frozen", "compile", "aoti")
Runner = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def eager_tokenizer(scripted: Any, meta: dict[str, Any]) -> torch.nn.Module:
    """The eager ExportedTokenizer of the artifact's model: meta.json's config, the artifact's fp32 weights."""
    from titok.model.config import TiTokConfig
    from titok.model.export import ExportedTokenizer
    from titok.model.tokenizer import build_model

    cfg = TiTokConfig.from_dict(meta["config"])
    model = build_model(cfg)
    state = {k: v.float() if v.is_floating_point() else v for k, v in scripted.model.state_dict().items()}
    model.load_state_dict(state)
    return ExportedTokenizer(model.eval(), cfg.image_size, cfg.num_tokens, cfg.codebook_size).eval()


class _Encode(torch.nn.Module):
    def __init__(self, t: torch.nn.Module) -> None:
        super().__init__()
        self.t = t

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.t.encode(images)


class _Decode(_Encode):
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.t.decode(tokens)


def build(variant: str, model: Path, dtype: str, images: torch.Tensor, tokens: torch.Tensor, workdir: Path) -> Runner:
    """(encode, decode) callables of one variant in one dtype; compilation happens here (timed by the caller)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated.*")
        scripted, meta = load_artifact(model, "cpu", dtype)
        if variant == "jit":
            return scripted.encode, scripted.decode
        if variant == "frozen":
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(scripted.eval(),
                                                                        preserved_attrs=["encode", "decode"]))
            frozen.encode(images), frozen.decode(tokens)  # the optimisation passes run on the first calls
            return frozen.encode, frozen.decode
    fp32, _ = load_artifact(model, "cpu", "float32")
    eager = to_compute_dtype(eager_tokenizer(fp32, meta), dtype)
    if variant == "compile":
        enc, dec = torch.compile(_Encode(eager)), torch.compile(_Decode(copy.deepcopy(eager)))
        with torch.inference_mode():
            enc(images), dec(tokens)  # compiles
        return enc, dec
    if variant == "aoti":
        runners = []
        for name, wrapper, example in (("encode", _Encode(eager), images), ("decode", _Decode(eager), tokens)):
            with torch.inference_mode():
                program = torch.export.export(wrapper, (example,))
            path = torch._inductor.aoti_compile_and_package(program, package_path=str(workdir / f"{name}-{dtype}.pt2"))
            runners.append(torch._inductor.aoti_load_package(path))
        return runners[0], runners[1]
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def call_seconds(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    with torch.inference_mode():
        t0 = time.perf_counter()
        fn(x)
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=10, help="interleaved rounds; each variant's least time counts")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: the CPU count)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--dtypes", default="float32,bfloat16")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ref, meta = load_artifact(args.model, "cpu", "float32")
    size = int(meta["image_size"])
    from titok.bench.bench import synthetic_photos
    from titok.core.codec import load_image

    photos = synthetic_photos(args.batch)
    images = torch.from_numpy(np.stack([load_image(ph, size) for ph in photos]))  # (B, S, S, 3) uint8
    with torch.inference_mode():
        tokens = ref.encode(images)  # (B, K): the same token batch for every variant
    del ref
    out = sys.stdout.write
    out(f"## compiled execution: {meta['name']}, batch {args.batch}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, CPU flags: {' '.join(cpu_flags()) or 'unknown'}\n\n"
        "| variant | dtype | encode img/s | decode img/s | encode x jit | decode x jit | build s | tokens = jit "
        "| pixels = jit |\n|---|---|---|---|---|---|---|---|---|\n")
    with tempfile.TemporaryDirectory(prefix="titok-aoti-") as tmp:
        for dtype in args.dtypes.split(","):
            built: dict[str, tuple[Runner, float, torch.Tensor, torch.Tensor]] = {}
            for variant in args.variants.split(","):
                t0 = time.perf_counter()
                try:
                    enc, dec = build(variant, args.model, dtype, images, tokens, Path(tmp))
                    with torch.inference_mode():
                        got_tokens, got_pixels = enc(images), dec(tokens)
                        enc(images), dec(tokens)  # a second warm-up call
                except Exception as e:  # noqa: BLE001  (a variant that does not build is a row, not a crash)
                    msg = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
                    out(f"| {variant} | {dtype} | failed: {type(e).__name__}: {msg} |||||||\n")
                    sys.stdout.flush()
                    continue
                built[variant] = ((enc, dec), time.perf_counter() - t0, got_tokens, got_pixels)
            # Interleaved: each round calls every variant once per direction; the least time of the rounds
            # counts (the figure least disturbed by other work on a shared machine).
            best = {v: [float("inf"), float("inf")] for v in built}
            for _ in range(args.repeats):
                for v, ((enc, dec), _, _, _) in built.items():
                    best[v][0] = min(best[v][0], call_seconds(enc, images))
                    best[v][1] = min(best[v][1], call_seconds(dec, tokens))
            base = built.get("jit")
            for v, (_, build_s, got_tokens, got_pixels) in built.items():
                te, td = best[v]
                nan = float("nan")
                bt, bd = (best["jit"][0], best["jit"][1]) if base else (nan, nan)
                same_t = float((got_tokens == base[2]).float().mean()) if base else nan
                same_p = float((got_pixels == base[3]).float().mean()) if base else nan
                out(f"| {v} | {dtype} | {args.batch / te:.1f} | {args.batch / td:.1f} | {bt / te:.2f} | {bd / td:.2f} "
                    f"| {build_s:.0f} | {100 * same_t:.2f}% | {100 * same_p:.2f}% |\n")
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
