"""The reference answer the pair searches are held against: every pair compared (O(n^2), tests only)."""

from __future__ import annotations

import numpy as np

from imagesieve.matching.near_search import popcount64


def brute_force_pairs(codes: np.ndarray, threshold: int, other: np.ndarray | None = None) -> set[tuple[int, int]]:
    """The pairs within `threshold` bits (i < j within `codes`; or (i in codes, j in other))."""
    a = np.asarray(codes, dtype=np.uint64)
    b = a if other is None else np.asarray(other, dtype=np.uint64)
    dist = popcount64(a[:, None] ^ b[None, :])
    i, j = np.nonzero(dist <= threshold)
    if other is None:
        keep = i < j
        i, j = i[keep], j[keep]
    return set(zip(i.tolist(), j.tolist(), strict=True))
