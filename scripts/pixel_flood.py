"""A pixel flood against a fresh service: N tiny PNGs that decode to 7000 x 7000 each, and a small photo behind them.

Prints the flood's answers, how long the small photo sent one second later took, and the server's RSS
before, at the peak and after the burst (sampled every 0.1 s, then at +1, +10, +30 and +60 s). Run it
from a checkout's root (`python scripts/pixel_flood.py`); `cd /work/main && python /path/to/this/file`
measures that checkout's service instead. Measures only.
"""

from __future__ import annotations

import argparse
import io
import sys
import threading
import time

import httpx
from PIL import Image

from titok.bench.bench import Server, synthetic_photos
from titok.settings import DEFAULT_MODEL_PATH


def black_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side)).save(buf, "PNG")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=16, help="PNGs in the flood")
    p.add_argument("--side", type=int, default=7000, help="their width and height")
    p.add_argument("--split", action="store_true", help="one request per image, all at once (default: one request)")
    p.add_argument("--after", type=float, default=60.0, help="seconds to watch RSS after the burst")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a service setting for this run, e.g. --set max_request_pixels=4000000000")
    args = p.parse_args(argv)
    out = sys.stdout.write
    flood, photo = black_png(args.side), synthetic_photos(1)[0]
    server = Server(DEFAULT_MODEL_PATH, **dict(s.split("=", 1) for s in args.set))
    try:
        httpx.post(f"{server.url}/encode", content=photo, headers={"content-type": "image/jpeg"}, timeout=60)
        before = server.rss_mb() or 0.0
        samples: list[float] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append(server.rss_mb() or 0.0)
                time.sleep(0.1)

        answers: list[tuple[int, float, str]] = []

        def send(n: int) -> None:
            t0 = time.perf_counter()
            files = [("images", (f"{i}.png", flood, "image/png")) for i in range(n)]
            r = httpx.post(f"{server.url}/encode", files=files, timeout=600)
            code = r.json()["error"]["code"] if r.status_code != 200 else "ok"
            answers.append((r.status_code, time.perf_counter() - t0, code))

        threading.Thread(target=sample, daemon=True).start()
        senders = [threading.Thread(target=send, args=(1,)) for _ in range(args.images)] if args.split \
            else [threading.Thread(target=send, args=(args.images,))]
        t_start = time.perf_counter()
        for t in senders:
            t.start()
        time.sleep(1.0)
        t0 = time.perf_counter()
        small = httpx.post(f"{server.url}/encode", content=photo, headers={"content-type": "image/jpeg"}, timeout=600)
        small_s = time.perf_counter() - t0
        for t in senders:
            t.join()
        burst_s = time.perf_counter() - t_start
        done.set()
        after = []
        for mark in (1, 10, 30, 60):
            if mark <= args.after:
                time.sleep(max(0.0, mark - (time.perf_counter() - t_start - burst_s)))
                after.append((mark, server.rss_mb() or 0.0))
        peak = max(samples + [server.rss_mb("VmHWM") or 0.0])
    finally:
        server.stop()
    statuses: dict[str, int] = {}
    for status, _, code in answers:
        statuses[f"{status} {code}"] = statuses.get(f"{status} {code}", 0) + 1
    out(f"\n{args.images} x {args.side}x{args.side} black PNGs ({len(flood) / 1000:.0f} KB each), "
        f"{'one request each' if args.split else 'one request'}; settings {args.set or 'default'}\n\n")
    out("| flood answers | slowest flood answer s | small photo 1 s later | burst s |\n|---|---|---|---|\n")
    out(f"| {', '.join(f'{n} x {k}' for k, n in sorted(statuses.items()))} | "
        f"{max(s for _, s, _ in answers):.1f} | {small.status_code} in {small_s:.2f} s | {burst_s:.1f} |\n\n")
    out("| RSS MB before | peak | " + " | ".join(f"+{m} s" for m, _ in after) + " |\n")
    out("|---|---|" + "---|" * len(after) + "\n")
    out(f"| {before:.0f} | {peak:.0f} | " + " | ".join(f"{mb:.0f}" for _, mb in after) + " |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
