"""The ratio test of keypoint matching, compiled with numba.

Given the similarities of every query descriptor to the descriptors of several images laid end to
end, find per query and per image the nearest descriptor and keep it when it is clearly nearer than
the second nearest (Lowe's ratio test). One pass over the similarity matrix; in NumPy the same test
costs three (argmin, a masked copy, min) and took longer than the matrix product itself.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def ratio_matches(sims: np.ndarray, query_sq: np.ndarray, train_sq: np.ndarray, starts: np.ndarray,
                  ratio: float) -> np.ndarray:
    """(queries, images) int32: for query r and image s, the index (within image s, whose descriptors
    are columns starts[s]:starts[s + 1] of `sims`) of the nearest descriptor if it passes the ratio
    test, else -1. Squared distances are query_sq[r] + train_sq[c] - 2 sims[r, c]."""
    rows, images = sims.shape[0], len(starts) - 1
    out = np.full((rows, images), -1, np.int32)
    limit = ratio * ratio
    for r in range(rows):
        for s in range(images):
            best, second, where = np.inf, np.inf, -1
            for c in range(starts[s], starts[s + 1]):
                d = query_sq[r] + train_sq[c] - 2.0 * sims[r, c]
                if d < best:
                    second, best, where = best, d, c
                elif d < second:
                    second = d
            if second < np.inf and max(best, 0.0) < limit * second:
                out[r, s] = where - starts[s]
    return out
