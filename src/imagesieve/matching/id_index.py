"""A compact, exact set of image IDs, built once per node and memory-mapped by every worker.

The reference keeps the IDs to remove in a Python `set[str]` per worker (~90 bytes an ID, times
the number of workers). Here the IDs are stored sorted by their 64-bit xxh64 hash in three flat
files: the hashes, the offsets of each ID's UTF-8 bytes and the bytes themselves. A lookup is a
binary search on the hashes and then a byte comparison with the stored ID, so a hash collision
can never remove a sample that is not listed. Workers map the files read-only: the page cache
holds one copy per node, and no worker holds private memory for the IDs.

On disk (a folder): hashes.bin (uint64), offsets.bin (uint32 while the IDs' bytes fit in 4 GiB,
else int64), ids.bin (UTF-8), index.json (count, offset type, notes). Files are appended in
hash order by `IndexWriter`, so an index larger than memory is written without holding it
(see `id_build.py`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imagesieve.tar.key_hash import hash_strings
from imagesieve.util.arrow_strings import string_buffers

FORMAT = 4  # 4: xxh64 (`key_hash`), was xxh3
_FILES = ("hashes.bin", "offsets.bin", "ids.bin", "fence.bin", "index.json")
FENCE_STEP = 256  # every 256th hash is kept in memory: a lookup then reads one 2 KB block of the hashes
COMPILE_FROM = 80_000  # hits: what loading numba (for `id_verify`) costs, checked one by one in Python


def compiled_pays(hits: int) -> bool:
    """Whether checking `hits` hits in one compiled pass (`id_verify`) pays: numba is loaded already, or the
    work is large enough to pay for loading it."""
    return hits >= COMPILE_FROM or "numba" in sys.modules


def hash_ids(ids: Sequence[str]) -> np.ndarray:
    """xxh64 of each ID's UTF-8 bytes."""
    return hash_strings(pa.array(ids, pa.large_string()))


def sorted_unique(hashes: np.ndarray, ids: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(hashes, ids) sorted by hash then ID, each distinct ID once. Equal IDs have equal hashes, so
    after this sort duplicates are neighbours; distinct IDs that share a hash are all kept."""
    table = pa.table({"h": pa.array(hashes, pa.uint64()), "id": ids}).sort_by([("h", "ascending"),
                                                                                 ("id", "ascending")])
    h, s = table.column("h").to_numpy(), table.column("id").combine_chunks()
    if len(h) > 1:
        same = np.zeros(len(h), dtype=bool)
        same[1:] = (h[1:] == h[:-1]) & pc.equal(s.slice(1), s.slice(0, len(s) - 1)).to_numpy(zero_copy_only=False)
        if same.any():
            keep = np.flatnonzero(~same)
            h, s = h[keep], s.take(pa.array(keep))
    return h, s


class IndexWriter:
    """Appends (hash-sorted) runs of IDs to an index folder; `finish` writes index.json last."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._hashes = open(os.path.join(directory, "hashes.bin"), "wb")
        self._offsets = open(os.path.join(directory, "offsets.tmp"), "wb")  # int64 until the size is known
        self._blob = open(os.path.join(directory, "ids.bin"), "wb")
        self.count, self.blob_bytes, self._last = 0, 0, -1
        self._fence: list[np.ndarray] = []
        self._offsets.write(np.zeros(1, np.int64).tobytes())

    def append(self, hashes: np.ndarray, ids: pa.Array) -> None:
        if not len(hashes):
            return
        if int(hashes[0]) < self._last:
            raise ValueError("IndexWriter.append: runs must come in hash order")
        data, offsets = string_buffers(ids)
        self._hashes.write(np.ascontiguousarray(hashes, dtype=np.uint64))
        # a copy: a view would keep the whole partition's hashes alive until the end of the build
        self._fence.append(np.array(hashes[(-self.count) % FENCE_STEP::FENCE_STEP], np.uint64))
        self._offsets.write(offsets[1:] - offsets[0] + self.blob_bytes)
        self._blob.write(data[offsets[0]:offsets[-1]])
        self.count += len(hashes)
        self.blob_bytes += int(offsets[-1] - offsets[0])
        self._last = int(hashes[-1])

    def finish(self, notes: list[str]) -> None:
        for f in (self._hashes, self._offsets, self._blob):
            f.close()
        # 4-byte offsets while the IDs' bytes fit in 4 GiB: a third less on disk and in the page cache
        offset_type = "uint32" if self.blob_bytes < 2**32 else "int64"
        source = os.path.join(self.directory, "offsets.tmp")
        with open(source, "rb") as src, open(os.path.join(self.directory, "offsets.bin"), "wb") as dst:
            while chunk := src.read(1 << 23):
                dst.write(np.frombuffer(chunk, np.int64).astype(offset_type).tobytes())
        os.remove(source)
        np.concatenate([np.zeros(0, np.uint64), *self._fence]).tofile(os.path.join(self.directory, "fence.bin"))
        with open(os.path.join(self.directory, "index.json"), "w", encoding="utf-8") as f:
            json.dump({"format": FORMAT, "ids": self.count, "blob_bytes": self.blob_bytes,
                       "offset_type": offset_type, "notes": notes}, f)


class FlatFile:
    """A flat array in a file, read with pread: a lookup reads the few bytes it needs and keeps nothing.

    Memory-mapping the files made every worker map most of them (the kernel maps whole large
    page-cache folios around each page touched, whatever madvise says), which a skeptic rightly
    counts against a worker. Reads through the page cache cost the process nothing.
    """

    def __init__(self, path: str, dtype: str, count: int) -> None:
        self.path, self.dtype, self.count = path, np.dtype(dtype), count
        self._fd = os.open(path, os.O_RDONLY)
        size = os.fstat(self._fd).st_size
        if size != count * self.dtype.itemsize:
            os.close(self._fd)
            self._fd = None
            raise ValueError(f"ID index file {path} has {size} bytes, expected {count * self.dtype.itemsize}; "
                             "delete the index folder to rebuild it")

    def __len__(self) -> int:
        return self.count

    @property
    def fd(self) -> int:
        return self._fd

    def __getitem__(self, key: int | slice) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.count)
            if step != 1:
                raise IndexError("FlatFile reads contiguous slices only")
            stop = max(start, stop)
            data = os.pread(self._fd, (stop - start) * self.dtype.itemsize, start * self.dtype.itemsize)
            return np.frombuffer(data, self.dtype)
        index = key + self.count if key < 0 else key
        if not 0 <= index < self.count:
            raise IndexError(f"index {key} out of range for {self.count} values")
        return self[index:index + 1][0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self[0:self.count], dtype=dtype)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class IdIndex:
    """Sorted hashes + offsets + UTF-8 bytes of a set of unique IDs."""

    hashes: np.ndarray
    offsets: np.ndarray
    blob: np.ndarray
    notes: list[str] = field(default_factory=list)
    fence: np.ndarray | None = None  # hashes[::FENCE_STEP], in memory

    def __post_init__(self) -> None:
        if self.fence is None:
            self.fence = np.asarray(self.hashes[::FENCE_STEP], np.uint64)

    def __len__(self) -> int:
        return len(self.hashes)

    @classmethod
    def from_ids(cls, ids: pa.Array | Sequence[str], notes: list[str] | None = None) -> IdIndex:
        """An index in memory (small sets, tests); large sets are built on disk by `id_build`."""
        ids = pa.array(ids, pa.string()) if not isinstance(ids, pa.Array) else ids
        hashes, unique = sorted_unique(hash_strings(ids), ids)
        data, offsets = string_buffers(unique)
        blob = data[offsets[0]:offsets[-1]].copy()
        return cls(hashes, (offsets - offsets[0]).astype(np.uint32 if len(blob) < 2**32 else np.int64), blob,
                   list(notes or []))

    def save_files(self, directory: str) -> None:
        """Write the index into an existing, empty folder (the caller renames it into place)."""
        writer = IndexWriter(directory)
        ids = pa.LargeStringArray.from_buffers(len(self), pa.py_buffer(np.asarray(self.offsets, np.int64).tobytes()),
                                               pa.py_buffer(np.asarray(self.blob).tobytes()))
        writer.append(np.asarray(self.hashes), ids)
        writer.finish(self.notes)

    @staticmethod
    def files_complete(directory: str) -> bool:
        """Whether the folder holds a whole index of this format: every file, each of the size it must have."""
        try:
            with open(os.path.join(directory, "index.json"), encoding="utf-8") as f:
                meta = json.load(f)
            count = meta["ids"]
            sizes = {"hashes.bin": 8 * count, "ids.bin": meta["blob_bytes"],
                     "offsets.bin": (count + 1) * np.dtype(meta["offset_type"]).itemsize,
                     "fence.bin": -(-count // FENCE_STEP) * 8}
            return meta.get("format") == FORMAT and all(
                os.path.getsize(os.path.join(directory, name)) == size for name, size in sizes.items())
        except (OSError, ValueError, KeyError, TypeError):
            return False

    @classmethod
    def load(cls, directory: str) -> IdIndex:
        """Map a saved index read-only, after checking that its files fit together."""
        with open(os.path.join(directory, "index.json"), encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT:
            raise ValueError(f"ID index {directory} has format {meta.get('format')}, this version reads format "
                             f"{FORMAT} (it hashes IDs differently); delete the folder to rebuild it")
        count = meta["ids"]
        hashes = FlatFile(os.path.join(directory, "hashes.bin"), "uint64", count)
        offsets = FlatFile(os.path.join(directory, "offsets.bin"), meta["offset_type"], count + 1)
        blob = FlatFile(os.path.join(directory, "ids.bin"), "uint8", meta["blob_bytes"])
        if count and int(offsets[-1]) != len(blob):
            raise ValueError(f"ID index {directory} is damaged (offsets and bytes disagree); delete it to rebuild")
        fence = np.fromfile(os.path.join(directory, "fence.bin"), dtype=np.uint64)
        if len(fence) != -(-count // FENCE_STEP):
            raise ValueError(f"ID index {directory} is damaged (fence.bin); delete it to rebuild")
        return cls(hashes, offsets, blob, notes=list(meta.get("notes", [])),
                   fence=fence)

    def ids(self, start: int, stop: int) -> pa.LargeStringArray:
        """The stored IDs at positions `start` to `stop` (hash order, so any run of them is a spread sample)."""
        stop = max(start, min(stop, len(self)))
        offsets = np.asarray(self.offsets[start:stop + 1], np.int64)
        if stop == start:
            return pa.array([], pa.large_string())
        blob = np.asarray(self.blob[int(offsets[0]):int(offsets[-1])])
        return pa.LargeStringArray.from_buffers(stop - start, pa.py_buffer((offsets - offsets[0]).tobytes()),
                                                pa.py_buffer(blob.tobytes()))

    def contains(self, ids: Sequence[str]) -> np.ndarray:
        """A boolean mask: which of `ids` are in the set (exact)."""
        ids = pa.array(ids, pa.large_string())
        return self.contains_hashed(hash_strings(ids), ids)

    def contains_hashed(self, query: np.ndarray, ids: pa.Array) -> np.ndarray:
        """`contains` for IDs whose hashes (`hash_strings`) are known: a shard's keys are hashed as read."""
        result = np.zeros(len(query), dtype=bool)
        if not len(query) or not len(self.hashes):
            return result
        positions, found = self._first_at_least(query)
        hit = np.flatnonzero(found == query)
        if not len(hit):
            return result
        if not compiled_pays(len(hit)):
            wanted = ids.take(pa.array(hit)).to_pylist()
            result[hit] = [self._stored(w.encode("utf-8"), int(p), q)
                           for w, p, q in zip(wanted, positions[hit].tolist(), query[hit], strict=True)]
            return result
        from imagesieve.matching.id_verify import verify_in_arrays, verify_in_files  # (loads numba)

        keys, key_offsets = string_buffers(ids.take(pa.array(hit)))
        where = (positions[hit], query[hit], keys, key_offsets)
        if all(isinstance(part, FlatFile) for part in (self.hashes, self.offsets, self.blob)):
            found_ids, complete = verify_in_files(self.hashes.fd, self.offsets.fd, self.offsets.dtype.itemsize,
                                                  self.blob.fd, len(self.hashes), *where)
            if not complete:
                raise ValueError(f"ID index file {self.blob.path} (or its neighbours) could not be read whole; "
                                 "delete the index folder to rebuild it")
        else:
            found_ids = verify_in_arrays(np.asarray(self.hashes), np.asarray(self.offsets), np.asarray(self.blob),
                                         *where)
        result[hit] = found_ids
        return result

    def _stored(self, wanted: bytes, position: int, hash_value: np.uint64) -> bool:
        """Whether `wanted` is among the IDs stored from `position` on that share its hash (`verify_in_files`,
        one ID at a time: for a few hits, cheaper than loading the compiled loop)."""
        while position < len(self.hashes) and self.hashes[position] == hash_value:
            start, end = self.offsets[position:position + 2].tolist()
            if end - start == len(wanted) and self.blob[start:end].tobytes() == wanted:
                return True
            position += 1
        return False

    def _first_at_least(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each query hash, the first position whose hash is >= it (as np.searchsorted) and the hash
        there (0 past the end), reading one block of FENCE_STEP hashes per distinct block: the fence
        (every FENCE_STEP-th hash, in memory) says which block."""
        n = len(self.hashes)
        block = np.maximum(np.searchsorted(self.fence, query, side="left") - 1, 0)
        positions = np.empty(len(query), np.int64)
        found = np.zeros(len(query), np.uint64)
        order = np.argsort(block, kind="stable")
        bounds = np.flatnonzero(np.diff(block[order])) + 1
        for rows in np.split(order, bounds):
            start = int(block[rows[0]]) * FENCE_STEP
            window = np.asarray(self.hashes[start:min(n, start + FENCE_STEP + 1)])
            at = np.searchsorted(window, query[rows], side="left")
            positions[rows] = start + at
            inside = at < len(window)
            found[rows[inside]] = window[at[inside]]
        return positions, found
