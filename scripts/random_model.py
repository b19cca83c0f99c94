"""Export a random-weight model of a preset (seed 0) as a servable artifact, for benchmarks and dtype checks.

    python scripts/random_model.py titok-l-32 runs/random-l32.pt     # TiTok-L-32 layout at 256 px (~2.6 GB fp32)
    python scripts/random_model.py titok-l-32 runs/random-l32.pt --fp16   # weights stored in fp16 (half the file)

An existing OUT is kept (delete it to rebuild). Its tokens mean nothing; its speed and its numerics (how far a
reduced dtype moves the tokens of an untrained model) are what it is for.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from titok.model.config import get_preset
from titok.model.export import export_model
from titok.model.tokenizer import build_model


def make(preset: str, out: Path, fp16: bool = False, seed: int = 0) -> Path:
    """Write OUT unless it exists; returns OUT. Raises ValueError for an unknown preset."""
    if out.is_file():
        return out
    torch.manual_seed(seed)
    cfg = get_preset(preset)
    t0 = time.perf_counter()
    export_model(build_model(cfg), cfg, out, {"name": f"random-{preset}"}, fp16_storage=fp16)
    sys.stderr.write(f"wrote {out} ({out.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("preset", help="a preset of model.config (e.g. titok-l-32, tiny)")
    p.add_argument("out", type=Path)
    p.add_argument("--fp16", action="store_true", help="store the weights in fp16 (the codebook stays fp32)")
    args = p.parse_args(argv)
    try:
        make(args.preset, args.out, args.fp16)
    except ValueError as e:
        sys.stderr.write(f"random_model: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
