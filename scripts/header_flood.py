"""A header flood against a fresh service: one request with a huge header, then unterminated ones, /healthz meanwhile.

Prints, for the huge header: what the server answered, the bytes it took before answering or closing, the
server's CPU seconds and the slowest /healthz (probed every 50 ms) while it lasted; for N connections that each
send up to 100 MB of one header line and never end it: the server's RSS before and after; and the rate of
plain requests (GET /healthz and POST /encode of a small PNG, one connection, one at a time), with `--compare`
beside the same app on uvicorn's h11 parser and on its plain httptools parser (no head limit), in interleaved
slices.
Run it from a checkout's root (`python scripts/header_flood.py`); `cd /work/main && python /path/to/this/file`
measures that checkout's service instead. Measures only.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
from PIL import Image

from titok.bench.bench import Server
from titok.settings import DEFAULT_MODEL_PATH

CHUNK = b"a" * 65536


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def send_header(port: int, total: int, finish: bool = True) -> tuple[int, bytes]:
    """Send one header line of up to `total` bytes, ended (`finish`) or not; (bytes sent before the server
    answered or closed, the first line of its answer)."""
    sent, answer = 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: ")
        sock.setblocking(False)
        try:
            while sent < total:
                try:
                    sent += sock.send(CHUNK)
                    continue
                except BlockingIOError:  # the server is not reading: has it answered, or closed?
                    pass
                try:
                    answer = sock.recv(65536)
                    break  # an answer, or b"": closed
                except BlockingIOError:
                    time.sleep(0.001)
            sock.setblocking(True)
            if sent >= total and finish:
                sock.sendall(b"\r\n\r\n")
            if finish or answer:
                while part := sock.recv(65536):
                    answer += part
        except (BrokenPipeError, ConnectionResetError):
            pass
    return sent, answer.split(b"\r\n", 1)[0]


class Probe(threading.Thread):
    """GET /healthz every 50 ms; the slowest answer since the last reset."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.slowest, self.failed, self.stop = url, 0.0, 0, threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    client.get(f"{self.url}/healthz")
                except httpx.TransportError:
                    self.failed += 1
                self.slowest = max(self.slowest, time.perf_counter() - t0)
                self.stop.wait(0.05)


def rate(client: httpx.Client, request: dict, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        assert client.request(**request).status_code == 200
        n += 1
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=64, help="size of the huge header, MB")
    p.add_argument("--open", type=int, default=4, help="unterminated headers sent at once")
    p.add_argument("--open-mb", type=float, default=100, help="the most each of them sends, MB")
    p.add_argument("--seconds", type=float, default=5, help="seconds for each plain request rate")
    p.add_argument("--compare", action="store_true",
                   help="also measure the rates of the same app served by uvicorn's h11 and plain httptools parsers")
    args = p.parse_args(argv)
    out = sys.stdout.write
    server, others = Server(DEFAULT_MODEL_PATH), []
    try:
        probe = Probe(server.url)
        probe.start()
        time.sleep(0.5)
        probe.slowest = 0.0
        cpu0, t0 = cpu_seconds(server.proc.pid), time.perf_counter()
        sent, answer = send_header(server.port, int(args.mb * 1e6))
        seconds, cpu = time.perf_counter() - t0, cpu_seconds(server.proc.pid) - cpu0
        time.sleep(0.2)
        out(f"{args.mb:g} MB header: answer {answer.decode('latin-1') or '(connection closed)'!r} after "
            f"{sent / 1e6:.2f} MB sent, {seconds:.2f} s; server CPU {cpu:.2f} s; slowest /healthz "
            f"{probe.slowest * 1000:.0f} ms ({probe.failed} failed)\n")
        rss0 = server.rss_mb()
        threads = [threading.Thread(target=send_header, args=(server.port, int(args.open_mb * 1e6), False))
                   for _ in range(args.open)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out(f"{args.open} x unterminated {args.open_mb:g} MB headers: RSS {rss0:.0f} MB before, "
            f"{server.rss_mb():.0f} MB after, peak {server.rss_mb('VmHWM'):.0f} MB\n")
        probe.stop.set()
        buf = io.BytesIO()
        Image.new("RGB", (128, 128), (200, 30, 30)).save(buf, "PNG")
        requests = {"GET /healthz": {"method": "GET", "url": "/healthz"},
                    "POST /encode": {"method": "POST", "url": "/encode", "content": buf.getvalue(),
                                     "headers": {"content-type": "image/png"}}}
        urls = {"this service": server.url}
        if args.compare:
            for parser in ("h11", "httptools"):
                others.append(other_server(parser))
                urls[f"the same app on uvicorn's {parser}"] = f"http://127.0.0.1:{others[-1][1]}"
        rates = {(u, r): 0.0 for u in urls for r in requests}
        rounds = max(1, round(args.seconds))
        for _ in range(rounds):  # interleaved one-second slices: the machine's noise hits both alike
            for name, url in urls.items():
                with httpx.Client(base_url=url, timeout=60) as client:
                    for label, request in requests.items():
                        rates[name, label] += rate(client, request, 1.0) / rounds
        for name in urls:
            out(f"{name}, one connection, one request at a time: "
                + ", ".join(f"{label} {rates[name, label]:.1f}/s" for label in requests) + "\n")
    finally:
        server.stop()
        for proc, _ in others:
            proc.terminate()
            proc.wait(60)
    return 0


def other_server(parser: str) -> tuple[subprocess.Popen, int]:
    """The same app under one of uvicorn's own parsers ("h11" or "httptools", neither with our head count)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "titok.server.app:build_app",
                             "--http", parser, "--port", str(port), "--log-level", "warning"],
                            env={**os.environ, "TITOK_MODEL_PATH": str(DEFAULT_MODEL_PATH)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(3000):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return proc, port
        except httpx.TransportError:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit(f"the {parser} server did not start")


if __name__ == "__main__":
    sys.exit(main())
