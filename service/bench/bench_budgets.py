"""`titok bench-budgets`: what token budgets cost, on a prefix-decodable model, through a live service.

Two tables (markdown) and a plot:
- /decode throughput against k: sequences/s for .npy batches (B, k) at each k, through HTTP, beside the
  engine alone (the model call, no HTTP, no batcher) on the same batch;
- the target-PSNR encode against a plain encode: seconds per image for /encode of B images (.npy), plain,
  with num_tokens, and with target_psnr at a few targets, with the decodes per image the search made
  (from X-Batch-Size) and each mode's cost as a multiple of the plain encode.

Measures only; asserts nothing. Ratios within one run are the figures to quote (the machine is shared).
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ..core.arrays import NPY, write_npy
from ..core.budgets import max_search_decodes
from ..core.engine import Engine, psnr


@contextmanager
def _serving(model: Path, batch: int, threads: int) -> Iterator[str]:
    import uvicorn

    from ..server.app import build_app
    from ..settings import Settings

    settings = Settings(model_path=model, device="cpu", torch_threads=threads, max_batch_size=batch,
                        max_images_per_request=batch, max_batch_delay_ms=0, max_upload_bytes=64 * 1024 * 1024)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit("titok bench-budgets: the service did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


def _best(fn: Any, repeats: int) -> float:
    """The fastest of `repeats` runs of fn() in seconds (the least disturbed by the shared machine)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def decode_by_k(url: str, engine: Engine, tokens: np.ndarray, lengths: list[int], repeats: int) -> list[dict]:
    rows = []
    with httpx.Client(base_url=url, timeout=600) as http:
        for k in lengths:
            body = write_npy(tokens[:, :k])

            def call(body: bytes = body) -> None:
                r = http.post("/decode", content=body, headers={"Content-Type": NPY, "Accept": NPY})
                r.raise_for_status()

            call()  # warm this shape (TorchScript specialises on the first runs of each shape)
            call()
            http_s = _best(call, repeats)
            engine_s = _best(lambda k=k: engine.run("decode", np.ascontiguousarray(tokens[:, :k])), repeats)
            rows.append({"k": k, "http_seq_s": len(tokens) / http_s, "engine_seq_s": len(tokens) / engine_s})
    return rows


def target_cost(url: str, images: np.ndarray, targets: list[float], num_tokens: int, repeats: int) -> list[dict]:
    body = write_npy(images)
    rows = []
    with httpx.Client(base_url=url, timeout=600) as http:
        modes: list[tuple[str, dict[str, Any]]] = [("plain encode", {}), (f"num_tokens={num_tokens}",
                                                                          {"num_tokens": num_tokens})]
        modes += [(f"target_psnr={t:g}", {"target_psnr": t}) for t in targets]  # each image's own k
        for name, params in modes:
            answers: list[httpx.Response] = []

            def call(params: dict[str, Any] = params, answers: list = answers) -> None:
                r = http.post("/encode", params=params, content=body,
                              headers={"Content-Type": NPY, "Accept": "application/json"})
                r.raise_for_status()
                answers.append(r)

            call()
            call()  # TorchScript's profiling executor specialises each new batch shape on its first runs
            seconds = _best(call, repeats)
            last = answers[-1]
            items = sum(int(b) for b in last.headers["X-Batch-Size"].split(", "))  # each image once per model call
            # a target's first call is the roundtrip (encode + the decode at K); every later item is a decode
            decodes = (items / len(images)) if "target_psnr" in params else 0.0
            row = {"mode": name, "s_per_image": seconds / len(images), "decodes_per_image": decodes}
            if "target_psnr" in params:
                answer = last.json()
                row.update(mean_k=float(np.mean(answer["num_tokens"])), reached=float(np.mean(answer["reached"])))
            rows.append(row)
    plain = rows[0]["s_per_image"]
    for row in rows:
        row["x_plain"] = row["s_per_image"] / plain
    return rows


def _table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    head = "| " + " | ".join(title for _, title, _ in columns) + " |\n"
    head += "| " + " | ".join("---" for _ in columns) + " |\n"
    for row in rows:
        head += "| " + " | ".join(format(row[key], fmt) if key in row else "" for key, _, fmt in columns) + " |\n"
    return head


def _plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ks = [r["k"] for r in rows]
    ax.plot(ks, [r["http_seq_s"] for r in rows], "o-", label="/decode (.npy, HTTP)")
    ax.plot(ks, [r["engine_seq_s"] for r in rows], "s--", label="engine alone")
    ax.set_xlabel("tokens per sequence (k)")
    ax.set_ylabel("sequences / s")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="titok bench-budgets", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="a prefix-decodable artifact (meta prefix_decodable)")
    p.add_argument("--batch", type=int, default=16, help="sequences or images per request (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="runs per figure; the fastest is kept (default: 3)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: the CPU count)")
    p.add_argument("--targets", type=float, nargs="+", help="target PSNRs (default: the 10th, 50th and 90th "
                   "percentiles of the images' PSNR with all K tokens)")
    p.add_argument("--plot", type=Path, help="write the throughput-vs-k plot here (PNG)")
    args = p.parse_args(argv)
    engine = Engine.load(args.model, "cpu", torch_threads=args.threads)
    try:
        if not engine.prefix_decodable:
            sys.stderr.write(f"titok bench-budgets: error: {args.model} is not prefix-decodable (meta.json "
                             "prefix_decodable); export a model trained with --tail-drop\n")
            return 2
        from ..core.codec import load_image
        from .bench import synthetic_photos

        images = np.stack([load_image(b, engine.image_size) for b in synthetic_photos(args.batch, seed=1)])
        tokens = engine.run("encode", images)
        big_k = engine.num_tokens
        lengths = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, big_k} & set(range(1, big_k + 1)))
        if args.targets:
            targets = args.targets
        else:  # the 10th, 50th and 90th percentiles of the images' PSNR with all K tokens: most, half, few reach
            full = psnr(engine.run("decode", tokens), images)
            targets = [round(float(np.percentile(full, q)), 2) for q in (10, 50, 90)]
        with _serving(args.model, args.batch, args.threads) as url:
            by_k = decode_by_k(url, engine, tokens, lengths, args.repeats)
            cost = target_cost(url, images, targets, max(1, big_k // 2), args.repeats)
    finally:
        engine.close()
    out = sys.stdout
    title = (f"{engine.name}: {engine.image_size} px, K = {big_k}, batch {args.batch}, "
             f"{engine.torch_threads} threads")
    out.write(f"### /decode throughput against k ({title})\n\n")
    out.write(_table(by_k, [("k", "k", "d"), ("http_seq_s", "/decode sequences/s", ".1f"),
                        ("engine_seq_s", "engine sequences/s", ".1f")]) + "\n")
    out.write(f"### target-PSNR encode against a plain encode ({title}; at most {max_search_decodes(big_k)} "
          "decodes per image)\n\n")
    out.write(_table(cost, [("mode", "mode", "s"), ("s_per_image", "s per image", ".4f"), ("x_plain", "x plain", ".2f"),
                        ("decodes_per_image", "decodes per image", ".2f"), ("mean_k", "mean k", ".1f"),
                        ("reached", "reached", ".2f")]))
    if args.plot:
        _plot(by_k, args.plot, title)
        out.write(f"plot: {args.plot}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
