"""The exact check behind every ID-index hit, compiled (numba), for a whole shard's hits at once.

A hash match is only a candidate: the ID's bytes must equal the stored ID's, or a 64-bit collision
could remove a sample that is not listed. Done in Python this cost two reads and a few objects per
hit. Here each hit's stored IDs (every one with the same hash, in order) are read with `pread` from
the index's files (or from arrays, for an index held in memory) and compared byte for byte.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types

from imagesieve.tar.grouping_kernel import equal_bytes

_pread = types.ExternalFunction("pread", types.int64(types.int32, types.voidptr, types.uint64, types.int64))


@njit(cache=True)
def _read_uint(fd, itemsize, index, scratch):
    """The little-endian unsigned integer at position `index` of a file of `itemsize`-byte values, or -1."""
    if _pread(fd, scratch.ctypes.data, itemsize, index * itemsize) != itemsize:
        return -1
    value = 0
    for i in range(itemsize - 1, -1, -1):
        value = value * 256 + np.int64(scratch[i])
    return value


@njit(cache=True)
def verify_in_files(hashes_fd, offsets_fd, offset_size, blob_fd, count, positions, query, keys, key_offsets):
    """For each hit i: whether keys[key_offsets[i]:key_offsets[i + 1]] is stored at or after positions[i]
    among the IDs whose hash is query[i]. Returns (found, ok): ok is False if a read fell short."""
    found = np.zeros(len(positions), np.bool_)
    scratch = np.empty(8, np.uint8)
    stored = np.empty(256, np.uint8)
    for i in range(len(positions)):
        start, end = key_offsets[i], key_offsets[i + 1]
        length = end - start
        if length > len(stored):
            stored = np.empty(length, np.uint8)
        position = positions[i]
        while position < count:
            if position != positions[i]:  # the first position's hash is the hit itself
                if _pread(hashes_fd, scratch.ctypes.data, 8, position * 8) != 8:
                    return found, False
                if scratch.view(np.uint64)[0] != query[i]:
                    break
            first = _read_uint(offsets_fd, offset_size, position, scratch)
            last = _read_uint(offsets_fd, offset_size, position + 1, scratch)
            if first < 0 or last < 0:
                return found, False
            if last - first == length:
                if _pread(blob_fd, stored.ctypes.data, length, first) != length:
                    return found, False
                if equal_bytes(stored, 0, keys, start, length):
                    found[i] = True
                    break
            position += 1
    return found, True


@njit(cache=True)
def verify_in_arrays(hashes, offsets, blob, positions, query, keys, key_offsets):
    """`verify_in_files` for an index held in memory."""
    found = np.zeros(len(positions), np.bool_)
    for i in range(len(positions)):
        start, length = key_offsets[i], key_offsets[i + 1] - key_offsets[i]
        position = positions[i]
        while position < len(hashes) and hashes[position] == query[i]:
            first, last = np.int64(offsets[position]), np.int64(offsets[position + 1])
            if last - first == length and equal_bytes(blob, first, keys, start, length):
                found[i] = True
                break
            position += 1
    return found
