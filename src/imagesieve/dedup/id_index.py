"""A compact, exact set of image IDs, built once per node and memory-mapped by every worker.

The reference keeps the IDs to remove in a Python `set[str]` per worker (~90 bytes an ID, times
the number of workers). Here the IDs are stored sorted by their 64-bit xxh3 hash in three flat
arrays on disk: the hashes, the offsets of each ID's UTF-8 bytes and the bytes themselves. A
lookup is a binary search on the hashes and then a byte comparison with the stored ID, so a hash
collision can never remove a sample that is not listed. Workers map the files read-only: the
page cache holds one copy per node, and no worker holds private memory for the IDs.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

_FILES = ("hashes.npy", "offsets.npy", "blob.npy")


def hash_ids(ids: Sequence[str]) -> np.ndarray:
    """xxh3-64 of each ID's UTF-8 bytes."""
    digest = xxhash.xxh3_64_intdigest
    return np.fromiter((digest(i.encode("utf-8")) for i in ids), dtype=np.uint64, count=len(ids))


def list_parquet_files(directory: str) -> list[str]:
    """Every `*.parquet` under `directory`, recursively, sorted; `FileNotFoundError` when none."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"duplicate ID folder {directory!r} does not exist")
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(directory)
                   for name in names if name.endswith(".parquet") and ".tmp-" not in name)
    if not files:
        raise FileNotFoundError(f"No parquet files found in {directory}")
    return files


def read_id_column(path: str, id_field: str, notes: list[str]) -> pa.Array:
    """The ID column of one Parquet file as strings; ints are converted (and noted), nulls refused."""
    try:
        schema = pq.read_schema(path)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable Parquet file ({exc})") from exc
    if id_field not in schema.names:
        raise ValueError(f"{path}: no column {id_field!r}; the file has columns {schema.names}. "
                         "Pass the right column name (--id-field / duplicate_id_field).")
    column = pq.read_table(path, columns=[id_field]).column(id_field).combine_chunks()
    if column.null_count:
        raise ValueError(f"{path}: column {id_field!r} has {column.null_count} null IDs")
    kind = column.type
    if pa.types.is_integer(kind):
        notes.append(f"{path}: column {id_field!r} holds integers ({kind}); converted to strings")
        return pc.cast(column, pa.string())
    if pa.types.is_dictionary(kind) and pa.types.is_string(kind.value_type):
        return pc.cast(column, pa.string())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind):
        return pc.cast(column, pa.string())
    raise ValueError(f"{path}: column {id_field!r} has type {kind}; expected strings (or integers)")


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

    @classmethod
    def from_parquet_dir(cls, directory: str, id_field: str = "id") -> IdIndex:
        notes: list[str] = []
        columns = [read_id_column(path, id_field, notes) for path in list_parquet_files(directory)]
        ids = pa.concat_arrays(columns) if columns else pa.array([], pa.string())
        return cls.from_ids(ids, notes)

    def save(self, directory: str) -> None:
        """Write the three arrays to `directory` atomically (a temp folder renamed into place)."""
        parent = os.path.dirname(os.path.abspath(directory))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-index-", dir=parent)
        for name, array in zip(_FILES, (self.hashes, self.offsets, self.blob), strict=True):
            np.save(os.path.join(tmp, name), array)
        with open(os.path.join(tmp, "notes.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(self.notes))
        try:
            os.rename(tmp, directory)
        except OSError:  # another process finished first; theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(cls, directory: str) -> IdIndex:
        arrays = [np.load(os.path.join(directory, name), mmap_mode="r") for name in _FILES]
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


def directory_fingerprint(directory: str, id_field: str) -> str:
    """Changes whenever a Parquet file under `directory` is added, removed or modified."""
    digest = hashlib.sha256(id_field.encode())
    for path in list_parquet_files(directory):
        st = os.stat(path)
        digest.update(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:32]


def build_shared_index(directory: str, id_field: str, cache_root: str | None = None) -> str:
    """Build the index of `directory` once per machine (under a file lock) and return its folder."""
    cache_root = cache_root or os.path.join(tempfile.gettempdir(), "imagesieve-id-index")
    os.makedirs(cache_root, exist_ok=True)
    target = os.path.join(cache_root, directory_fingerprint(directory, id_field))
    with open(target + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isdir(target):
            IdIndex.from_parquet_dir(directory, id_field).save(target)
    return target
