"""`titok encode FILE...` and `titok decode --tokens ... --out PNG`: the command line on top of TitokClient."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from ..core.codec import RESIZE_MODES
from .core import DEFAULT_URL, TargetTokens, TitokError
from .sync import TitokClient


def _fail(message: str) -> int:
    sys.stderr.write(f"error: {message}\n")
    return 1


def _explain(e: TitokError) -> str:
    return e.message if e.status is None else f"{e.status} {e.message}"


def _seconds(text: str) -> float:
    """argparse `type` for --timeout: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=DEFAULT_URL, help=f"service base URL (default {DEFAULT_URL})")
    p.add_argument("--api-key", help="API key, when the service needs one (default: $TITOK_API_KEY)")
    p.add_argument("--timeout", type=_seconds, default=120.0, help="seconds to wait for each answer (default 120)")


def encode_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="titok encode", description="Send images to a running service; print "
                                "/encode's JSON answer (model, content_hash, num_tokens, codebook_size, tokens: one "
                                "sequence per file, in order) plus the files.")
    p.add_argument("files", nargs="+", type=Path, help="image files (PNG, JPEG, WebP, GIF, BMP, TIFF)")
    p.add_argument("--resize", choices=RESIZE_MODES, default="crop",
                   help="fitting the image to the model's square: crop (default) scales the shorter side and "
                        "keeps the centre; pad scales the longer side and pads with black; stretch scales both")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--num-tokens", type=int, metavar="K",
                        help="a prefix-decodable model only: each image's first K tokens (see README, Token budgets)")
    budget.add_argument("--target-psnr", type=float, metavar="DB",
                        help="a prefix-decodable model only: each image's fewest tokens whose reconstruction reaches "
                             "DB of PSNR (adds psnr, target_psnr and reached to the answer)")
    _common(p)
    args = p.parse_args(argv)
    try:
        with TitokClient(args.url, api_key=args.api_key, timeout=args.timeout) as client:
            tokens = client.encode(args.files, resize=args.resize, num_tokens=args.num_tokens,
                                   target_psnr=args.target_psnr)
            server = client.server
    except OSError as e:
        return _fail(f"cannot read {e.filename}: {e.strerror}")
    except TitokError as e:
        return _fail(_explain(e))
    # /encode's own answer (the model's content hash included), plus the files in order: /decode and
    # `titok decode --tokens @FILE` take it as it is, and refuse it on another model.
    body: dict[str, Any] = {"model": server.name, "content_hash": server.content_hash,
                            "num_tokens": args.num_tokens or server.num_tokens, "codebook_size": server.codebook_size}
    if isinstance(tokens, TargetTokens):  # /encode?target_psnr='s own fields: each image its own length
        body.update(num_tokens=tokens.num_tokens.tolist(), tokens=[t.tolist() for t in tokens.tokens],
                    psnr=tokens.psnr.tolist(), target_psnr=args.target_psnr, reached=tokens.reached.tolist())
    else:
        body["tokens"] = tokens.tolist()
    body["files"] = [str(f) for f in args.files]
    sys.stdout.write(json.dumps(body) + "\n")
    return 0


def _load_tokens(spec: str) -> tuple[Any, str | None]:
    """JSON text or @file: a bare list, or {"tokens": ..., "content_hash"?: ...} (`titok encode` output, /encode's
    answer, /decode's body) -> (the tokens, the content hash they came with, if any)."""
    text = Path(spec[1:]).read_text() if spec.startswith("@") else spec
    doc = json.loads(text)
    if isinstance(doc, dict) and "tokens" in doc:
        claim = doc.get("content_hash")
        return doc["tokens"], claim if isinstance(claim, str) else None
    return doc, None


def decode_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="titok decode", description="Send token ids to a running service and save "
                                "the image(s) as PNG. Several sequences are saved as OUT-0.png, OUT-1.png, ...")
    p.add_argument("--tokens", required=True, help="JSON list of ids, a list of lists, or @FILE (e.g. encode output)")
    p.add_argument("--out", required=True, type=Path, help="PNG file to write")
    _common(p)
    args = p.parse_args(argv)
    try:
        tokens, model_hash = _load_tokens(args.tokens)
        with TitokClient(args.url, api_key=args.api_key, timeout=args.timeout) as client:
            images = client.decode(tokens, model_hash=model_hash)
    except (OSError, ValueError) as e:
        return _fail(f"cannot read the tokens: {e}")
    except TitokError as e:
        return _fail(_explain(e))
    outs = [args.out] if len(images) == 1 else [args.out.with_name(f"{args.out.stem}-{i}.png")
                                                 for i in range(len(images))]
    for path, image in zip(outs, images, strict=True):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path, format="PNG")
        except OSError as e:
            return _fail(f"cannot write {path}: {e.strerror or e}")
        sys.stdout.write(f"{path}\n")
    return 0
