"""`titok bench`: the service under closed- and open-loop load, against the raw artifact and no batching.

Prints markdown tables (throughput, p50/p95/p99 latency, mean batch size from /metrics, rejection
rate), the ratios the design asks for, and the server's RSS. Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image

from ..core.codec import IMAGE_EXTS
from ..core.cpus import available_cpus
from ..core.errors import ModelLoadError
from ..core.models import model_argument, resolve_model
from ..settings import settings_with_dtype
from . import bench_formats, loadgen


def synthetic_photos(n: int, size: int = 320, seed: int = 0) -> list[bytes]:
    """Smooth colour fields with noise, as JPEG: photo-like sizes and entropy, nothing downloaded."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0, 6, 3)
        base = np.stack([np.sin(a * xx + b * yy), np.cos(b * xx - c * yy), np.sin(c * xx * yy + a)], -1)
        pixels = np.clip((base * 0.5 + 0.5) * 255 + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def load_photos(directory: Path, n: int) -> list[bytes]:
    files = sorted(p for p in directory.rglob("*") if p.suffix[1:].lower() in IMAGE_EXTS)
    if not files:
        raise SystemExit(f"titok bench: no images under {directory}")
    return [files[i % len(files)].read_bytes() for i in range(n)]


@dataclass
class Result:
    mode: str
    op: str
    load: str
    ok: int
    rejected: int
    seconds: float
    latencies: list[float]
    mean_batch: float | None = None
    client_cpu: float | None = None
    batches: float = 0.0  # model calls counted in /metrics during the run
    dtype: str = ""  # the model's compute dtype in this run
    model_seconds: float | None = None  # model compute time counted in /metrics during the run
    workers: int = 1  # the service's model workers (TITOK_MODEL_WORKERS): model busy is their shared time

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def row(self) -> str:
        q = np.percentile(self.latencies, [50, 95, 99]) * 1000 if self.latencies else [float("nan")] * 3
        total = self.ok + self.rejected
        batch = f"{self.mean_batch:.1f}" if self.mean_batch is not None else "-"
        client = f"{1000 * self.client_cpu / max(total, 1):.2f}" if self.client_cpu is not None else "-"
        busy = f"{100 * self.model_seconds / self.seconds / self.workers:.0f}%" \
            if self.model_seconds is not None and self.seconds else "-"
        return (f"| {self.mode} | {self.op} | {self.load} | {total} | {self.throughput:.1f} | {q[0]:.1f} | "
                f"{q[1]:.1f} | {q[2]:.1f} | {batch} | {100 * self.rejected / max(total, 1):.1f}% | {client} | "
                f"{busy} | {self.dtype or '-'} |")


# model busy: the share of the run's wall time the model workers spent computing (titok_model_compute_seconds,
# divided by the number of workers);
# far under 100% at full load means the codec, HTTP or the client set the pace, not the model.
HEADER = ("| mode | op | load | requests | items/s | p50 ms | p95 ms | p99 ms | mean batch | rejected "
          "| client CPU ms/req | model busy | dtype |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")


class Server:
    """`python -m titok` (or another `module`, e.g. titok.bench.instant) on a free loopback port, with setting
    overrides."""

    def __init__(self, model: Path, module: str = "titok", **settings: object) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # TITOK_MODEL (a name) would win over TITOK_MODEL_PATH in the child: it serves `model`, nothing else
        env = {**{k: v for k, v in os.environ.items() if k != "TITOK_MODEL"}, "TITOK_MODEL_PATH": str(model),
               "TITOK_LOG_FORMAT": "text",
               **{f"TITOK_{k.upper()}": str(v) for k, v in settings.items()}}
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", module, "--host", "127.0.0.1", "--port",
                                      str(self.port)], env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        self.log.seek(0)
        raise SystemExit(f"titok bench: the service did not start:\n{self.log.read().decode()[-2000:]}")

    def rss_mb(self, field: str = "VmRSS") -> float | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=120)


def batch_stats(url: str) -> dict[str, tuple[float, float, float]]:
    """op -> (sum, count) of titok_batch_size and the sum of titok_model_compute_seconds."""
    stats: dict[str, list[float]] = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        for part, idx in (("titok_batch_size_sum{", 0), ("titok_batch_size_count{", 1),
                          ("titok_model_compute_seconds_sum{", 2)):
            if line.startswith(part):
                op = line.split('op="')[1].split('"')[0]
                stats.setdefault(op, [0.0, 0.0, 0.0])[idx] = float(line.split()[-1])
    return {op: (v[0], v[1], v[2]) for op, v in stats.items()}


def measure(mode: str, op: str, load: str, url: str,
            run: Callable[[], Awaitable[tuple[loadgen.Tally, float]]]) -> Result:
    before = batch_stats(url).get(op, (0.0, 0.0, 0.0))
    cpu0 = time.process_time()
    tally, seconds = loadgen.run(run)
    client_cpu = time.process_time() - cpu0
    after = batch_stats(url).get(op, (0.0, 0.0, 0.0))
    batches = after[1] - before[1]
    return Result(mode, op, load, tally.ok, tally.failed, seconds, tally.latencies,
                  (after[0] - before[0]) / batches if batches else None, client_cpu, batches,
                  model_seconds=after[2] - before[2])


def merge(parts: list[Result], load: str) -> Result:
    """One row for several runs of the same mode and op."""
    batches = sum(r.batches for r in parts)
    items = sum((r.mean_batch or 0.0) * r.batches for r in parts)
    return Result(parts[0].mode, parts[0].op, load, sum(r.ok for r in parts), sum(r.rejected for r in parts),
                  sum(r.seconds for r in parts), [x for r in parts for x in r.latencies],
                  items / batches if batches else None,
                  sum(r.client_cpu or 0.0 for r in parts), batches,
                  model_seconds=sum(r.model_seconds or 0.0 for r in parts))


def soak(url: str, server: Server | None, requests: dict[str, list[bytes]], total: int,
         rss: list[tuple[int, float]], concurrency: int = 16, checkpoints: int = 10) -> list[Result]:
    """`total` requests, encode and decode in turn, in chunks; the server's RSS after each chunk."""
    chunk = max(2, total // checkpoints)
    done = 0
    parts: dict[str, list[Result]] = {"encode": [], "decode": []}
    while done < total:
        n = min(chunk, total - done)
        for op, share in (("encode", n // 2), ("decode", n - n // 2)):
            if share:
                parts[op].append(measure("service", op, "soak", url,
                                         partial(loadgen.closed_loop, url, requests[op], concurrency, share)))
        done += n
        if server and (mb := server.rss_mb()) is not None:
            rss.append((done, mb))
    return [merge(p, f"soak c={concurrency} x{sum(r.ok + r.rejected for r in p)}") for p in parts.values() if p]


def soak_table(rss: list[tuple[int, float]]) -> str:
    """RSS after each soak chunk, and its growth from the first checkpoint to the last."""
    rows = ["| soak requests | server RSS MB |", "|---|---|", *(f"| {n} | {mb:.0f} |" for n, mb in rss)]
    growth = rss[-1][1] - rss[0][1]
    return "\n".join(rows) + f"\n\nRSS growth over the soak, first to last checkpoint: {growth:+.0f} MB\n"


def plot(results: list[Result], soak_rss: list[tuple[int, float]], path: Path, title: str) -> None:
    """Throughput and latency against concurrency (raw artifact, batching off and the plain FastAPI endpoint as
    references), RSS over the soak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3 if soak_rss else 2, figsize=(15 if soak_rss else 10, 4))
    for op, colour in (("encode", "tab:blue"), ("decode", "tab:orange")):
        closed = sorted(((int(r.load.split("c=")[1]), r) for r in results
                         if (r.mode, r.op) == ("service", op) and r.load.startswith("closed c=")), key=lambda x: x[0])
        if not closed:
            continue
        cs = [c for c, _ in closed]
        axes[0].plot(cs, [r.throughput for _, r in closed], marker="o", color=colour, label=f"service {op}")
        for r in results:
            if r.op == op and r.mode == "raw artifact":
                axes[0].axhline(r.throughput, color=colour, linestyle="--", label=f"raw artifact {op} ({r.load})")
            for mode, marker in (("batching off", "x"), ("plain FastAPI", "s")):
                if r.op == op and r.mode == mode:
                    axes[0].scatter([cs[-1]], [r.throughput], marker=marker, s=60, color=colour,
                                    label=f"{mode} {op}", zorder=3)
        for q, style in ((50, "-"), (99, ":")):
            axes[1].plot(cs, [np.percentile(r.latencies, q) * 1000 if r.latencies else np.nan for _, r in closed],
                         marker="o", linestyle=style, color=colour, label=f"{op} p{q}")
    levels = sorted({int(r.load.split("c=")[1]) for r in results if r.load.startswith("closed c=")})
    for ax, ylabel in ((axes[0], "items/s"), (axes[1], "latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xticks([], minor=True)
        ax.set_xlabel("closed-loop concurrency")
        ax.set_ylabel(ylabel)
    axes[0].set_ylim(bottom=0)
    axes[0].set_title("throughput")
    axes[1].set_yscale("log")
    axes[1].set_title("latency")
    if soak_rss:
        axes[2].plot([n for n, _ in soak_rss], [mb for _, mb in soak_rss], marker="o", color="tab:green")
        axes[2].set_ylim(0, max(mb for _, mb in soak_rss) * 1.2)
        axes[2].set_xlabel("soak requests")
        axes[2].set_ylabel("server RSS (MB)")
        axes[2].set_title("memory over the soak")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def raw_artifact(module: Any, size: int, op: str, photos: list[bytes], tokens: list, batch: int, n: int,
                 png_level: int, device: str = "cpu", warmup: int = 3) -> Result:
    """The artifact called directly on the same batches, with the same image decoding / PNG encoding.

    `warmup` untimed calls of each batch size come first (0: the caller warmed the artifact up already)."""
    import torch

    from ..core.codec import encode_png, load_image

    batch = min(batch, n)

    def one_batch(start: int, count: int) -> None:
        with torch.inference_mode():
            if op == "encode":
                arrays = [load_image(photos[(start + j) % len(photos)], size) for j in range(count)]
                module.encode(torch.from_numpy(np.stack(arrays)).to(device)).cpu().numpy()
            else:
                ids = torch.tensor([tokens[(start + j) % len(tokens)] for j in range(count)], dtype=torch.int64)
                for pixels in module.decode(ids.to(device)).cpu().numpy():
                    encode_png(pixels, png_level)

    # Warm-up: TorchScript profiles the first calls of each input shape and optimises (on CUDA: fuses and
    # compiles kernels) on a later one, so one call left the compile inside the timed loop (the GPU run measured
    # TiTok-L-32's raw encode at p95 786 ms against a p50 of 93). Three calls of each batch size the loop uses.
    for count in {batch, n % batch or batch}:
        for _ in range(warmup):
            one_batch(0, count)
    lat = []
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        t1 = time.perf_counter()
        one_batch(start, min(batch, n - start))
        lat.append(time.perf_counter() - t1)
    return Result("raw artifact", op, f"batch {batch}", n, 0, time.perf_counter() - t0, lat, float(batch))


def png_levels(module: Any, tokens: list, levels: tuple[int, ...] = (0, 1, 3, 6, 9)) -> str:
    """The PNG encoder's trade of time against bytes on decoded images (TITOK_PNG_COMPRESS_LEVEL)."""
    import torch

    from ..core.codec import encode_png

    device = next(module.parameters()).device
    with torch.inference_mode():
        images = module.decode(torch.tensor(tokens[:16], dtype=torch.int64).to(device)).cpu().numpy()
    rows = ["| PNG level | ms / image | KB / image |", "|---|---|---|"]
    for level in levels:
        t0 = time.perf_counter()
        sizes = [len(encode_png(im, level)) for im in images]
        rows.append(f"| {level} | {1000 * (time.perf_counter() - t0) / len(images):.2f} | "
                    f"{sum(sizes) / len(sizes) / 1024:.1f} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="titok bench", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=model_argument, help="the model to serve: an artifact's path, a bundled model's "
                   "name (default, ordered) or a Hub name (default: TITOK_MODEL, else TITOK_MODEL_PATH, else the "
                   "bundled default)")
    p.add_argument("--url", help="benchmark a running service instead (no raw / no-batching comparison)")
    p.add_argument("--images", type=Path, help="folder of photos to send (default: synthetic photo-like JPEGs)")
    p.add_argument("--requests", type=int, default=512, help="requests per closed-loop run")
    p.add_argument("--concurrency", default="1,4,16,64", help="closed-loop concurrency levels")
    p.add_argument("--rate", type=float, help="open-loop requests/s (default: half the top closed-loop rate)")
    p.add_argument("--duration", type=float, default=10.0, help="open-loop seconds")
    p.add_argument("--soak", type=int, default=0, help="extra encode+decode requests to watch RSS over a long run")
    p.add_argument("--quick", action="store_true", help="a short run: 32 requests, 2 s open loop")
    p.add_argument("--plot", type=Path, help="also draw throughput, latency and RSS to this PNG (needs matplotlib)")
    p.add_argument("--dtype", help="the service's TITOK_DTYPE: auto (default: the environment's, else auto), float32, "
                                   "bfloat16 or float16; the raw artifact runs in the dtype the service chose")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.duration = min(args.requests, 32), min(args.duration, 2.0)
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.plot:
        try:
            import matplotlib  # noqa: F401  (checked now, not after minutes of benchmarking)
        except ImportError:
            sys.stderr.write("titok bench: --plot needs matplotlib (pip install 'titok-service[train]')\n")
            return 2
    settings = settings_with_dtype("titok bench", args.dtype)
    if settings is None:
        return 2
    if args.url and urlsplit(args.url).scheme != "http":
        sys.stderr.write(f"titok bench: --url {args.url}: only http:// URLs (the load generator speaks plain "
                         "HTTP/1.1; run the bench next to the service or against its plain-HTTP port)\n")
        return 2
    try:  # the service and the raw loop must run the same file, whichever way it was named
        model = Path("") if args.url else resolve_model(args.model or settings.model_source)
    except ModelLoadError as e:
        sys.stderr.write(f"titok bench: {e}\n")
        return 2
    photos = load_photos(args.images, 64) if args.images else synthetic_photos(64)
    out = sys.stdout.write
    results: list[Result] = []
    rss: list[str] = []
    soak_rss: list[tuple[int, float]] = []

    @contextmanager
    def service(**overrides: object) -> Iterator[tuple[str, Server | None]]:
        if args.url:
            yield args.url.rstrip("/"), None
            return
        server = Server(model, **{"dtype": settings.dtype, **overrides})
        try:
            yield server.url, server
        finally:
            server.stop()

    with service() as (url, server):
        warm = [httpx.post(f"{url}/encode", content=ph, headers={"content-type": "image/jpeg"}, timeout=120)
                for ph in photos[:16]]
        tokens = [r.json()["tokens"][0] for r in warm if r.status_code == 200]
        if not tokens:
            sys.stderr.write(f"titok bench: /encode failed: {warm[0].text[:300]}\n")
            return 1
        info = httpx.get(f"{url}/info", timeout=30).json()
        batch = int(info["batching"]["max_batch_size"])
        dtype, device = info["model"].get("dtype", "float32"), info["model"].get("device", "cpu")
        items = {"encode": photos, "decode": tokens}
        requests = {op: loadgen.payloads(url, op, items[op]) for op in items}
        rss.append(f"after warm-up {server.rss_mb():.0f} MB" if server else "n/a (--url)")
        for op in ("encode", "decode"):
            for c in levels:
                results.append(measure("service", op, f"closed c={c}", url,
                                       partial(loadgen.closed_loop, url, requests[op], c, args.requests)))
            rate = args.rate or max(1.0, results[-1].throughput / 2)
            results.append(measure("service", op, f"open {rate:.0f}/s", url,
                                   partial(loadgen.open_loop, url, requests[op], rate, args.duration)))
            if server:
                rss.append(f"after {op} {server.rss_mb():.0f} MB")
        formats = bench_formats.table(url, photos, tokens, int(info["model"]["image_size"]), batch,
                                      max(8, args.requests // batch))
        if args.soak:
            results.extend(soak(url, server, requests, args.soak, soak_rss))
        if server:
            rss.append(f"peak {server.rss_mb('VmHWM'):.0f} MB")
    top = max(levels)
    if not args.url:
        with service(max_batch_size=1, dtype=dtype) as (url1, _):  # the same dtype, whatever its own probe says
            for op in ("encode", "decode"):
                off = loadgen.payloads(url1, op, items[op])
                results.append(measure("batching off", op, f"closed c={top}", url1,
                                       partial(loadgen.closed_loop, url1, off, top, args.requests)))
        # What a first FastAPI wrapper of the model gives: one model call per request (titok.bench.plain).
        plain = Server(model, module="titok.bench.plain", dtype=dtype)
        try:
            for op in ("encode", "decode"):
                reqs = loadgen.payloads(plain.url, op, items[op])
                results.append(measure("plain FastAPI", op, f"closed c={top}", plain.url,
                                       partial(loadgen.closed_loop, plain.url, reqs, top, args.requests)))
        finally:
            plain.stop()
        import torch

        from ..core.artifact import load_artifact

        torch.set_num_threads(settings.torch_threads or available_cpus())  # as the service's model thread
        module, meta = load_artifact(model, device, dtype)  # loaded once for both directions and the PNG table
        for op in ("encode", "decode"):
            results.append(raw_artifact(module, int(meta["image_size"]), op, photos, tokens, batch, args.requests,
                                        settings.png_compress_level, device))
    workers = int(info["model"].get("model_workers", 1))
    for r in results:
        r.dtype = r.dtype or dtype
        r.workers = workers
    from ..core.engine import cpu_flags  # (imports torch: not at `titok bench --help`)

    probe = info["model"].get("dtype_probe") or {}
    figures = "; ".join(f"{d} encode {v['encode']:.0f} decode {v['decode']:.0f} img/s"
                        for d, v in probe.get("images_per_s", {}).items())
    out(f"\n## titok bench ({info['model']['name']}, {device}, {dtype} (TITOK_DTYPE={settings.dtype}), max batch "
        f"{batch}, {'photos from ' + str(args.images) if args.images else 'synthetic photos'})\n\n"
        f"CPU flags: {' '.join(cpu_flags()) or 'unknown'}; start-up dtype probe: {figures or 'n/a'}\n\n{HEADER}\n")
    out("".join(r.row() + "\n" for r in results))

    def find(mode: str, op: str, load: str) -> Result | None:
        return next((r for r in results if (r.mode, r.op) == (mode, op) and r.load.startswith(load)), None)

    out("\n| ratio | encode | decode |\n|---|---|---|\n")
    for name, a, b in ((f"service c={top} / raw artifact", ("service", f"closed c={top}"), ("raw artifact", "batch")),
                       (f"batching on / off (c={top})", ("service", f"closed c={top}"),
                        ("batching off", f"closed c={top}")),
                       (f"service / plain per-request FastAPI (c={top})", ("service", f"closed c={top}"),
                        ("plain FastAPI", f"closed c={top}"))):
        cells = []
        for op in ("encode", "decode"):
            x, y = find(a[0], op, a[1]), find(b[0], op, b[1])
            cells.append(f"{x.throughput / y.throughput:.2f}" if x and y and y.throughput else "n/a")
        out(f"| {name} | {cells[0]} | {cells[1]} |\n")
    out(f"\n{formats}\nserver RSS: {'; '.join(rss)}\n")
    if soak_rss:
        out("\n" + soak_table(soak_rss))
    if not args.url:
        out("\n" + png_levels(module, tokens))
    if args.plot:
        plot(results, soak_rss, args.plot, f"titok bench: {info['model']['name']} on {info['model']['device']}")
        out(f"\nplot: {args.plot}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
