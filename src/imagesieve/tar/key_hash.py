"""xxh64 of many strings: the hash the ID index stores IDs by, and every shard's keys are looked up by.

One call of the `xxhash` package per string (seed 0). A compiled loop over the strings' bytes cost a
tenth as much per key (25 against 250-300 ns), but hashing is so small a part of `remove` that it saved
1.7% of it (0.43 µs of 25 a sample, inside the run; whole runs could not tell the two apart), under the 3%
that would pay for a second implementation (issue 24; benchmarks/bench_key_hash.py at 04086e7).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import xxhash


def hash_strings(strings: pa.Array) -> np.ndarray:
    """xxh64 of each string's UTF-8 bytes, as uint64 (no nulls expected)."""
    return np.fromiter(map(xxhash.xxh64_intdigest, map(str.encode, strings.to_pylist())), np.uint64, len(strings))
