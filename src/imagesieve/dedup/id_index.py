"""A compact, exact set of image IDs, built once per node and memory-mapped by every worker.

The reference keeps the IDs to remove in a Python `set[str]` per worker (~90 bytes an ID, times
the number of workers). Here the IDs are stored sorted by their 64-bit xxh3 hash in three flat
arrays on disk: the hashes, the offsets of each ID's UTF-8 bytes and the bytes themselves. A
lookup is a binary search on the hashes and then a byte comparison with the stored ID, so a hash
collision can never remove a sample that is not listed. Workers map the files read-only: the
page cache holds one copy per node, and no worker holds private memory for the IDs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

_FILES = ("hashes.npy", "offsets.npy", "blob.npy")


def hash_ids(ids: Sequence[str]) -> np.ndarray:
    """xxh3-64 of each ID's UTF-8 bytes."""
    digest = xxhash.xxh3_64_intdigest
    return np.fromiter((digest(i.encode("utf-8")) for i in ids), dtype=np.uint64, count=len(ids))


@dataclass
class IdIndex:
    """Sorted hashes + offsets + UTF-8 bytes of a set of unique IDs."""

    hashes: np.ndarray
    offsets: np.ndarray
    blob: np.ndarray
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.hashes)

    @classmethod
    def from_ids(cls, ids: pa.Array | Sequence[str], notes: list[str] | None = None) -> IdIndex:
        unique = pc.unique(pa.array(ids, pa.string()) if not isinstance(ids, pa.Array) else ids)
        step = 1 << 20  # hash in slices so that only a million Python strings exist at a time
        hashes = np.concatenate([hash_ids(unique.slice(i, step).to_pylist())
                                 for i in range(0, len(unique), step)] or [np.zeros(0, np.uint64)])
        order = np.argsort(hashes, kind="stable")
        ordered = pc.cast(unique.take(pa.array(order)), pa.large_string())
        _, offsets_buf, data_buf = ordered.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=np.int64)[ordered.offset:ordered.offset + len(ordered) + 1]
        blob = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
        # 4-byte offsets while the IDs' bytes fit in 4 GiB: a third less on disk and in the page cache
        offsets = offsets.astype(np.uint32 if len(blob) < 2**32 else np.int64)
        return cls(hashes[order], offsets, blob.copy(), list(notes or []))

    def save_files(self, directory: str) -> None:
        """Write the arrays into an existing, empty folder (the caller renames it into place)."""
        for name, array in zip(_FILES, (self.hashes, self.offsets, self.blob), strict=True):
            np.save(os.path.join(directory, name), array)
        with open(os.path.join(directory, "notes.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(self.notes))

    @staticmethod
    def files_complete(directory: str) -> bool:
        return all(os.path.isfile(os.path.join(directory, name)) for name in (*_FILES, "notes.txt"))

    @classmethod
    def load(cls, directory: str) -> IdIndex:
        """Map a saved index read-only, after checking that its arrays fit together."""
        arrays = [np.load(os.path.join(directory, name), mmap_mode="r") for name in _FILES]
        hashes, offsets, blob = arrays
        if len(offsets) != len(hashes) + 1 or (len(hashes) and int(offsets[-1]) != len(blob)):
            raise ValueError(f"ID index {directory} is damaged (array sizes disagree); delete it to rebuild")
        with open(os.path.join(directory, "notes.txt"), encoding="utf-8") as f:
            notes = [line for line in f.read().splitlines() if line]
        return cls(*arrays, notes=notes)

    def contains(self, ids: Sequence[str]) -> np.ndarray:
        """A boolean mask: which of `ids` are in the set (exact)."""
        result = np.zeros(len(ids), dtype=bool)
        if not len(ids) or not len(self.hashes):
            return result
        query = hash_ids(ids)
        positions = np.searchsorted(self.hashes, query)
        in_range = positions < len(self.hashes)
        hit = np.zeros(len(ids), dtype=bool)
        hit[in_range] = self.hashes[positions[in_range]] == query[in_range]
        for i in np.flatnonzero(hit):
            result[i] = self._verify(ids[i].encode("utf-8"), int(positions[i]), query[i])
        return result

    def _verify(self, wanted: bytes, position: int, hash_value: np.uint64) -> bool:
        while position < len(self.hashes) and self.hashes[position] == hash_value:
            start, end = int(self.offsets[position]), int(self.offsets[position + 1])
            if self.blob[start:end].tobytes() == wanted:
                return True
            position += 1
        return False
