"""The ratio test of keypoint matching and the pixel check of a fit, compiled with numba.

Given the similarities of every query descriptor to the descriptors of several images laid end to
end, find per query and per image the nearest descriptor and keep it when it is clearly nearer than
the second nearest (Lowe's ratio test). One pass over the similarity matrix; in NumPy the same test
costs three (argmin, a masked copy, min) and took longer than the matrix product itself.

The pixel check (`pixel_agreement`) warps one 48-pixel thumbnail onto another and counts where
their neighbourhoods correlate: small arrays, where a compiled loop beats a dozen library calls.
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


@njit(cache=True)
def pixel_agreement(a: np.ndarray, b: np.ndarray, a_to_b: np.ndarray, window: int, min_correlation: float,
                    flat_variance: float) -> float:
    """The larger of the shares of thumbnail `a` and of thumbnail `b` (square, uint8, the same size)
    that agree with the other warped onto it; `a_to_b` (2 x 3) maps a's thumbnail pixels to b's.
    0 for a degenerate map (one that flattens an image onto a line)."""
    det = a_to_b[0, 0] * a_to_b[1, 1] - a_to_b[0, 1] * a_to_b[1, 0]
    if abs(det) < 1e-3:
        return 0.0
    b_to_a = np.empty((2, 3))
    b_to_a[0, 0], b_to_a[0, 1] = a_to_b[1, 1] / det, -a_to_b[0, 1] / det
    b_to_a[1, 0], b_to_a[1, 1] = -a_to_b[1, 0] / det, a_to_b[0, 0] / det
    b_to_a[0, 2] = -(b_to_a[0, 0] * a_to_b[0, 2] + b_to_a[0, 1] * a_to_b[1, 2])
    b_to_a[1, 2] = -(b_to_a[1, 0] * a_to_b[0, 2] + b_to_a[1, 1] * a_to_b[1, 2])
    return max(agreeing_share(a, b, b_to_a, window, min_correlation, flat_variance),
               agreeing_share(b, a, a_to_b, window, min_correlation, flat_variance))


@njit(cache=True)
def agreeing_share(source: np.ndarray, target: np.ndarray, to_source: np.ndarray, window: int,
                   min_correlation: float, flat_variance: float) -> float:
    """The share of `target` (square uint8 thumbnail) where `source` (the same size) agrees once warped
    onto it: `to_source` (2 x 3) maps a target pixel to its place in the source (bilinear; pixels
    whose place falls outside the source are not covered). A covered pixel agrees when, over the
    covered pixels of its `window` x `window` neighbourhood, the two correlate above `min_correlation`
    or the variance of both is under `flat_variance`. Integral images of the six sums, one pass each
    way; OpenCV's warp and box filters with NumPy between took twice as long, mostly in calls."""
    size = target.shape[0]
    sums = np.zeros((size + 1, size + 1, 6))  # integral images of: covered, s, t, s*s, t*t, s*t
    covered = np.zeros((size, size), np.bool_)
    for y in range(size):
        for x in range(size):
            u = to_source[0, 0] * x + to_source[0, 1] * y + to_source[0, 2]
            v = to_source[1, 0] * x + to_source[1, 1] * y + to_source[1, 2]
            s = t = 0.0
            if 0 <= u <= size - 1 and 0 <= v <= size - 1:
                x0, y0 = min(int(u), size - 2), min(int(v), size - 2)
                fx, fy = u - x0, v - y0
                top = source[y0, x0] * (1 - fx) + source[y0, x0 + 1] * fx
                bottom = source[y0 + 1, x0] * (1 - fx) + source[y0 + 1, x0 + 1] * fx
                covered[y, x], s, t = True, top * (1 - fy) + bottom * fy, float(target[y, x])
            sums[y + 1, x + 1, 0] = covered[y, x]
            sums[y + 1, x + 1, 1], sums[y + 1, x + 1, 2] = s, t
            sums[y + 1, x + 1, 3], sums[y + 1, x + 1, 4], sums[y + 1, x + 1, 5] = s * s, t * t, s * t
            for k in range(6):
                sums[y + 1, x + 1, k] += sums[y, x + 1, k] + sums[y + 1, x, k] - sums[y, x, k]
    half, agreeing, box = window // 2, 0, np.empty(6)
    for y in range(size):
        for x in range(size):
            if not covered[y, x]:
                continue
            y0, y1, x0, x1 = max(y - half, 0), min(y + half + 1, size), max(x - half, 0), min(x + half + 1, size)
            for k in range(6):
                box[k] = sums[y1, x1, k] - sums[y0, x1, k] - sums[y1, x0, k] + sums[y0, x0, k]
            n = box[0]
            var_s, var_t = max(box[3] - box[1] * box[1] / n, 0.0), max(box[4] - box[2] * box[2] / n, 0.0)  # times n
            if (box[5] - box[1] * box[2] / n > min_correlation * np.sqrt(var_s * var_t)
                    or (var_s < flat_variance * n and var_t < flat_variance * n)):
                agreeing += 1
    return agreeing / (size * size)
