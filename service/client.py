"""`titok encode FILE...` and `titok decode --tokens ... --out PNG`: small clients of a running service."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


def _fail(message: str) -> int:
    sys.stderr.write(f"error: {message}\n")
    return 1


def _error_message(r: httpx.Response) -> str:
    try:
        return f"{r.status_code} {r.json()['error']['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{r.status_code} {r.text[:200]}"


def encode_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="titok encode", description="Send images to a running service; print the "
                                "token ids as JSON (one sequence per file, in order).")
    p.add_argument("files", nargs="+", type=Path, help="image files (PNG, JPEG, WebP, GIF, BMP, TIFF)")
    p.add_argument("--url", default=DEFAULT_URL, help=f"service base URL (default {DEFAULT_URL})")
    p.add_argument("--resize", choices=("crop", "pad", "stretch"), default="crop")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds")
    args = p.parse_args(argv)
    try:
        files = [("images", (f.name, f.read_bytes(), "application/octet-stream")) for f in args.files]
    except OSError as e:
        return _fail(f"cannot read {e.filename}: {e.strerror}")
    try:
        r = httpx.post(f"{args.url.rstrip('/')}/encode", params={"resize": args.resize}, files=files,
                       timeout=args.timeout)
    except httpx.HTTPError as e:
        return _fail(f"cannot reach {args.url}: {e}")
    if r.status_code != 200:
        return _fail(_error_message(r))
    body = r.json()
    body["files"] = [str(f) for f in args.files]
    sys.stdout.write(json.dumps(body) + "\n")
    return 0


def _load_tokens(spec: str) -> Any:
    """JSON text or @file; a bare list, {"tokens": ...}, or `titok encode` output."""
    text = Path(spec[1:]).read_text() if spec.startswith("@") else spec
    doc = json.loads(text)
    return doc["tokens"] if isinstance(doc, dict) and "tokens" in doc else doc


def decode_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="titok decode", description="Send token ids to a running service and save "
                                "the image(s) as PNG. Several sequences are saved as OUT-0.png, OUT-1.png, ...")
    p.add_argument("--tokens", required=True, help="JSON list of ids, a list of lists, or @FILE (e.g. encode output)")
    p.add_argument("--out", required=True, type=Path, help="PNG file to write")
    p.add_argument("--url", default=DEFAULT_URL, help=f"service base URL (default {DEFAULT_URL})")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds")
    args = p.parse_args(argv)
    try:
        tokens = _load_tokens(args.tokens)
    except (OSError, ValueError) as e:
        return _fail(f"cannot read the tokens: {e}")
    nested = isinstance(tokens, list) and bool(tokens) and isinstance(tokens[0], list)
    if nested and len(tokens) == 1:
        tokens, nested = tokens[0], False
    try:
        r = httpx.post(f"{args.url.rstrip('/')}/decode", json={"tokens": tokens}, timeout=args.timeout)
    except httpx.HTTPError as e:
        return _fail(f"cannot reach {args.url}: {e}")
    if r.status_code != 200:
        return _fail(_error_message(r))
    pngs = [base64.b64decode(s) for s in r.json()["images"]] if nested else [r.content]
    outs = [args.out] if not nested else [args.out.with_name(f"{args.out.stem}-{i}.png") for i in range(len(pngs))]
    for path, png in zip(outs, pngs, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        sys.stdout.write(f"{path}\n")
    return 0
