"""Every pair of 64-bit hashes within Hamming distance t: exact multi-index hashing.

Split the 64 bits into m blocks and give block i a radius r_i, with sum(r_i + 1) = t + 1. If two
hashes differ in at most t bits, then some block i differs in at most r_i bits (were every block
to differ in r_i + 1 or more, the total would exceed t): the generalised pigeonhole principle,
which lets some blocks take a smaller radius than t // m, or none at all (r_i = -1). So for each
block we bucket all hashes by that block's value, and for each hash probe every bucket whose value
is within r_i bits of its own; every candidate found is checked on all 64 bits. This finds every pair within t (no
approximation) and, with m chosen so that a bucket holds about one hash, costs
O(n * probes) instead of O(n^2). Bucketing is vectorised; the probing loop is compiled
(`near_kernel.py`). Up to a few thousand hashes, comparing every pair with NumPy is faster than
loading the compiled loop (numba's start-up alone costs ~0.3 s), so small searches do that.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations
from math import comb

import numpy as np

MAX_TABLE_BITS = 24  # blocks up to this wide use a direct bucket table (2^24 int64 = 128 MiB)
MAX_PAIRS = 20_000_000  # pairs one search may return (~0.5 GB); more means the threshold matches noise
EXHAUSTIVE_PAIRS = 1 << 25  # up to this many comparisons (~6,000 hashes against each other, ~0.1 s)
EXHAUSTIVE_ROWS = 256  # the exhaustive search compares this many rows at a time (bounded memory)


class TooManyPairsError(ValueError):
    """The threshold is so loose that the pairs would not fit in memory."""


def popcount64(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x.astype(np.uint64, copy=False)).astype(np.int64)


def block_widths(m: int) -> list[int]:
    """64 bits split into m nearly equal blocks."""
    base, extra = divmod(64, m)
    return [base + (1 if i < extra else 0) for i in range(m)]


def block_radii(m: int, threshold: int) -> list[int]:
    """Radii with sum(r + 1) == threshold + 1, as even as possible; -1 means the block is not probed."""
    base, extra = divmod(threshold + 1, m)
    return [base + (1 if i < extra else 0) - 1 for i in range(m)]


def probe_count(width: int, radius: int) -> int:
    return sum(comb(width, k) for k in range(radius + 1))


def split_cost(n: int, widths: list[int], radii: list[int]) -> float:
    """Estimated work of one split: per block, its probes times (1 + the candidates a probe finds)."""
    return sum(probe_count(w, r) * (1 + n / 2.0 ** w) for w, r in zip(widths, radii, strict=True) if r >= 0)


def choose_blocks(n: int, threshold: int) -> int:
    """The number of even blocks that minimises the estimated work (probes plus candidates)."""
    return min(range(1, 17), key=lambda m: split_cost(n, block_widths(m), block_radii(m, threshold)))


def choose_split(n: int, threshold: int) -> tuple[list[int], list[int]]:
    """Block widths and radii (sum(r + 1) == threshold + 1) for n codes: even blocks, as many as
    `choose_blocks` says. (Unequal blocks that the cost model prefers at 10M codes, 22/19/23 bits,
    measured 10% slower there: a probe, a random read, costs more than the model's candidate.)"""
    m = choose_blocks(n, threshold)
    return block_widths(m), block_radii(m, threshold)


def flip_masks(width: int, radius: int) -> list[int]:
    """Every value with at most `radius` of the low `width` bits set (0 first)."""
    masks = [0]
    for k in range(1, radius + 1):
        for bits in combinations(range(width), k):
            masks.append(sum(1 << b for b in bits))
    return masks


class _Buckets:
    """The hashes of one block, grouped by block value, with O(1) (table) or O(log n) lookup."""

    def __init__(self, keys: np.ndarray, width: int) -> None:
        self.order = np.argsort(keys, kind="stable")
        self.sorted_keys = keys[self.order]
        self.table = None
        if width <= MAX_TABLE_BITS:
            counts = np.bincount(keys.astype(np.int64), minlength=1 << width)
            self.table = np.concatenate([[0], np.cumsum(counts)])

    def ranges(self, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.table is not None:
            t = targets.astype(np.int64)
            return self.table[t], self.table[t + 1]
        return (np.searchsorted(self.sorted_keys, targets, "left"),
                np.searchsorted(self.sorted_keys, targets, "right"))


def near_pairs(codes: np.ndarray, threshold: int, other: np.ndarray | None = None, parts: int = 1,
               run_jobs: Callable[[Callable, list[tuple]], list] | None = None, min_parallel: int = 50_000,
               max_pairs: int = MAX_PAIRS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance) of every pair within `threshold` bits, each pair once.

    Without `other`: pairs within `codes`, with i < j. With `other`: pairs (i in codes, j in other).
    The probes of each block are independent: they are cut into `parts` jobs per block and run by
    `run_jobs(fn, jobs)` (an executor's `map`: processes on this machine, or Ray tasks), unless there
    are fewer than `min_parallel` codes, where starting workers costs more than it saves. More than
    `max_pairs` pairs raise `TooManyPairsError` rather than exhausting memory.
    """
    query = np.ascontiguousarray(codes, dtype=np.uint64)
    base = query if other is None else np.ascontiguousarray(other, dtype=np.uint64)
    if threshold < 0 or threshold > 64:
        raise ValueError(f"threshold must be within 0..64, got {threshold}")
    if len(query) == 0 or len(base) == 0:
        return (np.zeros(0, np.int64),) * 3
    if len(query) * len(base) <= EXHAUSTIVE_PAIRS:
        return _all_pairs_within(query, None if other is None else base, threshold, max_pairs)
    widths, radii = choose_split(len(base), threshold)
    m = len(widths)
    if len(base) < min_parallel:
        parts, run_jobs = 1, None
    jobs, shift = [], 0
    for width, radius in zip(widths, radii, strict=True):
        masks = flip_masks(width, radius) if radius >= 0 else []
        cut = min(parts, len(masks))
        jobs += [(shift, width, masks[k::cut]) for k in range(cut)]
        shift += width
    jobs = [(query, None if other is None else base, threshold, *job, max_pairs) for job in jobs]
    found = run_jobs(_search_block, jobs) if run_jobs else [_search_block(*job) for job in jobs]
    if sum(len(f[0]) for f in found) > max_pairs * max(1, m):  # each pair is found in at most m blocks
        _too_many(threshold, max_pairs)
    i = np.concatenate([np.zeros(0, np.int64), *(f[0] for f in found)])
    j = np.concatenate([np.zeros(0, np.int64), *(f[1] for f in found)])
    # a pair close in several blocks is found several times: keep one
    pair_ids = np.unique(i.astype(np.int64) * len(base) + j)
    if len(pair_ids) > max_pairs:
        _too_many(threshold, max_pairs)
    i, j = np.divmod(pair_ids, len(base))
    return i, j, popcount64(query[i] ^ base[j])


def _all_pairs_within(query: np.ndarray, other: np.ndarray | None, threshold: int,
                      max_pairs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`near_pairs` by comparing every pair, a block of rows at a time: the same pairs, in the same
    order (by i, then j)."""
    base = query if other is None else other
    found_i, found_j, count = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], 0
    xor = np.empty((EXHAUSTIVE_ROWS, len(base)), np.uint64)  # reused: no fresh pages per block
    bits = np.empty((EXHAUSTIVE_ROWS, len(base)), np.uint8)
    close = np.empty((EXHAUSTIVE_ROWS, len(base)), bool)
    for start in range(0, len(query), EXHAUSTIVE_ROWS):
        rows = query[start:start + EXHAUSTIVE_ROWS]
        first = start if other is None else 0  # a self-join compares each row with the rows from its own on
        n_rows, n_cols = len(rows), len(base) - first
        np.bitwise_xor(rows[:, None], base[None, first:], out=xor[:n_rows, :n_cols])
        np.bitwise_count(xor[:n_rows, :n_cols], out=bits[:n_rows, :n_cols])
        np.less_equal(bits[:n_rows, :n_cols], threshold, out=close[:n_rows, :n_cols])
        # row-major positions, split: the order of np.nonzero at a third of its cost on a 2-D array
        i, j = np.divmod(np.flatnonzero(close[:n_rows, :n_cols]), n_cols)
        i, j = i + start, j + first
        if other is None:  # i < j only (the block's own rows include i == j and the pairs below it)
            i, j = i[j > i], j[j > i]
        count += len(i)
        if count > max_pairs:
            _too_many(threshold, max_pairs)
        found_i.append(i)
        found_j.append(j)
    i, j = np.concatenate(found_i).astype(np.int64), np.concatenate(found_j).astype(np.int64)
    return i, j, popcount64(query[i] ^ base[j])


def _too_many(threshold: int, max_pairs: int) -> None:
    raise TooManyPairsError(f"more than {max_pairs:,} pairs of images lie within {threshold} bits: the threshold "
                            "is too loose for this data (unrelated images match); use a lower --threshold")


def _search_block(query: np.ndarray, other: np.ndarray | None, threshold: int, shift: int, width: int,
                  masks: list[int], max_pairs: int = MAX_PAIRS) -> tuple[np.ndarray, np.ndarray]:
    """Pairs within `threshold` found by probing one block with the given flip masks."""
    from imagesieve.matching.near_kernel import probe  # here: importing numba costs every run ~0.15 s

    self_join = other is None
    base = query if self_join else other
    mask = np.uint64((1 << width) - 1)
    buckets = _Buckets((base >> np.uint64(shift)) & mask, width)
    # probe in key order: the targets of neighbouring queries then lie close together in the
    # bucket table, which keeps the lookups in cache
    if self_join:
        q_index, q_keys = buckets.order, buckets.sorted_keys
    else:
        q_all = (query >> np.uint64(shift)) & mask
        q_index = np.argsort(q_all, kind="stable")
        q_keys = q_all[q_index]
    starts = buckets.table if buckets.table is not None else np.zeros(0, np.int64)
    i, j, overflow = probe(q_keys, q_index, query[q_index], base[buckets.order], starts, buckets.sorted_keys,
                           buckets.order,
                           np.asarray(masks, np.uint64), threshold, self_join, max_pairs)
    if overflow:
        _too_many(threshold, max_pairs)
    return i, j
