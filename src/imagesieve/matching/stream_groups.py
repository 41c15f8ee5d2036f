"""Group near-duplicate hashes while searching, without ever holding the pairs.

Pairs can be far more numerous than images (a crawl with many re-posts has hundreds of copies of
one photo: ~45M pairs among 1M images), so the groups are decided as the search goes, in keep
order, against an index that only grows (`stream_kernel.py`), in memory linear in the images:

- stars (default): an image joins the group of the best-ranked kept image within the threshold,
  else it is kept and indexed; duplicates are never indexed, so dense data searches faster.
- chains (`--chaining`): every image is indexed and joined to each one within the threshold by a
  union-find (connected components).
- nearest (`--reference`): each image is matched with its nearest reference image.

These are exactly the groups that `groups.group_stars` / `best_of_components` give over every pair
that `near_search.near_pairs` finds (tests compare them). On sparse data the parallel pair search is
faster (2.7x at 1M uniform codes, 2 cores), so `near_keepers` tries it first, within a pair budget.

A pair may also have to agree on a second code (`Confirm`): the search finds the pairs within the
threshold of the first code, and each counts only when both distances together are within
`Confirm.within`. Every function here applies the same pair rule, so the equalities above still hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from imagesieve.matching.near_search import (
    MAX_PAIRS,
    TooManyPairsError,
    choose_split,
    flip_masks,
    near_pairs,
    popcount64,
)

MAX_TABLE_BITS = 24  # a block's bucket table: at most 2^24 entries; wider blocks are hashed into it
SMALL = 1 << 15  # up to this many codes are decided one at a time, against an index that stays in cache
STARS, CHAINS, NEAREST = 0, 1, 2


@dataclass(frozen=True)
class Confirm:
    """Second codes of each image (`codes[x]`: a row of 64-bit words; `flipped[x]`: its mirror's) that a
    pair must agree on too: the pair counts when its distance plus the distances of these words is at
    most `within`.

    Why: chance pairs grow as n^2, so one 64-bit hash within a fixed distance matches unrelated images
    once there are millions of them; a second hash of the same pixels rarely agrees by chance as well."""

    codes: np.ndarray
    flipped: np.ndarray | None
    within: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "codes", _words(self.codes))
        if self.flipped is not None:
            object.__setattr__(self, "flipped", _words(self.flipped))

    def kernel_args(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(second, second_flipped, within) as the kernels take them."""
        flipped = np.zeros((0, self.codes.shape[1]), np.uint64) if self.flipped is None else self.flipped
        return self.codes, flipped, self.within

    def take(self, rows: np.ndarray) -> Confirm:
        """The same rule for a subset of the images."""
        return Confirm(self.codes[rows], None if self.flipped is None else self.flipped[rows], self.within)

    def keep(self, i: np.ndarray, j: np.ndarray, dist: np.ndarray, mirrored: bool = False) -> np.ndarray:
        """Which pairs (i, j at `dist`; j's mirror with `mirrored`) the rule keeps."""
        other = self.flipped if mirrored else self.codes
        return dist + popcount64(self.codes[i] ^ other[j]).sum(axis=1) <= self.within


def _words(codes: np.ndarray) -> np.ndarray:
    """Second codes as a C-contiguous (n, words) uint64 array (a single code per image is one word)."""
    codes = np.asarray(codes, np.uint64)
    return np.ascontiguousarray(codes.reshape(len(codes), -1))


NO_CONFIRM = (np.zeros((1, 1), np.uint64), np.zeros((1, 1), np.uint64), -1)


def _kernel_confirm(confirm: Confirm | None) -> tuple[np.ndarray, np.ndarray, int]:
    return NO_CONFIRM if confirm is None else confirm.kernel_args()


def _index_layout(entries: int, threshold: int) -> tuple:
    """Block shifts and widths, the table size (log2), and every block's flip masks (flattened, with
    starts)."""
    widths, radii = choose_split(max(entries, 2), threshold)
    table_bits = min(MAX_TABLE_BITS, max(widths))  # a block's values index its table directly (in key order)
    shifts = np.cumsum([0, *widths[:-1]]).astype(np.int64)
    masks = [flip_masks(w, r) if r >= 0 else [] for w, r in zip(widths, radii, strict=True)]
    mask_start = np.cumsum([0, *map(len, masks)]).astype(np.int64)
    return (shifts, np.asarray(widths, np.int64), table_bits,
            np.asarray([x for block in masks for x in block], np.uint64), mask_start)


def _sorted_index(codes: np.ndarray, owners: np.ndarray, mirrored: np.ndarray, shifts: np.ndarray,
                  widths: np.ndarray) -> tuple:
    """The entries sorted by bucket in each block, with each block's bucket table (as `near_search` keeps
    them): a batch probing in key order then reads the table and the entries almost in order."""
    from imagesieve.matching.stream_kernel import bucket_of

    bits = np.minimum(widths, MAX_TABLE_BITS)
    start_at = np.cumsum([0, *((1 << bits) + 1)]).astype(np.int64)
    starts = np.empty(start_at[-1], np.int64)
    shape = (len(shifts), len(codes))
    by_block = np.empty(shape, np.uint64), np.empty(shape, np.int64), np.empty(shape, bool)
    for b in range(len(shifts)):
        bucket = bucket_of(codes, int(shifts[b]), int(widths[b]), int(bits[b]))
        order = np.argsort(bucket, kind="stable")
        by_block[0][b], by_block[1][b], by_block[2][b] = codes[order], owners[order], mirrored[order]
        starts[start_at[b]] = 0
        np.cumsum(np.bincount(bucket, minlength=1 << int(bits[b])), out=starts[start_at[b] + 1:start_at[b + 1]])
    return (*by_block, starts, start_at, bits)


def _group(codes: np.ndarray, flipped: np.ndarray, members: np.ndarray, threshold: int, mode: int,
           visit: np.ndarray, parent: np.ndarray, small: int, threads: int, second: tuple) -> np.ndarray:
    """Decide `members` (in keep order): stars return each one's keeper; chains join `parent`.

    Up to `small` members, one at a time (`one_by_one`). Beyond, in batches as large as the index of
    the batches before them: a batch is first probed against that index all at once, in key order,
    which settles every member near an earlier kept image; the rest of the batch, a smaller set, is
    decided the same way (recursively), and its kept images join the index (re-sorted: with batches
    doubling, O(n log n) in all)."""
    from imagesieve.matching import stream_kernel as kernel  # here: importing numba costs every run ~0.15 s

    per = 2 if len(flipped) else 1
    if len(members) <= small:
        return kernel.one_by_one(codes, flipped, members, threshold, mode,
                                 *_index_layout(len(members) * per, threshold), visit, parent, *second)
    keeper = members.copy()
    entry_codes, entry_owners, entry_mirrored = [], [], []
    start, size = 0, small
    while start < len(members):
        batch = members[start:start + size]
        queries = codes[batch] if per == 1 else np.concatenate([codes[batch], flipped[batch]])
        q_second = np.zeros((len(queries), 1), np.uint64) if second[2] < 0 else \
            second[0][batch] if per == 1 else np.concatenate([second[0][batch], second[1][batch]])
        best = np.full(len(queries), -1, np.int64)
        best_key = np.full(len(queries), kernel.FAR, np.int64)
        if entry_codes:  # blocks split for the index's size: as wide as a bucket per entry, or so
            shifts, widths, _, masks, mask_start = _index_layout(sum(map(len, entry_codes)), threshold)
            index = _sorted_index(np.concatenate(entry_codes), np.concatenate(entry_owners),
                                  np.concatenate(entry_mirrored), shifts, widths)
            kernel.probe_sorted_index(queries, np.tile(batch, per), np.repeat(np.arange(per) == 1, len(batch)),
                                      threshold, mode, *index, shifts, widths, masks, mask_start, best, best_key,
                                      visit, parent, len(index[0][0]), threads, q_second, *second)
        if mode == STARS:
            pick = best_key.reshape(per, -1).argmin(axis=0)
            best = best.reshape(per, -1)[pick, np.arange(len(batch))]
            open_ = best < 0
            keeper[start:start + len(batch)][~open_] = best[~open_]
            rest = batch[open_]
            rest_keeper = _group(codes, flipped, rest, threshold, mode, visit, parent, small, threads, second)
            keeper[start:start + len(batch)][open_] = rest_keeper
            new = rest[rest_keeper == rest]
        else:
            _group(codes, flipped, batch, threshold, mode, visit, parent, small, threads, second)
            new = batch
        entry_codes.append(codes[new] if per == 1 else np.concatenate([codes[new], flipped[new]]))
        entry_owners.append(np.tile(new, per))
        entry_mirrored.append(np.repeat(np.arange(per) == 1, len(new)))
        start += len(batch)
        size = max(small, sum(map(len, entry_owners)) // per)
    return keeper


def _run(codes: np.ndarray, flipped: np.ndarray | None, rank: np.ndarray, threshold: int, mode: int,
         small: int, threads: int, confirm: Confirm | None) -> np.ndarray:
    if not 0 <= threshold <= 64:
        raise ValueError(f"threshold must be within 0..64, got {threshold}")
    codes = np.ascontiguousarray(codes, np.uint64)
    flipped = np.zeros(0, np.uint64) if flipped is None else np.ascontiguousarray(flipped, np.uint64)
    order = np.argsort(rank, kind="stable")
    visit = np.empty(len(codes), np.int64)
    visit[order] = np.arange(len(codes))
    parent = np.arange(len(codes))
    keeper = np.empty(len(codes), np.int64)
    second = _kernel_confirm(confirm)
    keeper[order] = _group(codes, flipped, order, threshold, mode, visit, parent, small, threads, second)
    if mode == CHAINS:
        from imagesieve.matching.stream_kernel import roots

        return roots(parent)
    return keeper


def star_keepers(codes: np.ndarray, threshold: int, rank: np.ndarray, flipped: np.ndarray | None = None,
                 threads: int = 1, small: int = SMALL, confirm: Confirm | None = None) -> np.ndarray:
    """keeper[x]: the best-ranked image within `threshold` of x that is itself kept (x when none).
    `threads` share the batch probes; `small` is the size decided one at a time (tests lower it to
    exercise the batches)."""
    return _run(codes, flipped, rank, threshold, STARS, small, threads, confirm)


def chain_keepers(codes: np.ndarray, threshold: int, rank: np.ndarray, flipped: np.ndarray | None = None,
                  small: int = SMALL, confirm: Confirm | None = None) -> np.ndarray:
    """keeper[x]: the best-ranked image of x's connected component (images joined by pairs within
    `threshold`)."""
    return _run(codes, flipped, rank, threshold, CHAINS, small, 1, confirm)


def nearest_in(codes: np.ndarray, base: np.ndarray, threshold: int, base_flipped: np.ndarray | None = None,
               threads: int = 1, confirm: Confirm | None = None, query_second: np.ndarray | None = None) -> np.ndarray:
    """For each code, the index of the nearest code of `base` within `threshold` (or of a mirror in
    `base_flipped`; an unmirrored one, then the lowest index, on a tie), or -1. With `confirm` (the
    base's second codes), a pair also needs the query's second code (`query_second`) to agree."""
    from imagesieve.matching import stream_kernel as kernel

    if not 0 <= threshold <= 64:
        raise ValueError(f"threshold must be within 0..64, got {threshold}")
    if len(codes) == 0 or len(base) == 0:
        return np.full(len(codes), -1, np.int64)
    per = 1 if base_flipped is None else 2
    entries = np.ascontiguousarray(base if per == 1 else np.concatenate([base, base_flipped]), np.uint64)
    shifts, widths, _, masks, mask_start = _index_layout(len(entries), threshold)
    index = _sorted_index(entries, np.tile(np.arange(len(base)), per), np.repeat(np.arange(per) == 1, len(base)),
                          shifts, widths)
    best = np.full(len(codes), -1, np.int64)
    best_key = np.full(len(codes), kernel.FAR, np.int64)
    none = np.zeros(0, np.int64)
    q_second = np.zeros((len(codes), 1), np.uint64) if confirm is None else _words(query_second)
    kernel.probe_sorted_index(np.ascontiguousarray(codes, np.uint64), np.arange(len(codes)),
                              np.zeros(len(codes), bool), threshold, NEAREST, *index, shifts, widths, masks,
                              mask_start, best, best_key, none, none, len(entries), threads, q_second,
                              *_kernel_confirm(confirm))
    return best


PAIRS_PER_CODE = 8  # a search that finds more pairs than this per code is dense: it is grouped streamed


def near_keepers(codes: np.ndarray, threshold: int, rank: np.ndarray, flipped: np.ndarray | None = None,
                 chaining: bool = False, parts: int = 1, run_jobs: Callable | None = None, threads: int = 1,
                 max_pairs: int | None = None, confirm: Confirm | None = None) -> np.ndarray:
    """keeper[x] of star groups (or, with `chaining`, of connected components): the same answer by the
    faster of two ways. Sparse data (few pairs: most datasets) is searched for every pair by
    `near_pairs` in parallel jobs (`run_jobs`, an executor's `map`) and the pairs grouped; a search
    that finds more than `max_pairs` (default: `PAIRS_PER_CODE` per code, at most `MAX_PAIRS`) stops
    early and the groups are decided streamed, without pairs, in memory linear in the codes."""
    from imagesieve.matching.groups import best_of_components, group_stars

    budget = max_pairs if max_pairs is not None else min(MAX_PAIRS, PAIRS_PER_CODE * len(codes) + 10_000)
    try:
        i, j, d = near_pairs(codes, threshold, parts=parts, run_jobs=run_jobs, max_pairs=budget)
        if confirm is not None:
            keep = confirm.keep(i, j, d)
            i, j = i[keep], j[keep]
        if flipped is not None:
            fi, fj, fd = near_pairs(codes, threshold, other=flipped, parts=parts, run_jobs=run_jobs, max_pairs=budget)
            keep = fi != fj
            if confirm is not None:
                keep &= confirm.keep(fi, fj, fd, mirrored=True)
            i = np.concatenate([i, np.minimum(fi, fj)[keep]])
            j = np.concatenate([j, np.maximum(fi, fj)[keep]])
    except TooManyPairsError:
        if chaining:
            return chain_keepers(codes, threshold, rank, flipped, confirm=confirm)
        return star_keepers(codes, threshold, rank, flipped, threads=threads, confirm=confirm)
    group = best_of_components if chaining else group_stars
    return group(len(codes), i, j, rank)
