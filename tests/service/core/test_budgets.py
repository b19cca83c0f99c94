"""The budget policy and the target-PSNR search, against brute force over made-up PSNR curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from titok.core.budgets import (
    MAX_TARGET_PSNR,
    Budget,
    TargetSearch,
    check_budget,
    max_search_decodes,
    search_target,
)
from titok.core.engine import psnr
from titok.errors import InvalidBudget, NotPrefixDecodable


def run(curves: np.ndarray, target: float) -> tuple[TargetSearch, list[int]]:
    """Drive a search over curves (B, K) of PSNR at k = 1..K; returns it and each image's decode count."""
    search = TargetSearch(curves[:, -1], curves.shape[1], target)
    counts = [1] * len(curves)  # the decode at K
    while not search.done:
        for i, k in search.pending().items():
            counts[i] += 1
            search.record(i, k, float(curves[i, k - 1]))
    return search, counts


@pytest.mark.parametrize("max_tokens", [1, 2, 5, 8, 32, 100, 256])
def test_the_search_finds_the_fewest_tokens_within_log2_k_plus_1_decodes(max_tokens: int) -> None:
    rng = np.random.default_rng(max_tokens)
    curves = np.cumsum(rng.random((50, max_tokens)) * 2, axis=1) + 10  # rising PSNR curves
    for target in rng.uniform(curves.min(), curves.max() + 5, 20):
        search, counts = run(curves, float(target))
        for i, curve in enumerate(curves):
            reaching = np.flatnonzero(curve >= target)
            if len(reaching):
                assert search.reached[i] and search.num_tokens[i] == reaching[0] + 1
                assert search.psnr[i] == curve[reaching[0]]
            else:
                assert not search.reached[i] and search.num_tokens[i] == max_tokens
                assert search.psnr[i] == curve[-1]
        assert max(counts) <= max_search_decodes(max_tokens) == (math.ceil(math.log2(max_tokens)) + 1
                                                                 if max_tokens > 1 else 1)


def test_a_curve_that_dips_still_gets_a_k_that_reaches_the_target() -> None:
    curves = np.array([[10.0, 30.0, 12.0, 14.0, 20.0, 22.0, 25.0, 40.0]])  # not monotone: exactness is lost
    search, _ = run(curves, 21.0)
    assert search.reached[0] and curves[0, search.num_tokens[0] - 1] >= 21.0


def test_search_target_batches_each_rounds_equal_lengths_into_one_call() -> None:
    calls: list[tuple[int, ...]] = []
    images = np.zeros((6, 4, 4, 3), np.uint8)
    tokens = np.tile(np.arange(16), (6, 1))

    def decode(prefix: np.ndarray) -> np.ndarray:  # k tokens: every pixel off by 8 * (16 - k): PSNR rises with k
        calls.append(prefix.shape)
        return np.full((len(prefix), 4, 4, 3), 8 * (16 - prefix.shape[1]), np.uint8)

    target = float(psnr(decode(tokens[:1, :11]), images[:1])[0])  # reached first at k = 11
    calls.clear()
    search = search_target(decode, images, tokens, np.full(6, 200.0), target)
    assert search.num_tokens.tolist() == [11] * 6 and search.reached.all()
    assert all(shape[0] == 6 for shape in calls)  # all six images wait for the same k each round: one call
    assert len(calls) == math.ceil(math.log2(16))


def test_budget_checks() -> None:
    assert check_budget(None, None, 8, False) == Budget()
    assert check_budget(3, None, 8, True) == Budget(3, None)
    assert check_budget(None, 30, 8, True).describe() == "target_psnr=30"
    assert Budget(5).describe() == "num_tokens=5" and Budget().describe() == "all"
    for bad in (0, 9, -1, 2.5, True, "3"):
        with pytest.raises(InvalidBudget, match=r"num_tokens .*\[1, 8\]"):
            check_budget(bad, None, 8, True)  # type: ignore[arg-type]
    for bad in (0.0, -1.0, math.nan, math.inf, MAX_TARGET_PSNR + 1):
        with pytest.raises(InvalidBudget, match=r"\(0, 100\]"):
            check_budget(None, bad, 8, True)
    with pytest.raises(InvalidBudget, match="not both"):
        check_budget(2, 20.0, 8, True)
    with pytest.raises(NotPrefixDecodable, match=r"num_tokens needs a prefix-decodable model .*; m is not"):
        check_budget(2, None, 8, False, "m")
