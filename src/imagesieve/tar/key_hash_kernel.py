"""xxh64 of many short strings at once, compiled (numba), over Arrow-style buffers (bytes + offsets),
and the byte comparison that the key and ID loops share (`equal_bytes`).

The XXH64 algorithm (seed 0), bit-identical to `xxhash.xxh64_intdigest` (a test holds them equal on
every length), run over a whole shard's keys, or a whole Parquet batch of IDs, in one call.
Importing this module loads numba: use `key_hash.hash_strings`, which decides when that pays.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_P1 = np.uint64(11400714785074694791)
_P2 = np.uint64(14029467366897019727)
_P3 = np.uint64(1609587929392839161)
_P4 = np.uint64(9650029242287828579)
_P5 = np.uint64(2870177450012600261)


@njit(cache=True)
def _rotl(x, r):
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@njit(cache=True)
def _read_le(buf, p, width):
    """The little-endian unsigned integer in buf[p:p + width]."""
    value = np.uint64(0)
    for i in range(width):
        value |= np.uint64(buf[p + i]) << np.uint64(8 * i)
    return value


@njit(cache=True)
def _round(acc, lane):
    acc = acc + lane * _P2
    return _rotl(acc, 31) * _P1


@njit(cache=True)
def _merge(acc, v):
    acc ^= _round(np.uint64(0), v)
    return acc * _P1 + _P4


@njit(cache=True)
def xxh64_one(buf, start, end):
    """XXH64 (seed 0) of buf[start:end]."""
    p, length = start, end - start
    if length >= 32:
        v1, v2, v3, v4 = _P1 + _P2, _P2, np.uint64(0), np.uint64(0) - _P1
        while p + 32 <= end:
            v1 = _round(v1, _read_le(buf, p, 8))
            v2 = _round(v2, _read_le(buf, p + 8, 8))
            v3 = _round(v3, _read_le(buf, p + 16, 8))
            v4 = _round(v4, _read_le(buf, p + 24, 8))
            p += 32
        h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        h = _merge(_merge(_merge(_merge(h, v1), v2), v3), v4)
    else:
        h = _P5
    h += np.uint64(length)
    while p + 8 <= end:
        h ^= _round(np.uint64(0), _read_le(buf, p, 8))
        h = _rotl(h, 27) * _P1 + _P4
        p += 8
    if p + 4 <= end:
        h ^= _read_le(buf, p, 4) * _P1
        h = _rotl(h, 23) * _P2 + _P3
        p += 4
    while p < end:
        h ^= np.uint64(buf[p]) * _P5
        h = _rotl(h, 11) * _P1
        p += 1
    h ^= h >> np.uint64(33)
    h *= _P2
    h ^= h >> np.uint64(29)
    h *= _P3
    h ^= h >> np.uint64(32)
    return h


@njit(cache=True)
def xxh64_many(buf, offsets):
    """XXH64 of each buf[offsets[i]:offsets[i + 1]]."""
    out = np.empty(len(offsets) - 1, np.uint64)
    for i in range(len(out)):
        out[i] = xxh64_one(buf, offsets[i], offsets[i + 1])
    return out


@njit(cache=True)
def equal_bytes(a, a_start, b, b_start, length):
    """Whether a[a_start:a_start + length] == b[b_start:b_start + length]."""
    for q in range(length):  # noqa: SIM110 (numba compiles no all() over a generator)
        if a[a_start + q] != b[b_start + q]:
            return False
    return True
