"""The compiled loops of the streamed grouping (`stream_groups.py`): a multi-index hash that grows.

Each 64-bit code is split into blocks; every block has a bucket table (`heads`, one int32 per
bucket, -1 when empty) and each entry a link to the next entry of its bucket (`links[block, e]`).
Entries are only ever added, so an index is a few arrays, linear in its entries. A query probes,
in each block, every bucket within that block's radius of its own value (the flip masks) and checks
each entry found on all 64 bits: the pigeonhole rule of `near_search` makes this exact. Blocks wider
than the table are hashed into it (a bucket may then hold other values; the 64-bit check rejects them).

`stream_groups` drives these: a small set is decided one code at a time (`one_by_one`) against such
an index, which stays in cache; a large batch of codes is probed all at once, in block-key order,
against a sorted index of the earlier batches (`probe_sorted_index`), which reads it almost in order.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from imagesieve.matching.near_kernel import _popcount

NOT_FOUND = -1
FAR = np.int64(1) << np.int64(62)


@njit(cache=True, inline="always")
def _bucket(value: np.uint64, width: int, bits: int) -> int:
    if width <= bits:
        return int(value)
    return int((value * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - bits))


@njit(cache=True, inline="always")
def _block(code: np.uint64, shift: int, width: int) -> np.uint64:
    if width >= 64:
        return code
    return (code >> np.uint64(shift)) & ((np.uint64(1) << np.uint64(width)) - np.uint64(1))


@njit(cache=True)
def _new_index(capacity: int, widths: np.ndarray, max_bits: int):
    m = len(widths)
    bits = np.minimum(widths, max_bits)
    head_start = np.zeros(m + 1, np.int64)
    for b in range(m):
        head_start[b + 1] = head_start[b] + (1 << bits[b])
    return (np.empty(capacity, np.uint64), np.empty(capacity, np.int64), np.zeros(capacity, np.bool_),
            np.full(head_start[m], -1, np.int32), head_start, np.empty((m, max(capacity, 1)), np.int32), bits)


@njit(cache=True)
def _add(code: np.uint64, owner: int, mirrored: bool, e: int, codes, owners, mirrors, heads, head_start, links,
         bits, shifts, widths) -> None:
    codes[e] = code
    owners[e] = owner
    mirrors[e] = mirrored
    for b in range(len(shifts)):
        slot = head_start[b] + _bucket(_block(code, shifts[b], widths[b]), widths[b], bits[b])
        links[b, e] = heads[slot]
        heads[slot] = e


@njit(cache=True, inline="always")
def _confirmed(d: int, q_second: np.ndarray, owner: int, mirrored: bool, second: np.ndarray,
               second_flipped: np.ndarray, within: int) -> bool:
    """The pair rule beyond the search's own distance: with second codes (a row of words per image),
    all the distances together within `within` (-1: none, every pair within the threshold counts)."""
    if within < 0:
        return True
    other = second_flipped[owner] if mirrored else second[owner]
    for w in range(len(other)):
        d += _popcount(q_second[w] ^ other[w])
    return d <= within


@njit(cache=True, inline="always")
def _root(parent: np.ndarray, a: int) -> int:
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


@njit(cache=True, inline="always")
def _take(mode: int, x: int, owner: int, d: int, mirrored: bool, best: np.ndarray, best_key: np.ndarray, q: int,
          visit: np.ndarray, parent: np.ndarray, capacity: int) -> None:
    """What a match (query q of code x, entry of `owner` at distance d) means in each mode."""
    if mode == 0:  # stars: the earliest-visited kept code
        if visit[owner] < best_key[q]:
            best[q], best_key[q] = owner, visit[owner]
    elif mode == 1:  # chains: one component, rooted at its earliest-visited code
        a, c = _root(parent, x), _root(parent, owner)
        if a != c:
            if visit[a] < visit[c]:
                parent[c] = a
            else:
                parent[a] = c
    else:  # nearest: the smallest distance, then an unmirrored entry, then the lowest index
        key = (np.int64(d) * 2 + mirrored) * np.int64(capacity + 1) + owner
        if key < best_key[q]:
            best[q], best_key[q] = owner, key


@njit(cache=True)
def _probe_one(query: np.uint64, x: int, query_mirrored: bool, threshold: int, mode: int, codes, owners, mirrors,
               heads, head_start, links, bits, shifts, widths, masks, mask_start, best: np.ndarray,
               best_key: np.ndarray, visit: np.ndarray, parent: np.ndarray, capacity: int, q_second: np.ndarray,
               second: np.ndarray, second_flipped: np.ndarray, within: int) -> None:
    """Probe one query against a growing index (into `best[0]`, `best_key[0]`)."""
    for b in range(len(shifts)):
        key = _block(query, shifts[b], widths[b])
        for k in range(mask_start[b], mask_start[b + 1]):
            e = heads[head_start[b] + _bucket(key ^ masks[k], widths[b], bits[b])]
            while e >= 0:
                if not (query_mirrored and mirrors[e]):
                    d = _popcount(query ^ codes[e])
                    if d <= threshold and _confirmed(d, q_second, owners[e], mirrors[e], second, second_flipped,
                                                     within):
                        _take(mode, x, owners[e], d, mirrors[e], best, best_key, 0, visit, parent, capacity)
                e = links[b, e]


@njit(cache=True)
def bucket_of(codes: np.ndarray, shift: int, width: int, bits: int) -> np.ndarray:
    """Each code's bucket in one block's table."""
    out = np.empty(len(codes), np.int64)
    for k in range(len(codes)):
        out[k] = _bucket(_block(codes[k], shift, width), width, bits)
    return out


@njit(cache=True, parallel=True)
def probe_sorted_index(queries, query_of, query_mirrored, threshold, mode, codes, owners, mirrors, starts, start_at,
                       bits, shifts, widths, masks, mask_start, best, best_key, visit, parent, capacity,
                       threads, q_second, second, second_flipped, within) -> None:
    """Probe all `queries` against a sorted index (`codes[b]`, `owners[b]`, `mirrors[b]`: the entries in
    block b's bucket order; bucket k of block b holds positions starts[start_at[b] + k] up to the next):
    block by block and mask by mask, queries in key order, so both the table and the entries are read
    almost in order, as `near_kernel.probe` reads them. Stars and nearest (modes 0, 2) split the
    queries among `threads` (each query's result is its own); chains (mode 1) join in one thread.
    With `within` >= 0, a pair also needs its second codes (`q_second[q]`, `second[owner]` or, for a
    mirrored entry, `second_flipped[owner]`) close enough (`_confirmed`)."""
    parts = threads if mode != 1 else 1
    for b in range(len(shifts)):
        keys = np.empty(len(queries), np.uint64)
        for q in range(len(queries)):
            keys[q] = _block(queries[q], shifts[b], widths[b])
        ordered = np.argsort(keys)
        for part in prange(parts):
            lo, hi = part * len(ordered) // parts, (part + 1) * len(ordered) // parts
            for k in range(mask_start[b], mask_start[b + 1]):
                for r in range(lo, hi):
                    q = ordered[r]
                    slot = start_at[b] + _bucket(keys[q] ^ masks[k], widths[b], bits[b])
                    for e in range(starts[slot], starts[slot + 1]):
                        if not (query_mirrored[q] and mirrors[b, e]):
                            d = _popcount(queries[q] ^ codes[b, e])
                            if d <= threshold and _confirmed(d, q_second[q], owners[b, e], mirrors[b, e], second,
                                                             second_flipped, within):
                                _take(mode, query_of[q], owners[b, e], d, mirrors[b, e], best, best_key, q, visit,
                                      parent, capacity)


@njit(cache=True)
def one_by_one(codes: np.ndarray, flipped: np.ndarray, members: np.ndarray, threshold: int, mode: int,
               shifts: np.ndarray, widths: np.ndarray, max_bits: int, masks: np.ndarray, mask_start: np.ndarray,
               visit: np.ndarray, parent: np.ndarray, second: np.ndarray, second_flipped: np.ndarray,
               within: int) -> np.ndarray:
    """Decide `members` (in keep order) one at a time against an index of their own, which a small set
    keeps in cache. Stars (mode 0): returns each member's keeper. Chains (mode 1): joins components
    in `parent` (returns the members)."""
    per = 2 if len(flipped) > 0 else 1
    capacity = len(members) * per
    codes_i, owners_i, mirrors_i, heads_i, start_i, links_i, bits_i = _new_index(capacity, widths, max_bits)
    keeper = members.copy()
    best = np.empty(1, np.int64)
    best_key = np.empty(1, np.int64)
    entries = 0
    for p in range(len(members)):
        x = members[p]
        found = NOT_FOUND
        for r in range(per):
            best[0], best_key[0] = NOT_FOUND, FAR
            query = codes[x] if r == 0 else flipped[x]
            q_second = second[0] if within < 0 else (second[x] if r == 0 else second_flipped[x])
            _probe_one(query, x, r == 1, threshold, mode, codes_i, owners_i, mirrors_i, heads_i, start_i, links_i,
                       bits_i, shifts, widths, masks, mask_start, best, best_key, visit, parent, capacity, q_second,
                       second, second_flipped, within)
            if best[0] != NOT_FOUND and (found == NOT_FOUND or visit[best[0]] < visit[found]):
                found = best[0]
        if mode == 0 and found != NOT_FOUND:
            keeper[p] = found
            continue  # a duplicate is never indexed
        for r in range(per):
            _add(codes[x] if r == 0 else flipped[x], x, r == 1, entries, codes_i, owners_i, mirrors_i, heads_i,
                 start_i, links_i, bits_i, shifts, widths)
            entries += 1
    return keeper


@njit(cache=True)
def roots(parent: np.ndarray) -> np.ndarray:
    result = np.empty(len(parent), np.int64)
    for x in range(len(parent)):
        result[x] = _root(parent, x)
    return result
