"""Writing a shard: members copied verbatim or given a fresh header, into a temp file renamed when complete."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable

import numpy as np

from imagesieve.storage.base import temp_name
from imagesieve.storage.runfolder import keep_mode_of, make_folder, naming_errors
from imagesieve.tar.compression import _compressed_writer
from imagesieve.tar.listing import BLOCK, padded
from imagesieve.tar.mapped import MappedSource
from imagesieve.tasks import MemberRef

_RECORD = 20 * BLOCK  # tar files are padded to whole records, as tar and Python's tarfile do


def publish(temp_path: str, final_path: str) -> None:
    """The rename that makes a complete shard visible under its name (atomic on one file system)."""
    os.replace(temp_path, final_path)


class AtomicShardWriter:
    """Writes a tar to a temporary name beside its final path and renames it when complete.

    With `fsync`, the data is forced to disk before the rename (survives power loss, not only a
    killed process). Members read from plain tars are copied verbatim (headers and data, byte ranges merged when
    adjacent); members held in memory get a fresh PAX header with their original name, size,
    mode and mtime. The tar ends with the ending of its input (`end_as`: the same zero bytes, or none),
    else with two zero blocks padded to a 10 KiB record, as tar and Python's `tarfile` end one.
    """

    def __init__(self, final_path: str, fsync: bool = False, versions: dict[str, tuple] | None = None,
                 compression: str | None = "by name", mode_of: str | None = None,
                 before_publish: Callable[[str], None] | None = None) -> None:
        self.final_path = final_path
        self.before_publish = before_publish  # called with the complete temp file, just before the rename
        self.fsync = fsync
        self.mode_of = mode_of  # the input shard: the output gets its permission bits
        self.versions = versions or {}  # shard -> the version its headers were read from (`file_version`)
        self.temp_path = temp_name(final_path)
        make_folder(os.path.dirname(final_path))
        self._raw = open(self.temp_path, "wb")
        # a compressed input is written back compressed alike (its members come from memory); a plain tar
        # stays plain whatever its name says ("by name": .gz/.tgz, for callers that have no input table)
        if compression == "by name":
            compression = "gz" if final_path.endswith((".gz", ".tgz")) else None
        self._out = _compressed_writer(self._raw, compression)
        self._sources: dict[str, MappedSource] = {}
        self._pending: tuple[str, int, int] | None = None  # (shard, start, end) not yet copied
        self._ended = False  # the input's ending was copied (`end_as`)
        self.bytes_written = 0

    def add(self, ref: MemberRef) -> None:
        with naming_errors(self.final_path):
            self._add(ref)

    def add_ranges(self, shard: str, starts: np.ndarray, ends: np.ndarray) -> None:
        """Copy the byte ranges [start, end) of a plain tar, in order: whole members, headers included.
        Adjacent ranges are copied as one."""
        if not len(starts):
            return
        breaks = np.flatnonzero(starts[1:] != ends[:-1]) + 1
        with naming_errors(self.final_path):
            for start, end in zip(starts[np.r_[0, breaks]].tolist(), ends[np.r_[breaks - 1, len(ends) - 1]].tolist(),
                                  strict=True):
                self._add_range(shard, start, end)

    def end_as(self, shard: str, start: int, end: int) -> None:
        """End the tar as the plain tar `shard` ends: with its bytes [start, end), what follows its last
        member (the end-of-archive blocks and record padding, all zeros as read; nothing when it has none),
        so that a shard with nothing removed is copied identically. A tar left with no member and no
        ending (every member removed from one without end blocks) still gets the standard ending: an
        empty file is no tar."""
        if end > start:
            with naming_errors(self.final_path):
                self._add_range(shard, start, end)
            self._ended = True
        else:
            self._ended = self.bytes_written > 0 or self._pending is not None

    def _add_range(self, shard: str, start: int, end: int) -> None:
        if self._pending and self._pending[0] == shard and self._pending[2] == start:
            self._pending = (shard, self._pending[1], end)
        else:
            self._flush()
            self._pending = (shard, start, end)

    def _add(self, ref: MemberRef) -> None:
        if ref.data is None and ref.header_offset >= 0:
            self._add_range(ref.local_path(), ref.header_offset, ref.offset + padded(ref.size))
            return
        self._flush()
        info = tarfile.TarInfo(ref.name)
        info.size, info.mtime, info.mode = ref.size, ref.mtime, ref.mode
        data = ref.data if ref.data is not None else ref.read()
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        self._write(data + bytes(padded(len(data)) - len(data)))

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self.bytes_written += len(data)

    def _flush(self) -> None:
        if self._pending is None:
            return
        shard, start, end = self._pending
        self._pending = None
        src = self._sources.get(shard)
        if src is None:
            src = self._sources[shard] = MappedSource(shard, self.versions.get(shard))
        self._out.flush()
        src.copy_to(self._out.fileno(), start, end)
        self._out.seek(0, os.SEEK_END)
        self.bytes_written += end - start

    def commit(self) -> None:
        with naming_errors(self.final_path):
            self._commit()

    def _commit(self) -> None:
        self._flush()
        for source in self._sources.values():
            source.check_unchanged()  # before the rename: a shard copied from a changing file is never published
        if not self._ended:
            end = self.bytes_written + 2 * BLOCK
            self._write(bytes(2 * BLOCK + (-end) % _RECORD))
        self._out.flush()
        if self._out is not self._raw:
            self._out.close()  # writes the gzip trailer
        self._raw.flush()
        if self.fsync:
            os.fsync(self._raw.fileno())
        self._close()
        if self.mode_of is not None:
            keep_mode_of(self.mode_of, self.temp_path)
        if self.before_publish is not None:
            self.before_publish(self.temp_path)
        publish(self.temp_path, self.final_path)

    def abort(self) -> None:
        self._close()
        if os.path.exists(self.temp_path):
            os.remove(self.temp_path)

    def _close(self) -> None:
        self._out.close()
        self._raw.close()
        for source in self._sources.values():
            source.close()
        self._sources.clear()

    def __enter__(self) -> AtomicShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()  # nothing half-made is left beside the output
                raise
        else:
            self.abort()
