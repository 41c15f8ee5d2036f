"""Near-duplicate search finds exactly the pairs brute force finds, on random and real hashes."""

from __future__ import annotations

import numpy as np
import pytest
from brute_force import brute_force_pairs
from conftest import encode, photo_tiles
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import imagesieve.matching.near_search as ns
from imagesieve.matching.hashes import hash_image
from imagesieve.matching.near_search import near_pairs


@pytest.fixture(autouse=True)
def indexed_search_only(monkeypatch):
    """These tests check the multi-index search: keep small inputs off the exhaustive shortcut
    (which `test_hash_exactness.py` checks against this search)."""
    monkeypatch.setattr(ns, "EXHAUSTIVE_PAIRS", -1)


def planted(rng: np.random.Generator, n: int, t: int, k: int) -> np.ndarray:
    codes = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64)
    picks = rng.integers(0, n, size=k)
    flips = np.zeros(k, dtype=np.uint64)
    for a in range(k):
        for bit in rng.choice(64, size=int(rng.integers(0, t + 2)), replace=False):
            flips[a] |= np.uint64(1) << np.uint64(int(bit))
    return np.concatenate([codes, codes[picks] ^ flips])


def as_set(result) -> set[tuple[int, int]]:
    i, j, _ = result
    return set(zip(i.tolist(), j.tolist(), strict=True))


@pytest.mark.parametrize("t", [0, 1, 3, 6, 8, 10, 12, 16])
def test_self_join_equals_brute_force(t):
    codes = planted(np.random.default_rng(t), 1500, t, 300)
    i, j, d = near_pairs(codes, t)
    assert as_set((i, j, d)) == brute_force_pairs(codes, t)
    assert (i < j).all() and (d <= t).all()


@pytest.mark.parametrize("t", [0, 4, 10])
def test_cross_join_equals_brute_force(t):
    rng = np.random.default_rng(100 + t)
    query = planted(rng, 800, t, 200)
    other = np.concatenate([query[rng.integers(0, len(query), 100)] ^ np.uint64(5), planted(rng, 300, t, 0)])
    assert as_set(near_pairs(query, t, other=other)) == brute_force_pairs(query, t, other)


@pytest.mark.parametrize("m, t", [(1, 0), (2, 3), (3, 9), (4, 9), (7, 9), (10, 9), (7, 3), (5, 0)])
def test_every_block_count_is_exact(monkeypatch, m, t):
    monkeypatch.setattr(ns, "choose_split", lambda n, t: (ns.block_widths(m), ns.block_radii(m, t)))
    codes = planted(np.random.default_rng(m), 600, t, 200)
    assert as_set(near_pairs(codes, t)) == brute_force_pairs(codes, t)


@pytest.mark.parametrize("widths, radii, t", [([22, 20, 22], [3, 2, 3], 10), ([22, 19, 23], [3, 2, 3], 10),
                                               ([16, 30, 18], [-1, 5, 3], 9), ([40, 24], [1, 0], 2)])
def test_unequal_blocks_and_radii_are_exact(monkeypatch, widths, radii, t):
    """The pigeonhole holds for any widths and radii with sum(r + 1) = t + 1."""
    monkeypatch.setattr(ns, "choose_split", lambda n, t: (widths, radii))
    codes = planted(np.random.default_rng(sum(widths) + t), 1500, t, 500)
    assert as_set(near_pairs(codes, t)) == brute_force_pairs(codes, t)


def test_search_on_real_photo_hashes():
    tiles = photo_tiles()
    datas = [encode(t, "jpeg") for t in tiles]
    datas += [encode(np.asarray(Image.fromarray(t).resize((48, 48))), "jpeg", 60) for t in tiles[::3]]
    codes = np.array([hash_image(d, ("phash",), "x").values["phash"] for d in datas], dtype=np.uint64)
    for t in (4, 10, 14):
        assert as_set(near_pairs(codes, t)) == brute_force_pairs(codes, t)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=0, max_size=60), st.integers(0, 20))
def test_property_matches_brute_force(values, t):
    codes = np.array(values, dtype=np.uint64)
    codes = np.concatenate([codes, codes[: len(codes) // 2] ^ np.uint64(3)])  # guarantee near pairs
    assert as_set(near_pairs(codes, t)) == brute_force_pairs(codes, t)


def test_parallel_search_equals_serial():
    from imagesieve.executors.local import LocalExecutor

    pool = LocalExecutor(2)
    codes = planted(np.random.default_rng(5), 4000, 10, 500)
    assert as_set(near_pairs(codes, 10, parts=2, run_jobs=pool.map, min_parallel=0)) == as_set(near_pairs(codes, 10))
    other = codes[::3] ^ np.uint64(6)
    assert as_set(near_pairs(codes, 10, other=other, parts=2, run_jobs=pool.map, min_parallel=0)) == brute_force_pairs(
        codes, 10, other)
