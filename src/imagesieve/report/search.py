"""The report's index of IDs, so that any member of any group is found without loading every page.

data/ids/NNNNN.js holds the [ID, group number] pairs of one bucket; an ID's bucket is the 32-bit
FNV-1a hash of its UTF-8 bytes modulo the number of buckets, which the page computes the same way
(`fnv1a` in page.SCRIPT) and then loads that one file. Hashing runs over the Arrow string buffer,
one byte position at a time for all IDs at once, so a million IDs cost no Python loop.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from imagesieve.util.arrow_strings import string_buffers

IDS_PER_FILE = 4000
FNV_OFFSET, FNV_PRIME = np.uint32(2166136261), np.uint32(16777619)


def fnv1a(ids: pa.Array) -> np.ndarray:
    """32-bit FNV-1a of each string's UTF-8 bytes (uint32)."""
    data, offsets = string_buffers(ids)
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")  # longest first: the IDs still hashing are a prefix
    longest_first, first_byte = lengths[order], offsets[:-1][order]
    hashes = np.full(len(order), FNV_OFFSET, np.uint32)
    for j in range(int(longest_first[0]) if len(order) else 0):
        n = int(np.searchsorted(-longest_first, -j, side="left"))  # IDs longer than j bytes
        hashes[:n] = (hashes[:n] ^ data[first_byte[:n] + j]) * FNV_PRIME
    result = np.empty_like(hashes)
    result[order] = hashes
    return result


def id_buckets(ids: pa.Array) -> tuple[int, np.ndarray, np.ndarray]:
    """(number of bucket files, rows of `ids` ordered by bucket, where each bucket's rows start (+ end))."""
    files = max(1, -(-len(ids) // IDS_PER_FILE))
    bucket = fnv1a(ids) % np.uint32(files)
    order = np.argsort(bucket, kind="stable")
    bounds = np.searchsorted(bucket[order], np.arange(files + 1), side="left")
    return files, order, bounds
