"""xxh64 of many strings: the hash the ID index stores IDs by, and every shard's keys are looked up by.

Hashing keys one Python string at a time cost more than reading a shard's headers, so large inputs
go through a compiled loop (`key_hash_kernel`, numba). Loading numba costs a process ~0.5 s (and
compiling its loops ~5 s on a machine's first run), which small work never earns back: below
`COMPILE_FROM` strings, and while nothing in the process has loaded numba, the `xxhash` package
hashes them one by one. Both give the same values (tested).
"""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import xxhash

from imagesieve.util.arrow_strings import string_buffers

COMPILE_FROM = 80_000  # strings: what loading numba costs


def compiled_pays(items: int) -> bool:
    """Whether work of `items` strings or members should use the compiled loops: numba is loaded already,
    or the work is large enough to pay for loading it."""
    return items >= COMPILE_FROM or "numba" in sys.modules


def hash_strings(strings: pa.Array) -> np.ndarray:
    """xxh64 of each string's UTF-8 bytes, as uint64."""
    if not len(strings):
        return np.zeros(0, np.uint64)
    if not compiled_pays(len(strings)):
        digest = xxhash.xxh64_intdigest
        return np.fromiter((digest(s.encode("utf-8")) for s in strings.to_pylist()), np.uint64, len(strings))
    from imagesieve.tar.key_hash_kernel import xxh64_many

    return xxh64_many(*string_buffers(strings))
