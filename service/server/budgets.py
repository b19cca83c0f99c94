"""Token budgets at the HTTP door: /encode's `num_tokens` and `target_psnr` (see titok.core.budgets).

Every model call goes through the batcher: the encode (or, for a target, the encode with its decode at
K in one call, the `roundtrip` op), then each round of the target search as decode items of their own
lengths. The batcher groups items of one length into one batch, so the prefix decodes of one round are
batched across the images of a request and across concurrent requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request

from ..core.budgets import MAX_TARGET_PSNR, Budget, TargetSearch, check_budget, refuse_prefixes
from ..core.engine import psnr
from ..errors import InvalidBudget
from .batcher import Timing

BUDGET_PARAMS = ("num_tokens", "target_psnr")
# OpenAPI text of the two query parameters; openapi.tighten_budgets fills in K or drops them for a fixed-length model
BUDGET_PARAMETERS = [
    {"name": "num_tokens", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1},
     "description": "Prefix-decodable models only: return each image's first k tokens (1 <= k <= K). Not with "
                    "target_psnr."},
    {"name": "target_psnr", "in": "query", "required": False,
     "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TARGET_PSNR},
     "description": "Prefix-decodable models only: for each image, the fewest tokens whose reconstruction reaches "
                    "this PSNR (dB) against the model's input; an image that misses it with all K keeps K and is "
                    "flagged in `reached`. Costs at most ceil(log2 K) + 1 decodes per image. JSON answers only. "
                    "Not with num_tokens."},
]


def budget_from_query(request: Request, engine: Any) -> Budget:
    """The request's `num_tokens` / `target_psnr`, checked against the served model: 422 naming the allowed
    range, or saying why the model takes none. Read here rather than declared on the route, so that every
    malformed value (a float, a list, NaN) gets the same message with the range; OpenAPI declares them
    (see openapi.tighten_budgets)."""
    values: dict[str, str | None] = {}
    for name in BUDGET_PARAMS:
        given = request.query_params.getlist(name)
        if len(given) > 1:
            raise InvalidBudget(f"{name} is given {len(given)} times; give it once")
        values[name] = given[0] if given else None
    max_tokens = engine.num_tokens
    prefix = getattr(engine, "prefix_decodable", False)
    asked = [name for name in BUDGET_PARAMS if values[name] is not None]
    if asked and not prefix:  # before the value is read: every value would be refused
        refuse_prefixes(engine.name, max_tokens, asked[0])
    num_tokens: int | None = None
    target: float | None = None
    if values["num_tokens"] is not None:
        try:
            num_tokens = int(_plain(values["num_tokens"]))
        except ValueError:
            raise InvalidBudget(f"num_tokens is {_shown(values['num_tokens'])}; it must be an integer in "
                                f"[1, {max_tokens}]") from None
    if values["target_psnr"] is not None:
        try:
            target = float(_plain(values["target_psnr"]))
        except ValueError:
            raise InvalidBudget(f"target_psnr is {_shown(values['target_psnr'])}; it must be a number of dB in "
                                f"(0, {MAX_TARGET_PSNR:g}]") from None
    return check_budget(num_tokens, target, max_tokens, prefix, engine.name)


def _plain(value: str) -> str:
    """`value` when it is written as the schema's integer or number is; ValueError for what Python's int() and
    float() take beyond that (digit separators "1_0", surrounding spaces, non-ASCII digits)."""
    if not value.isascii() or "_" in value or value.strip() != value:
        raise ValueError(value)
    return value


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "...")


@dataclass
class Encoded:
    """What /encode answers under a budget: per image its tokens, their count, and (when known) its PSNR."""

    tokens: list[np.ndarray]  # int64 (k_i,) each
    num_tokens: list[int]
    psnr: list[float] | None
    reached: list[bool] | None
    timing: Timing


def merge_timing(parts: list[Timing]) -> Timing:
    """Several batcher trips of one request, in order: their queue and model times add up."""
    return Timing(queue_s=sum(t.queue_s for t in parts), model_s=sum(t.model_s for t in parts),
                  batch_sizes=tuple(b for t in parts for b in t.batch_sizes))


async def encode_with_budget(batcher: Any, pool: Any, images: list[np.ndarray], budget: Budget, quality: bool,
                             remaining: Callable[[], float],
                             guard: Callable[[Awaitable[Any]], Awaitable[Any]]) -> Encoded:
    """Encode uint8 (S, S, 3) images under `budget` (which is set); `remaining()` gives the seconds left of the
    request's timeout (raising once it has passed), `guard` wraps each wait (e.g. to stop when the client goes),
    `pool` runs the PSNR arithmetic off the event loop."""
    loop = asyncio.get_running_loop()
    stacked = np.stack(images)
    timings: list[Timing] = []

    async def decode(prefixes: list[np.ndarray]) -> np.ndarray:
        pixels, timing = await guard(batcher.submit_timed("decode", prefixes, remaining()))
        timings.append(timing)
        return np.stack(pixels)

    async def measure(rows: list[int], prefixes: list[np.ndarray]) -> np.ndarray:
        pixels = await decode(prefixes)
        return await loop.run_in_executor(pool, psnr, pixels, stacked[rows])

    if budget.num_tokens is not None:
        k = budget.num_tokens
        full, timing = await guard(batcher.submit_timed("encode", images, remaining()))
        timings.append(timing)
        tokens = [t[:k] for t in full]
        measured = None
        if quality:
            measured = [round(float(p), 3) for p in await measure(list(range(len(tokens))), tokens)]
        return Encoded(tokens, [k] * len(tokens), measured, None, merge_timing(timings))

    assert budget.target_psnr is not None
    records, timing = await guard(batcher.submit_timed("roundtrip", images, remaining()))
    timings.append(timing)
    full_tokens = np.stack([r["tokens"] for r in records])
    search = TargetSearch(np.array([float(r["psnr"]) for r in records]), full_tokens.shape[1], budget.target_psnr)
    while not search.done:  # one batcher trip per round: the batcher groups the round's lengths
        pending = search.pending()
        rows = list(pending)
        for i, p in zip(rows, await measure(rows, [full_tokens[i, :pending[i]] for i in rows]), strict=True):
            search.record(i, pending[i], float(p))
    counts = [int(k) for k in search.num_tokens]
    return Encoded([full_tokens[i, :k] for i, k in enumerate(counts)], counts,
                   [round(float(p), 3) for p in search.psnr], [bool(r) for r in search.reached],
                   merge_timing(timings))
