"""A shard's members as arrays, grouped into samples (`ShardTable`): nothing is made per member until asked.

Reading never loads member bytes: the table records where each member's headers and data lie
(`MemberRef`), so that removal copies kept members verbatim (headers included, from a mapping of the
shard: `mapped`, `write`) and never touches removed ones. It also records the version of the file it
was read from (`file_version`), checked again by whatever later reads or copies its bytes.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pyarrow as pa

from imagesieve.storage.shard_copy import ShardCopy
from imagesieve.tar.grouping import Grouping, _group_members_one_by_one, group_from_keys
from imagesieve.tar.listing import BLOCK
from imagesieve.tar.names import IMAGE_EXTENSIONS, ShardError, check_member_name
from imagesieve.tasks import ImageObject, MemberRef, image_from_table
from imagesieve.util.arrow_strings import string_buffers


class ShardTable:
    """The members of a shard as arrays, grouped into samples: what reading, removal and writing need,
    without a Python object per member or per sample. Keys stay an Arrow array with their hashes
    (what removal looks up); Python strings, `MemberRef`s and images are made only for what asks."""

    def __init__(self, shard: str, names: pa.Array, header_offsets: np.ndarray, data_offsets: np.ndarray,
                 sizes: np.ndarray, is_dir: np.ndarray | None = None, data: list[bytes | None] | None = None,
                 headers: list[tuple[int, int]] | None = None, compiled: bool = True) -> None:
        self._shard = shard
        self.source: ShardCopy | None = None  # an object's shard: its URL and version, read in any process
        self.name_array = names  # per member; "" for a PAX global header
        self.header_offsets, self.data_offsets, self.sizes = header_offsets, data_offsets, sizes
        self.ends = data_offsets + (sizes + BLOCK - 1) // BLOCK * BLOCK  # the next entry starts here
        self.is_dir = np.zeros(len(sizes), bool) if is_dir is None else is_dir
        self.data = data  # member bytes, for compressed tars only
        self.display_shard = shard  # the shard's name in images (its URL when `shard` is a spool copy)
        self.headers = headers or []  # (mtime, mode) per member, for compressed tars only
        self.version: tuple[int, ...] | None = None  # the file's version when read (`file_version`)
        self.read_fingerprint: str | None = None  # the same version as runs record it (`file_fingerprint`)
        self.compression: str | None = None  # "gz", "bz2" or "xz": the input's, and so its output's
        # a plain tar's bytes after its last member (end-of-archive blocks and padding, zeros; or none), as
        # (start, end): a writer ends the output alike (`AtomicShardWriter.end_as`)
        self.ending: tuple[int, int] | None = None
        grouping = None
        if compiled:
            from imagesieve.tar.grouping_kernel import group  # (loads numba)

            fields = group(*string_buffers(names), self.is_dir, IMAGE_EXTENSIONS)
            grouping = None if fields is None else Grouping(*fields)
        if grouping is None:  # a table read without numba, or something repeats (the exact path raises, naming it)
            sample_of, keys, _ = _group_members_one_by_one(shard, self.names)
            grouping = group_from_keys(self.names, sample_of, keys, names_checked=not compiled)
        for j in np.flatnonzero(grouping.suspicious).tolist():
            check_member_name(shard, self.names[j])
        self.sample_of = grouping.sample_of
        self.key_array, self.image_member = grouping.keys, grouping.image_member
        self._key_hashes = grouping.key_hashes
        grouped = np.flatnonzero(self.sample_of >= 0)
        self.grouped = grouped  # member indices, sample by sample, in file order
        self.starts = np.searchsorted(self.sample_of[grouped], np.arange(len(self.key_array) + 1))

    def __len__(self) -> int:
        return len(self.key_array)

    @property
    def shard(self) -> str:
        """A local file holding the shard's bytes in this process: the shard, or a copy of the object."""
        return self._shard if self.source is None else self.source.path()

    @property
    def key_hashes(self) -> np.ndarray:
        """xxh64 of each key (what removal looks up), made when first asked for."""
        if self._key_hashes is None:
            from imagesieve.tar.key_hash import hash_strings

            self._key_hashes = hash_strings(self.key_array)
        return self._key_hashes

    @property
    def fingerprint(self) -> str | None:
        """The version read, as `runfolder.shard_fingerprint` writes it."""
        return None if self.version is None else self.read_fingerprint

    def check_unchanged(self) -> None:
        """Raise if the file is no longer the version read: what a stage made from its bytes would not
        match what a rerun sees, so it must not be recorded as done."""
        if self.version is None:
            return
        try:
            now = file_version(os.stat(self.shard))
        except OSError:
            now = None
        if now != self.version:
            raise ShardError(f"{self.display_shard}: the file changed (replaced, rewritten or truncated) after it "
                             "was read; nothing was written for it: rerun to process the new version")

    @functools.cached_property
    def names(self) -> list[str]:
        """Every member's name (directories end in "/"): made only when a path needs Python strings."""
        names = self.name_array.to_pylist()
        for j in np.flatnonzero(self.is_dir).tolist():
            names[j] = names[j].rstrip("/") + "/"
        return names

    @functools.cached_property
    def keys(self) -> list[str]:
        return self.key_array.to_pylist()

    @functools.cached_property
    def exts(self) -> list[str]:
        """Each member's extension ("" for members of no sample)."""
        return [name[len(self.keys[sample]) + 1:] if sample >= 0 else ""
                for name, sample in zip(self.names, self.sample_of.tolist(), strict=True)]

    def keys_of(self, rows: np.ndarray) -> list[str]:
        return self.key_array.take(pa.array(rows, pa.int64())).to_pylist()

    def member_rows(self, row: int) -> np.ndarray:
        return self.grouped[self.starts[row]:self.starts[row + 1]]

    def ref(self, j: int) -> MemberRef:
        name = self.names[j] if "names" in self.__dict__ else self._name(j)
        if self.data is not None:
            mtime, mode = self.headers[j]
            return MemberRef(name, self._shard, int(self.data_offsets[j]), int(self.sizes[j]), mtime, mode,
                             data=self.data[j])
        return MemberRef(name, self._shard, int(self.data_offsets[j]), int(self.sizes[j]),
                         header_offset=int(self.header_offsets[j]), source=self.source)

    def _name(self, j: int) -> str:
        name = self.name_array[j].as_py()
        return name.rstrip("/") + "/" if self.is_dir[j] else name

    def members(self, row: int) -> dict[str, MemberRef]:
        key_length = len(self.key_array[row].as_py())
        return {ref.name[key_length + 1:]: ref for ref in map(self.ref, self.member_rows(row).tolist())}

    def image(self, row: int) -> ImageObject:
        """The `ImageObject` of one sample; its members made on demand."""
        j = int(self.image_member[row])
        name, key = self.names[j], self.keys[row]
        return image_from_table(self, row, f"{self.display_shard}/{name}", key, self.display_shard,
                                name[len(key) + 1:])

    def loose(self) -> list[MemberRef]:
        return [self.ref(j) for j in np.flatnonzero(self.sample_of < 0).tolist()]


def file_version(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """One version of a file's content, within a run: the same inode, size, mtime and ctime. A file
    replaced (a new inode) or rewritten in place (a new ctime, whatever its mtime says) is another.

    Not the version runs record (`storage.local.file_fingerprint`, which done markers and tables compare
    across runs): this one guards the bytes between reading a tar's headers and copying or mapping them,
    in one process, so it is stricter (the ctime, which `--link` changes, and the device) and never
    written down. `read_table` takes both from the same `stat`."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def check_source_unchanged(metadata: dict) -> None:
    """For a stage writing what it made from a batch's shard: raise if the shard is no longer the
    version the reader read (batches from image folders carry no table, and nothing to check)."""
    table = metadata.get("shard_table")
    if table is not None:
        table.check_unchanged()
