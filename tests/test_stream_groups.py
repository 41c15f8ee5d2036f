"""The streamed grouping gives exactly the groups of the pair search followed by grouping the pairs."""

from __future__ import annotations

import numpy as np
import pytest
from brute_force import brute_force_pairs
from hypothesis import given, settings
from hypothesis import strategies as st

from imagesieve.matching.groups import best_of_components, group_stars
from imagesieve.matching.near_search import popcount64
from imagesieve.matching.stream_groups import Confirm, chain_keepers, near_keepers, nearest_in, star_keepers


def clustered_codes(seed: int, n: int, centres: int, max_flips: int) -> np.ndarray:
    """Codes near a few centres (many pairs, chains and overlapping stars), as real pHashes cluster."""
    rng = np.random.default_rng(seed)
    centre = rng.integers(0, 2**63, centres, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    codes = centre[rng.integers(0, centres, n)]
    for k in range(n):
        for bit in rng.choice(64, rng.integers(0, max_flips + 1), replace=False):
            codes[k] ^= np.uint64(1) << np.uint64(bit)
    return codes


def pairs_of(codes: np.ndarray, t: int, flipped: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    pairs = brute_force_pairs(codes, t)
    if flipped is not None:
        pairs |= {(min(a, b), max(a, b)) for a, b in brute_force_pairs(codes, t, other=flipped) if a != b}
    ij = np.array(sorted(pairs), np.int64).reshape(-1, 2)
    return ij[:, 0], ij[:, 1]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 300), centres=st.integers(1, 20), t=st.integers(0, 14),
       flip=st.booleans(), small=st.sampled_from([4, 16, 1 << 15]))
def test_stars_and_chains_equal_grouping_every_pair(seed, n, centres, t, flip, small):
    """`small` below n: batches probed against the index, the open rest decided recursively."""
    codes = clustered_codes(seed, n, centres, max_flips=12)
    flipped = clustered_codes(seed + 1, n, centres, max_flips=12) if flip else None
    rank = np.random.default_rng(seed).permutation(n)
    i, j = pairs_of(codes, t, flipped)
    assert (star_keepers(codes, t, rank, flipped, threads=2, small=small) == group_stars(n, i, j, rank)).all()
    assert (chain_keepers(codes, t, rank, flipped, small=small) == best_of_components(n, i, j, rank)).all()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 200), refs=st.integers(1, 100), t=st.integers(0, 14),
       flip=st.booleans())
def test_nearest_reference_is_the_nearest_within_the_threshold(seed, n, refs, t, flip):
    codes = clustered_codes(seed, n, 5, max_flips=10)
    base = clustered_codes(seed, refs, 5, max_flips=10)
    base_flipped = clustered_codes(seed + 7, refs, 5, max_flips=10) if flip else None
    found = nearest_in(codes, base, t, base_flipped, threads=2)
    for x in range(n):
        d = popcount64(codes[x] ^ base)
        if base_flipped is not None:
            d = np.minimum(d, popcount64(codes[x] ^ base_flipped))
        if d.min() > t:
            assert found[x] == -1
        else:
            assert found[x] >= 0 and d[found[x]] == d.min()


def test_a_million_copies_of_one_image_need_no_pairs():
    """Dense data: one kept image, every other a duplicate of it (the pair search would hold 5e11 pairs)."""
    n = 1_000_000
    codes = np.full(n, 0x0123456789ABCDEF, np.uint64) ^ (np.arange(n, dtype=np.uint64) % np.uint64(8))
    keeper = star_keepers(codes, 10, np.arange(n))
    assert (keeper == 0).all()


@pytest.mark.parametrize("chaining", [False, True])
@pytest.mark.parametrize("max_pairs", [0, None])
def test_the_pair_search_and_the_streamed_grouping_agree(chaining, max_pairs):
    """`near_keepers` groups from the pairs within its budget, else streamed: the same groups either way."""
    codes = clustered_codes(3, 2_000, 40, max_flips=10)
    flipped = clustered_codes(4, 2_000, 40, max_flips=10)
    rank = np.random.default_rng(0).permutation(2_000)
    expected = (chain_keepers if chaining else star_keepers)(codes, 10, rank, flipped)
    assert (near_keepers(codes, 10, rank, flipped, chaining, max_pairs=max_pairs) == expected).all()


def confirmed_pairs(codes, t, second, within, flipped=None, second_flipped=None) -> tuple[np.ndarray, np.ndarray]:
    """Every pair by brute force under the pair rule with a second code: both distances together within."""
    found = set()
    for a, b in brute_force_pairs(codes, t):
        if popcount64(codes[a] ^ codes[b]) + popcount64(second[a] ^ second[b]) <= within:
            found.add((a, b))
    if flipped is not None:
        for a, b in brute_force_pairs(codes, t, other=flipped):
            if a != b and popcount64(codes[a] ^ flipped[b]) + popcount64(second[a] ^ second_flipped[b]) <= within:
                found.add((min(a, b), max(a, b)))
    ij = np.array(sorted(found), np.int64).reshape(-1, 2)
    return ij[:, 0], ij[:, 1]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 300), centres=st.integers(1, 20), t=st.integers(0, 14),
       within=st.integers(0, 30), flip=st.booleans(), small=st.sampled_from([4, 16, 1 << 15]))
def test_a_second_code_gives_the_groups_of_the_pairs_it_confirms(seed, n, centres, t, within, flip, small):
    """Stars, chains and the pair search, with a second code each pair must agree on: exactly the groups
    of the pairs that pass both (brute force)."""
    codes = clustered_codes(seed, n, centres, max_flips=12)
    second = clustered_codes(seed + 2, n, centres, max_flips=12)
    flipped = clustered_codes(seed + 1, n, centres, max_flips=12) if flip else None
    second_flipped = clustered_codes(seed + 3, n, centres, max_flips=12) if flip else None
    confirm = Confirm(second, second_flipped, within)
    rank = np.random.default_rng(seed).permutation(n)
    i, j = confirmed_pairs(codes, t, second, within, flipped, second_flipped)
    stars, chains = group_stars(n, i, j, rank), best_of_components(n, i, j, rank)
    assert (star_keepers(codes, t, rank, flipped, threads=2, small=small, confirm=confirm) == stars).all()
    assert (chain_keepers(codes, t, rank, flipped, small=small, confirm=confirm) == chains).all()
    assert (near_keepers(codes, t, rank, flipped, confirm=confirm) == stars).all()
    assert (near_keepers(codes, t, rank, flipped, chaining=True, confirm=confirm) == chains).all()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 200), refs=st.integers(1, 100), t=st.integers(0, 14),
       within=st.integers(0, 30))
def test_nearest_reference_with_a_second_code(seed, n, refs, t, within):
    codes, second = clustered_codes(seed, n, 5, max_flips=10), clustered_codes(seed + 1, n, 5, max_flips=10)
    base, base_second = clustered_codes(seed + 2, refs, 5, max_flips=10), clustered_codes(seed + 3, refs, 5, 10)
    found = nearest_in(codes, base, t, None, threads=2, confirm=Confirm(base_second, None, within),
                       query_second=second)
    for x in range(n):
        d = popcount64(codes[x] ^ base)
        ok = (d <= t) & (d + popcount64(second[x] ^ base_second) <= within)
        if not ok.any():
            assert found[x] == -1
        else:
            assert ok[found[x]] and d[found[x]] == d[ok].min()
