"""Token budgets for prefix-decodable models: a fixed number of tokens, or the fewest that reach a target PSNR.

A model whose meta.json says `prefix_decodable: true` orders its K tokens coarse to fine: the first k of
an encoding decode to a picture whose quality rises with k. A budget is one of

- `num_tokens=k` (1 <= k <= K): every image keeps its first k tokens;
- `target_psnr=dB` (0 < dB <= MAX_TARGET_PSNR): each image keeps the fewest tokens whose reconstruction
  reaches the target against the model's input (the image as resized to the model's size). An image that
  does not reach it with all K tokens keeps K and is flagged (`reached` false).

The target search (`TargetSearch`) is a binary search over k per image: the PSNR at K comes with the
encode (one decode), then at most ceil(log2 K) more decodes of prefixes. It is exact when PSNR does not
fall as k grows (what tail-drop training gives; a random-weight model need not), and deterministic: the
same image and target visit the same k. Callers batch each round's decodes across images and requests;
the HTTP door through its batcher (which groups items by length), the dataset job by grouping rows.

Targets: NaN, infinities, 0 and negatives are refused (PSNR of uint8 images is never below 0 dB, so a
target <= 0 says nothing); above MAX_TARGET_PSNR is refused too: an identical copy measures ~148 dB only
through the MSE floor, and no tokenizer comes near 100 dB, so such a target can only mean a mistake.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import InvalidBudget, NotPrefixDecodable
from .quality import psnr

MAX_TARGET_PSNR = 100.0  # dB; see the module docstring


@dataclass(frozen=True)
class Budget:
    """One request's (or one job's) policy: at most one of `num_tokens` and `target_psnr` is set."""

    num_tokens: int | None = None
    target_psnr: float | None = None

    @property
    def is_set(self) -> bool:
        return self.num_tokens is not None or self.target_psnr is not None

    def describe(self) -> str:
        """'all', 'num_tokens=k' or 'target_psnr=dB': the policy as a dataset's metadata records it."""
        if self.num_tokens is not None:
            return f"num_tokens={self.num_tokens}"
        if self.target_psnr is not None:
            return f"target_psnr={self.target_psnr:g}"
        return "all"


def check_budget(num_tokens: int | None, target_psnr: float | None, max_tokens: int, prefix_decodable: bool,
                 model: str = "the model") -> Budget:
    """Validate a budget against a model of `max_tokens` (K) tokens; raises InvalidBudget or NotPrefixDecodable.

    num_tokens must be an int in [1, K]; target_psnr a finite float in (0, MAX_TARGET_PSNR] dB; not both. A
    fixed-length model refuses any budget first, whatever its value: naming a range it would then refuse whole
    misled (a hostile pass).
    """
    if (num_tokens is not None or target_psnr is not None) and not prefix_decodable:
        refuse_prefixes(model, max_tokens, "num_tokens" if num_tokens is not None else "target_psnr")
    if num_tokens is not None and target_psnr is not None:
        raise InvalidBudget("send num_tokens or target_psnr, not both: num_tokens fixes the length of every "
                            "sequence, target_psnr chooses it per image")
    if num_tokens is not None:
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int | np.integer):
            raise InvalidBudget(f"num_tokens must be an integer in [1, {max_tokens}], not {num_tokens!r}")
        if not 1 <= num_tokens <= max_tokens:
            raise InvalidBudget(f"num_tokens is {num_tokens}; it must be in [1, {max_tokens}] (the model's K)")
    if target_psnr is not None:
        if isinstance(target_psnr, bool) or not isinstance(target_psnr, int | float | np.floating):
            raise InvalidBudget(f"target_psnr must be a number of dB in (0, {MAX_TARGET_PSNR:g}], not {target_psnr!r}")
        if not math.isfinite(target_psnr) or not 0 < target_psnr <= MAX_TARGET_PSNR:
            raise InvalidBudget(f"target_psnr is {target_psnr}; it must be a finite number of dB in "
                                f"(0, {MAX_TARGET_PSNR:g}] (a reconstruction is never below 0 dB, and none "
                                f"comes near {MAX_TARGET_PSNR:g} dB)")
    return Budget(None if num_tokens is None else int(num_tokens), None if target_psnr is None else float(target_psnr))


def refuse_prefixes(model: str, max_tokens: int, what: str) -> None:
    """Raise NotPrefixDecodable: `what` needs a model that decodes prefixes of its tokens."""
    raise NotPrefixDecodable(f"{what} needs a prefix-decodable model (one trained with tail drop, whose first k "
                             f"tokens decode to a coarser picture); {model} is not: it encodes and decodes exactly "
                             f"{max_tokens} tokens per image")


class TargetSearch:
    """Per image, the fewest of K tokens whose decode reaches `target` dB: a binary search over k.

    Start from each image's PSNR with all K tokens (`full_psnr`, float (B,)). An image that misses the
    target keeps K; the others search [1, K]. Drive it in rounds: `pending()` gives {image: k} to decode
    next (at most one k per image), `record(image, k, psnr)` feeds each result back; when `done`, read
    `num_tokens` (int (B,)), `psnr` (float64 (B,), the PSNR at that k) and `reached` (bool (B,)).
    At most ceil(log2 K) rounds after the decode at K.
    """

    def __init__(self, full_psnr: np.ndarray, max_tokens: int, target: float) -> None:
        full_psnr = np.asarray(full_psnr, np.float64)
        self.target = float(target)
        self.reached = full_psnr >= self.target
        self.num_tokens = np.full(len(full_psnr), max_tokens, np.int64)  # the best k known to reach (or K)
        self.psnr = full_psnr.copy()
        self._lo = np.where(self.reached, 1, max_tokens)  # the answer is in [lo, num_tokens]
        self.decodes = 0  # prefix decodes recorded, over all images

    @property
    def done(self) -> bool:
        return bool((self._lo >= self.num_tokens).all())

    def pending(self) -> dict[int, int]:
        """{image index: the k to decode next} for every image still searching."""
        open_ = np.flatnonzero(self._lo < self.num_tokens)
        return {int(i): int((self._lo[i] + self.num_tokens[i]) // 2) for i in open_}

    def record(self, image: int, k: int, measured: float) -> None:
        """The PSNR (dB) of `image` decoded from its first `k` tokens, where k came from pending()."""
        self.decodes += 1
        if measured >= self.target:
            self.num_tokens[image], self.psnr[image] = k, measured
        else:
            self._lo[image] = k + 1


def max_search_decodes(max_tokens: int) -> int:
    """Decodes per image a target search costs at most, the one at K included: ceil(log2 K) + 1."""
    return math.ceil(math.log2(max_tokens)) + 1 if max_tokens > 1 else 1


def search_target(decode: Callable[[np.ndarray], np.ndarray], images: np.ndarray, tokens: np.ndarray,
                  full_psnr: np.ndarray, target: float) -> TargetSearch:
    """Run a TargetSearch to the end with a synchronous `decode` (int64 (n, k) -> uint8 (n, H, W, 3), one k).

    images: uint8 (B, H, W, 3), the model's input; tokens: int64 (B, K); full_psnr: float (B,) at K.
    Each round decodes the images waiting for the same k in one call.
    """
    search = TargetSearch(full_psnr, tokens.shape[1], target)
    while not search.done:
        by_length: dict[int, list[int]] = {}
        for i, k in search.pending().items():
            by_length.setdefault(k, []).append(i)
        for k, rows in sorted(by_length.items()):
            pixels = decode(np.ascontiguousarray(tokens[rows, :k]))
            for i, p in zip(rows, psnr(pixels, images[rows]), strict=True):
                search.record(i, k, float(p))
    return search


@dataclass(frozen=True)
class BudgetedTokens:
    """A batch encoded under a budget: tokens[i] int64 (k_i,); psnr float64 (B,) dB at k_i and reached bool (B,)
    with a target (else None)."""

    tokens: list[np.ndarray]
    psnr: np.ndarray | None = None
    reached: np.ndarray | None = None


@dataclass(frozen=True)
class TargetTokens:
    """The answer of `encode(..., target_psnr=dB)` (the client's and the in-process Tokenizer's): each image's
    fewest tokens reaching the target.

    tokens: N int64 arrays (k_i,), each the first k_i tokens of the image's encoding (what `decode` takes back);
    num_tokens: int64 (N,) the k_i; psnr: float64 (N,) dB at k_i; reached: bool (N,), False where the image
    missed the target with all K tokens (it then has K).
    """

    tokens: list[np.ndarray]
    num_tokens: np.ndarray
    psnr: np.ndarray
    reached: np.ndarray

    @classmethod
    def joined(cls, parts: list[TargetTokens]) -> TargetTokens:
        return cls([t for p in parts for t in p.tokens],
                   np.concatenate([p.num_tokens for p in parts]) if parts else np.empty(0, np.int64),
                   np.concatenate([p.psnr for p in parts]) if parts else np.empty(0, np.float64),
                   np.concatenate([p.reached for p in parts]) if parts else np.empty(0, bool))

    def __len__(self) -> int:
        return len(self.tokens)


def encode_with_budget(run: Callable[[str, np.ndarray], np.ndarray], images: np.ndarray,
                       budget: Budget) -> BudgetedTokens:
    """Encode uint8 (B, S, S, 3) under `budget` with a synchronous engine call `run(op, batch)` (Engine.run).

    No budget: all K tokens; num_tokens=k: the first k; target_psnr: the roundtrip (tokens and PSNR at K in one
    call), then search_target's prefix decodes, each round's equal lengths in one call.
    """
    if budget.target_psnr is not None:
        records = run("roundtrip", images)
        search = search_target(lambda t: run("decode", t), images, np.ascontiguousarray(records["tokens"]),
                               records["psnr"], budget.target_psnr)
        return BudgetedTokens([records["tokens"][i, :k] for i, k in enumerate(search.num_tokens)], search.psnr,
                              search.reached)
    tokens = run("encode", images)
    k = budget.num_tokens or tokens.shape[1]
    return BudgetedTokens(list(tokens[:, :k]))
