"""Slow and vanishing clients against a fresh service: uploads that stall, and uploads cut half-way.

N connections each promise a 1000-byte body, send 10 bytes and wait: every one must get a complete 408
JSON answer once TITOK_BODY_TIMEOUT_S has passed. Three more hang up mid-upload (raw image, multipart,
/decode): the metrics must count them as 499, never 500. Run from a checkout's root
(`python scripts/slow_clients.py`). Measures only.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import threading
import time
from collections import Counter

import httpx

from titok.bench.bench import Server
from titok.settings import DEFAULT_MODEL_PATH

_BOUNDARY = (b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n'
             b"Content-Type: image/jpeg\r\n\r\n")
HANG_UPS = (("/encode", "image/jpeg", b"\xff\xd8" + b"0" * 998),
            ("/encode", "multipart/form-data; boundary=b", _BOUNDARY + b"0" * 1000),
            ("/decode", "application/json", b'{"tokens": [' + b"1, " * 330))


def request_counts(url: str) -> Counter[str]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return Counter({m[1]: float(m[2]) for m in re.finditer(r"^titok_requests_total\{([^}]*)\} (\S+)$", text, re.M)})


def stalled_upload(port: int, t0: float, answers: list[tuple[str, float]]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(b"POST /encode HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
                  b"0123456789")
        out = b""
        while chunk := s.recv(4096):
            out += chunk
    answers.append((out.split(b"\r\n", 1)[0].decode("latin-1"), time.monotonic() - t0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=350, help="stalled uploads at once")
    p.add_argument("--body-timeout", type=float, default=3.0, help="TITOK_BODY_TIMEOUT_S for this run")
    args = p.parse_args(argv)
    server = Server(DEFAULT_MODEL_PATH, body_timeout_s=args.body_timeout)
    try:
        before = request_counts(server.url)
        for path, ctype, body in HANG_UPS:
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
                s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: 60000\r\n\r\n"
                          .encode() + body)
        answers: list[tuple[str, float]] = []
        t0 = time.monotonic()
        threads = [threading.Thread(target=stalled_upload, args=(server.port, t0, answers))
                   for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(0.5)
        grown = request_counts(server.url) - before
    finally:
        server.stop()
    out = sys.stdout.write
    out(f"\n{args.clients} stalled uploads, TITOK_BODY_TIMEOUT_S={args.body_timeout:g}\n\n")
    out("| answer | count |\n|---|---|\n")
    for status, n in Counter(a for a, _ in answers).most_common():
        out(f"| {status} | {n} |\n")
    out(f"\nslowest answer {max(t for _, t in answers):.2f} s after the uploads started\n\n")
    out("| titok_requests_total grew by | count |\n|---|---|\n")
    for labels, n in sorted(grown.items()):
        out(f"| {labels} | {n:g} |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
