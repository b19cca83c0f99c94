"""Where the service's time goes, and its throughput under several settings against the raw engine, in one run.

    python scripts/service_speed.py --images photos/dev-eval
    python scripts/service_speed.py --images photos/dev-eval --configs "today:dtype=float32" "new:" --rounds 2
    python scripts/service_speed.py --ops "decode .npy" --configs new: --overhead     # one cell only

1. Per image, single-threaded: the codec (photo decode + resize; PNG encode) against the model's share of a
   batch in each dtype; this says what sets the pace once the model is faster.
2. The service (`python -m titok`) under each configuration (TITOK_* overrides; "today" is the settings before
   TITOK_DTYPE=auto: float32, one model call at a time on as many torch threads as cores, codec threads = half the
   cores), closed loop: one item per request (/encode of a JPEG/PNG photo with a JSON answer, /decode of one token
   list as JSON -> PNG and as .npy -> .npy; `--concurrency` at a time) and 32 per request (/encode of 32 photos in
   one multipart form, /decode of a (32, K) .npy; concurrency / 32 at a time, at least 2).
   Configurations run in turn, `--rounds` times over (interleaved, so a busy neighbour hurts each alike); each cell
   is the best round.
3. The raw engine (the artifact called on full batches with the same decoding / PNG encoding) in the dtype the
   default service chose, in two layouts: one call at a time on every core's torch threads, and the service's own
   layout (`--raw-workers` threads side by side, one torch thread each, each decoding / encoding its own images).
   The faster of the two is the ceiling the service is measured against.
4. With `--overhead`: the same loads against the default service around an instant stand-in for the model
   (titok.bench.instant), once per round: the service's own CPU per item, on the event loop and on the other
   threads (the codec's), and the load generator's (it runs on the same cores), beside the raw engine's whole CPU
   per item.
Prints markdown tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from titok.bench import loadgen
from titok.bench.bench import Server, load_photos, raw_artifact, synthetic_photos
from titok.core.arrays import NPY, write_npy
from titok.core.artifact import load_artifact
from titok.core.codec import encode_png, load_image
from titok.core.engine import cpu_flags
from titok.settings import DEFAULT_MODEL_PATH

OPS = ("encode photo", "decode -> PNG", "decode .npy", "encode 32 photos", "decode .npy x32")
RAW_OP = {"encode 32 photos": "encode photo", "decode .npy x32": "decode .npy"}  # the raw engine batches either way
BATCHED = {"encode 32 photos": 32, "decode .npy x32": 32}  # items per request; the others send one
# The defaults before TITOK_DTYPE=auto: fp32, one model call at a time on all the cores' threads, codec threads =
# half the cores.
TODAY = f"today:dtype=float32,model_workers=1,torch_threads=0,codec_threads={max(1, (os.cpu_count() or 1) // 2)}"


def per_image_costs(model: Path, photos: list[bytes], batch: int) -> str:
    """ms per image of the codec and of the model (at `batch`), one torch thread: a markdown table."""
    torch.set_num_threads(1)
    module, meta = load_artifact(model, "cpu", "float32")
    size = int(meta["image_size"])

    def ms(fn, n: int) -> float:  # CPU time of this process (one thread of work): robust to a busy machine
        fn()
        t0 = time.process_time()
        for _ in range(3):
            fn()
        return 1000 * (time.process_time() - t0) / 3 / n

    images = np.stack([load_image(photos[i % len(photos)], size) for i in range(batch)])
    with torch.inference_mode():
        tokens = module.encode(torch.from_numpy(images))
        pixels = module.decode(tokens).numpy()
    rows = ["| cost per image, 1 thread | CPU ms |", "|---|---|",
            f"| photo decode + resize to {size} px (mean of {len(photos)} photos) | "
            f"{ms(lambda: [load_image(p, size) for p in photos], len(photos)):.2f} |",
            f"| PNG encode (level 1) | {ms(lambda: [encode_png(p) for p in pixels], len(pixels)):.2f} |",
            f"| .npy write of the pixels | {ms(lambda: [write_npy(p[None]) for p in pixels], len(pixels)):.3f} |"]
    for dtype in ("float32", "bfloat16"):
        m, _ = load_artifact(model, "cpu", dtype)
        with torch.inference_mode():
            rows.append(f"| model encode, batch {batch}, {dtype} | "
                        f"{ms(lambda m=m: m.encode(torch.from_numpy(images)), batch):.2f} |")
            rows.append(f"| model decode, batch {batch}, {dtype} | {ms(lambda m=m: m.decode(tokens), batch):.2f} |")
    torch.set_num_threads(os.cpu_count() or 1)
    return "\n".join(rows) + "\n"


def _kind(photo: bytes) -> str:
    return "image/png" if photo[:4] == b"\x89PNG" else "image/jpeg"


def requests_for(url: str, op: str, photos: list[bytes], tokens: list[list[int]]) -> list[bytes]:
    if op == "encode photo":
        return [loadgen.post(url, "/encode", p, _kind(p)) for p in photos]
    if op == "decode -> PNG":
        return [loadgen.post(url, "/decode", json.dumps({"tokens": t}).encode(), "application/json") for t in tokens]
    if op == "encode 32 photos":  # one multipart request of 32 photos, answered with JSON
        reqs = []
        for start in range(0, len(photos), 4):
            chosen = [photos[(start + i) % len(photos)] for i in range(BATCHED[op])]
            form = httpx.Request("POST", f"{url}/encode", files=[("images", (f"{i}", p, _kind(p)))
                                                                 for i, p in enumerate(chosen)])
            reqs.append(loadgen.post(url, "/encode", form.read(), form.headers["content-type"]))
        return reqs
    if op == "decode .npy x32":
        return [loadgen.post(url, "/decode", write_npy(np.array([tokens[(start + i) % len(tokens)]
                                                                 for i in range(BATCHED[op])], np.int64)), NPY, NPY)
                for start in range(0, len(tokens), 4)]
    return [loadgen.post(url, "/decode", write_npy(np.array([t], np.int64)), NPY, NPY) for t in tokens]


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds so far (Linux /proc) of a process and its threads, or of its thread `tid` alone
    (the main thread has tid = pid)."""
    stat = Path(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service_round(model: Path, overrides: dict[str, str], photos: list[bytes], tokens: list[list[int]],
                  requests: int, concurrency: int, module: str = "titok",
                  loop_cpu: dict[str, float] | None = None,
                  client_cpu: dict[str, float] | None = None,
                  ops: tuple[str, ...] = OPS) -> tuple[dict[str, float], dict[str, float], str]:
    """items/s and server CPU ms per item for each op under one configuration, and the dtype it chose.

    CPU ms per item hardly depends on what else runs on the machine (unlike items/s): cores * 1000 / it is the
    throughput this configuration could reach on an idle machine if the server kept every core busy. `module`:
    the server to run (titok.bench.instant for the service without its model); `loop_cpu`, when given, gets the
    main thread's (the event loop's) CPU ms per item, `client_cpu` the load generator's (this process's).
    """
    env = {k: v for k, v in overrides.items() if k.isupper()}  # e.g. OMP_WAIT_POLICY=PASSIVE: the process's own
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        server = Server(model, module=module, **{k: v for k, v in overrides.items() if not k.isupper()})
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    try:
        dtype = httpx.get(f"{server.url}/info", timeout=30).json()["model"]["dtype"]
        rate, cpu = {}, {}
        for op in ops:
            reqs = requests_for(server.url, op, photos, tokens)
            per = BATCHED.get(op, 1)  # batched requests: a few at a time, as many items in all
            c, n = (max(2, concurrency // per), max(8, requests // per)) if per > 1 else (concurrency, requests)
            loadgen.run(partial(loadgen.closed_loop, server.url, reqs, c, min(64, n)))  # warm
            pid = server.proc.pid
            c0, l0, g0 = cpu_seconds(pid), cpu_seconds(pid, pid), time.process_time()
            tally, seconds = loadgen.run(partial(loadgen.closed_loop, server.url, reqs, c, n))
            cpu[op] = 1000 * (cpu_seconds(pid) - c0) / max(tally.ok * per, 1)
            if client_cpu is not None:  # the load generator runs in this process, on the same cores
                client_cpu[op] = 1000 * (time.process_time() - g0) / max(tally.ok * per, 1)
            if loop_cpu is not None:
                loop_cpu[op] = 1000 * (cpu_seconds(pid, pid) - l0) / max(tally.ok * per, 1)
            rate[op] = tally.ok * per / seconds if tally.failed == 0 else float("nan")
        return rate, cpu, dtype
    finally:
        server.stop()


def raw_round(module: Any, size: int, photos: list[bytes], tokens: list[list[int]], batch: int,
              n: int, workers: int = 1, ops: set[str] | None = None) -> dict[str, tuple[float, float]]:
    """items/s and CPU ms per item of the artifact called directly on full batches, per op (one round).

    workers=1: one call at a time on every core's thread (torch's own layout). workers=W > 1: the service's layout,
    W threads each calling the artifact on one torch thread (torch.set_num_threads is per thread), n items each."""
    if workers > 1:
        return _raw_round_workers(module, size, photos, tokens, batch, n, workers, ops)
    ids = torch.tensor([tokens[i % len(tokens)] for i in range(batch)])

    def decode_npy() -> None:
        with torch.inference_mode():
            for _ in range(n // batch):
                write_npy(module.decode(ids).numpy())

    loop = partial(raw_artifact, module, size, photos=photos, tokens=tokens, batch=batch, n=n, png_level=1)
    out = {}
    for op, run in (("encode photo", partial(loop, op="encode")), ("decode -> PNG", partial(loop, op="decode")),
                    ("decode .npy", decode_npy)):
        if ops is not None and op not in ops:
            continue
        if op == "decode .npy":
            decode_npy()  # warm-up (raw_artifact warms up by itself)
        c0, t0 = time.process_time(), time.perf_counter()
        run()
        items = n if op != "decode .npy" else (n // batch) * batch
        out[op] = (items / (time.perf_counter() - t0), 1000 * (time.process_time() - c0) / items)
    return out


def _raw_round_workers(module: Any, size: int, photos: list[bytes], tokens: list[list[int]], batch: int, n: int,
                       workers: int, ops: set[str] | None = None) -> dict[str, tuple[float, float]]:
    """raw_round's ops with `workers` threads side by side, each on one torch thread (the service's layout)."""
    import threading

    loop = partial(raw_artifact, module, size, photos=photos, tokens=tokens, batch=batch, n=n, png_level=1)
    ids = torch.tensor([tokens[i % len(tokens)] for i in range(batch)])

    def decode_npy(count: int) -> None:
        with torch.inference_mode():
            for _ in range(count):
                write_npy(module.decode(ids).numpy())

    out = {}
    for op, warm, run in (
            ("encode photo", partial(loop, op="encode", n=batch), partial(loop, op="encode", warmup=0)),
            ("decode -> PNG", partial(loop, op="decode", n=batch), partial(loop, op="decode", warmup=0)),
            ("decode .npy", partial(decode_npy, 3), partial(decode_npy, n // batch))):
        if ops is not None and op not in ops:
            continue
        ready = threading.Barrier(workers + 1)

        def work(warm: Any = warm, run: Any = run, ready: threading.Barrier = ready) -> None:
            torch.set_num_threads(1)  # this thread's torch calls only
            warm()  # each thread's first calls: TorchScript profiles and optimises per thread's first shapes too
            ready.wait()
            ready.wait()
            run()

        threads = [threading.Thread(target=work) for _ in range(workers)]
        for t in threads:
            t.start()
        ready.wait()  # every thread warm
        c0, t0 = time.process_time(), time.perf_counter()
        ready.wait()  # go
        for t in threads:
            t.join()
        items = workers * (n if op != "decode .npy" else (n // batch) * batch)
        out[op] = (items / (time.perf_counter() - t0), 1000 * (time.process_time() - c0) / items)
    return out


def _layout(workers: int) -> str:
    return "one call at a time, all cores' threads" if workers == 1 else f"{workers} workers x 1 thread"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    p.add_argument("--images", type=Path, help="photos to upload (default: synthetic 320 px JPEGs)")
    p.add_argument("--configs", nargs="+", default=[TODAY, "new:"],
                   help="NAME:key=value,... TITOK_* overrides per configuration (lower-case keys; upper-case keys "
                        "are environment variables of the server, e.g. OMP_WAIT_POLICY=PASSIVE); default: today, new")
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch", type=int, default=32, help="the raw engine's batch (the service's max batch)")
    p.add_argument("--overhead", action="store_true",
                   help="also run the default service around an instant stand-in for the model (titok.bench.instant) "
                        "in each round: the service's own CPU per item")
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS), metavar="OP",
                   help=f"the cells to measure (default: all): {', '.join(repr(o) for o in OPS)}")
    p.add_argument("--raw-workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="the raw engine also runs in the service's layout: this many threads side by side, one torch "
                        "thread each (default: min(2, cores), the service's TITOK_MODEL_WORKERS on a CPU); the ratios "
                        "are against the faster of the two layouts; 1: one layout only")
    args = p.parse_args(argv)
    ops = tuple(op for op in OPS if op in args.ops)
    if args.images:
        photos = load_photos(args.images, 16)
    else:
        photos = synthetic_photos(16)
    configs = {}
    for spec in args.configs:
        name, _, rest = spec.partition(":")
        configs[name] = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    out = sys.stdout.write
    out(f"## service_speed ({args.model.name}, {os.cpu_count()} cores, CPU flags: {' '.join(cpu_flags())}, "
        f"{len(photos)} photos, closed loop c={args.concurrency}, {args.requests} requests per cell)\n\n")
    out(per_image_costs(args.model, photos, args.batch) + "\n")
    module, meta = load_artifact(args.model, "cpu", "float32")
    size = int(meta["image_size"])
    with torch.inference_mode():
        tokens = module.encode(torch.from_numpy(np.stack([load_image(ph, size) for ph in photos]))).tolist()
    best: dict[str, dict[str, float]] = {name: {} for name in configs}
    least_cpu: dict[str, dict[str, float]] = {name: {} for name in configs}
    dtypes: dict[str, str] = {}
    raw: dict[str, float] = {}
    raw_cpu: dict[str, float] = {}
    module: Any = None
    overhead: dict[str, float] = {}  # --overhead: the instant-model service's CPU ms per item, all threads
    overhead_loop: dict[str, float] = {}  # ... and its event loop's
    overhead_client: dict[str, float] = {}  # ... and the load generator's
    overhead_rate: dict[str, float] = {}
    n = max(args.batch * 8, args.requests // 2)  # raw items per op and round (per thread in the workers layout)
    layouts = sorted({1, max(1, args.raw_workers)})
    raw_by: dict[int, dict[str, float]] = {w: {} for w in layouts}  # raw engine items/s per layout (best round)
    for r in range(args.rounds):
        for name, overrides in configs.items():
            got, cpu, dtypes[name] = service_round(args.model, overrides, photos, tokens, args.requests,
                                                   args.concurrency, ops=ops)
            for op, v in got.items():
                best[name][op] = max(best[name].get(op, 0.0), v)
                least_cpu[name][op] = min(least_cpu[name].get(op, float("inf")), cpu[op])
            out(f"round {r + 1} {name} ({dtypes[name]}): " + ", ".join(
                f"{op} {v:.1f}/s {cpu[op]:.1f} CPU ms/item" for op, v in got.items()) + "\n")
            sys.stdout.flush()
        if args.overhead:
            loop: dict[str, float] = {}
            client: dict[str, float] = {}
            got, cpu, _ = service_round(args.model, configs.get("new", {}), photos, tokens, args.requests,
                                        args.concurrency, module="titok.bench.instant", loop_cpu=loop,
                                        client_cpu=client, ops=ops)
            for op in ops:
                for table, value in ((overhead, cpu[op]), (overhead_loop, loop[op]), (overhead_client, client[op])):
                    table[op] = min(table.get(op, float("inf")), value)
                overhead_rate[op] = max(overhead_rate.get(op, 0.0), got[op])
            out(f"round {r + 1} service with an instant model: " + ", ".join(
                f"{op} {got[op]:.1f}/s {cpu[op]:.2f} CPU ms/item ({loop[op]:.2f} event loop)" for op in ops) + "\n")
        # The raw engine in each round too, after the services, in the dtype the default service chose.
        default_dtype = dtypes.get("new", next(iter(dtypes.values())))
        if module is None:
            module, _ = load_artifact(args.model, "cpu", default_dtype)
        for workers in layouts:
            torch.set_num_threads(os.cpu_count() or 1)
            got = raw_round(module, size, photos, tokens, args.batch, n, workers=workers,
                            ops={RAW_OP.get(op, op) for op in ops})
            for op, (rate, cpu_ms) in got.items():
                raw_by[workers][op] = max(raw_by[workers].get(op, 0.0), rate)
                raw[op] = max(raw.get(op, 0.0), rate)
                raw_cpu[op] = min(raw_cpu.get(op, float("inf")), cpu_ms)
            out(f"round {r + 1} raw engine ({default_dtype}, {_layout(workers)}): " + ", ".join(
                f"{op} {v[0]:.1f}/s {v[1]:.1f} CPU ms/item" for op, v in got.items()) + "\n")
        sys.stdout.flush()
    for table in (raw, raw_cpu, *raw_by.values()):  # the raw engine runs full batches either way
        for batched, single in RAW_OP.items():
            if single in table:
                table[batched] = table[single]
    out(f"\n| items/s (best of {args.rounds}) | " + " | ".join(ops) + " |\n|---|" + "---|" * len(ops) + "\n")
    for name in configs:
        out(f"| service {name} ({dtypes[name]}; {configs[name] or 'defaults'}) | "
            + " | ".join(f"{best[name][op]:.1f}" for op in ops) + " |\n")
    for workers in layouts:
        out(f"| raw engine ({default_dtype}, batch {args.batch}, {_layout(workers)}) | "
            + " | ".join(f"{raw_by[workers][op]:.1f}" for op in ops) + " |\n")
    if "today" in best and "new" in best:
        out("| new / today | " + " | ".join(f"{best['new'][op] / best['today'][op]:.2f}" for op in ops) + " |\n")
        out("| new / raw engine (the faster layout) | "
            + " | ".join(f"{best['new'][op] / raw[op]:.2f}" for op in ops) + " |\n")
    out(f"\n| CPU ms per item (least of {args.rounds}; the server process, or the raw loop's) | "
        + " | ".join(ops) + " |\n|---|" + "---|" * len(ops) + "\n")
    for name in configs:
        out(f"| service {name} | " + " | ".join(f"{least_cpu[name][op]:.1f}" for op in ops) + " |\n")
    out(f"| raw engine ({default_dtype}) | " + " | ".join(f"{raw_cpu[op]:.1f}" for op in ops) + " |\n")
    if "today" in best and "new" in best:
        out("| raw engine / new (CPU per item) | " + " | ".join(
            f"{raw_cpu[op] / least_cpu['new'][op]:.2f}" for op in ops) + " |\n")
        out("| today / new (CPU per item) | " + " | ".join(
            f"{least_cpu['today'][op] / least_cpu['new'][op]:.2f}" for op in ops) + " |\n")
    if args.overhead:
        out(f"\n| the service's own cost, model excluded (instant stand-in; least of {args.rounds}) | "
            + " | ".join(ops) + " |\n|---|" + "---|" * len(ops) + "\n")
        out("| items/s | " + " | ".join(f"{overhead_rate[op]:.0f}" for op in ops) + " |\n")
        out("| server CPU ms per item | " + " | ".join(f"{overhead[op]:.2f}" for op in ops) + " |\n")
        out("| of which the event loop | " + " | ".join(f"{overhead_loop[op]:.2f}" for op in ops) + " |\n")
        out("| the load generator's CPU ms per item (same cores) | "
            + " | ".join(f"{overhead_client[op]:.2f}" for op in ops) + " |\n")
        out(f"| raw engine's whole CPU ms per item ({default_dtype}) | "
            + " | ".join(f"{raw_cpu[op]:.2f}" for op in ops) + " |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
