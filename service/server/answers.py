"""What every model answer says about itself: the served model's fingerprint and where the time went.

Timing is given twice over one measurement: the standard `Server-Timing` header (browsers' developer
tools and many proxies show it) and one plain number per `X-...-Ms` header, which a program reads
without parsing a list.
"""

from __future__ import annotations

import re
import time

from ..errors import InvalidRequest, ModelMismatch
from .batcher import Timing
from .schemas import MODEL_HASH

MIN_HASH_PREFIX = 12  # the short form /info and logs show; shorter prefixes could match another model
_HASH = re.compile(f"[0-9a-f]{{{MIN_HASH_PREFIX},64}}")  # a SHA-256 in hex, or a prefix of it


def model_headers(content_hash: str, timing: Timing, started: float, codec_s: float) -> dict[str, str]:
    """Headers of a 200 from /encode or /decode; `started` is the handler's perf_counter() at entry."""
    ms = {"codec": codec_s * 1000, "queue": timing.queue_s * 1000, "model": timing.model_s * 1000,
          "total": (time.perf_counter() - started) * 1000}
    return {
        MODEL_HASH: content_hash,
        "X-Queue-Time-Ms": f"{ms['queue']:.2f}",
        "X-Inference-Time-Ms": f"{ms['model']:.2f}",
        "X-Batch-Size": ", ".join(str(b) for b in timing.batch_sizes),
        "X-Total-Time-Ms": f"{ms['total']:.2f}",
        "Server-Timing": ", ".join(f"{name};dur={v:.2f}" for name, v in ms.items()),
    }


def check_model(claims: dict[str, str | None], served_hash: str, served_name: str) -> None:
    """Refuse tokens that name another model (409); each claim is where it came from -> the hash it gave.

    A claim that is no content hash at all (not hex, shorter than MIN_HASH_PREFIX, longer than a SHA-256)
    is an invalid request (422), whatever the served model.
    """
    for where, claim in claims.items():
        if claim is not None and not _HASH.fullmatch(claim.strip(" \t").lower()):  # "" too
            shown = claim if len(claim) <= 80 else claim[:80] + "..."  # a hostile claim is not echoed whole
            raise InvalidRequest(f"{where} is {shown!r}, not a content hash: send the model's hash from /encode "
                                 f"(64 hex digits) or a prefix of at least {MIN_HASH_PREFIX} of them")
    if not served_hash:  # an artifact written before fingerprints: nothing to compare with
        return
    for where, claim in claims.items():
        claim = (claim or "").strip(" \t").lower()
        if claim and not served_hash.startswith(claim):
            shown = claim if len(claim) <= 80 else claim[:80] + "..."  # a hostile header is not echoed whole
            raise ModelMismatch(f"the tokens were made by the model with content hash {shown} ({where}), but this "
                                f"service serves {served_name} with content hash {served_hash}; decode them with "
                                f"the model that made them (a hash prefix must have at least {MIN_HASH_PREFIX} "
                                "characters)")
