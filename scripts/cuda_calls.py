"""Time each of the first calls of an artifact at every batch size the batcher may send, under TorchScript's
executor settings: where the per-call overhead on a GPU comes from (the H200 run measured 23 ms of model time per
batch of 32 for a 9M-parameter model, and start-up probes far below the chip's speed).

TorchScript profiles the first calls of each new input shape and then optimises the graph for it (on CUDA it
fuses and compiles kernels); the batcher sends any batch size from 1 to the max, so a long-running service may
meet that cost once per size. Each mode runs in a fresh process (the settings are global to a process):

- default: as the service runs today;
- dynamic: `torch.jit.set_fusion_strategy([("DYNAMIC", 20)])`, fused kernels made for dynamic shapes;
- no-fusion: `torch._C._jit_set_texpr_fuser_enabled(False)`, no fused kernels (nothing to compile);
- no-profiling: `torch._C._jit_set_profiling_executor(False)`, the legacy executor.

    python scripts/cuda_calls.py service/models/default.pt --device cuda --dtype bfloat16

Prints a markdown table: mode, op, batch size, the milliseconds of calls 1, 2, 3 and the median of the rest
(synchronised), and the items per second at that median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = ("default", "dynamic", "no-fusion", "no-profiling")


def apply_mode(mode: str) -> None:
    """Set TorchScript's executor for this process (see the module docstring)."""
    import torch

    if mode == "dynamic":
        torch.jit.set_fusion_strategy([("DYNAMIC", 20)])
    elif mode == "no-fusion":
        torch._C._jit_set_texpr_fuser_enabled(False)
    elif mode == "no-profiling":
        torch._C._jit_set_profiling_executor(False)
    elif mode != "default":
        raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")


def time_calls(artifact: Path, device: str, dtype: str, batches: list[int], calls: int, mode: str) -> list[dict]:
    """For each op and batch size: the wall time of each of `calls` calls in ms (the device synchronised)."""
    import numpy as np
    import torch

    from titok.core.artifact import load_artifact, resolve_device

    apply_mode(mode)
    device = resolve_device(device)
    module, meta = load_artifact(artifact, device, dtype)
    s, k = int(meta["image_size"]), int(meta["num_tokens"])
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    rng = np.random.default_rng(0)
    rows = []
    with torch.inference_mode():
        for b in batches:
            images = torch.from_numpy(rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8)).to(device)
            tokens = torch.from_numpy(rng.integers(0, int(meta["codebook_size"]), (b, k))).to(device)
            for op, method, arg in (("encode", module.encode, images), ("decode", module.decode, tokens)):
                ms = []
                for _ in range(calls):
                    sync()
                    t0 = time.perf_counter()
                    method(arg)
                    sync()
                    ms.append(1000 * (time.perf_counter() - t0))
                rows.append({"mode": mode, "op": op, "batch": b, "ms": ms})
    return rows


def table(rows: list[dict]) -> str:
    out = ["| mode | op | batch | call 1 ms | call 2 ms | call 3 ms | later calls, median ms | items/s |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = r["ms"]
        first = [f"{m:.1f}" for m in ms[:3]] + ["-"] * (3 - len(ms[:3]))
        later = statistics.median(ms[3:]) if len(ms) > 3 else ms[-1]
        out.append(f"| {r['mode']} | {r['op']} | {r['batch']} | {' | '.join(first)} | {later:.2f} | "
                   f"{r['batch'] / later * 1000:.0f} |")
    return "\n".join(out)


def positive(text: str) -> int:
    """An argparse type: an integer of 1 or more."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def batch_sizes(text: str) -> list[int]:
    """An argparse type: comma-separated batch sizes, each 1 or more."""
    try:
        return [positive(b) for b in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers of 1 or more, not {text!r}") from exc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact", type=Path)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batches", type=batch_sizes, default="1,2,3,5,8,13,21,32",
                   help="comma-separated batch sizes (1 or more), in this order")
    p.add_argument("--calls", type=positive, default=6, help="calls of each op at each batch size (1 or more)")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--one-mode", help=argparse.SUPPRESS)  # a child process: one mode, rows as JSON on stdout
    args = p.parse_args(argv)
    batches = args.batches
    if args.one_mode:
        rows = time_calls(args.artifact, args.device, args.dtype, batches, args.calls, args.one_mode)
        sys.stdout.write(json.dumps(rows) + "\n")
        return 0
    modes = args.modes.split(",")
    for mode in modes:
        if mode not in MODES:
            p.error(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
    from titok.core.artifact import DTYPES, read_meta, resolve_device
    from titok.core.errors import ModelLoadError

    if args.dtype not in DTYPES:
        p.error(f"--dtype {args.dtype!r}: one of {', '.join(DTYPES)}")

    try:  # the file and the device once, here, rather than a traceback per mode
        read_meta(args.artifact)
        resolve_device(args.device)
    except (ModelLoadError, OSError) as exc:
        p.exit(2, f"{p.prog}: {exc}\n")
    rows: list[dict] = []
    for mode in modes:
        child = subprocess.run([sys.executable, __file__, str(args.artifact), "--device", args.device, "--dtype",
                                args.dtype, "--batches", ",".join(map(str, batches)), "--calls", str(args.calls),
                                "--one-mode", mode], capture_output=True, text=True)
        if child.returncode:
            last = (child.stderr.strip().splitlines() or ["(no output)"])[-1]
            sys.stderr.write(f"mode {mode} failed: {last}\n")
            continue
        rows += json.loads(child.stdout.strip().splitlines()[-1])
    sys.stdout.write(f"## {args.artifact.name}, {args.device}, {args.dtype}\n\n{table(rows)}\n")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
