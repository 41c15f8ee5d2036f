"""Reading a shard: its members listed, checked and grouped into a `ShardTable`, and its samples in order.

A shard is listed by one of two readers: the compiled header parser (`headers`, numba) or Python's `tarfile`,
read strictly (`listing`), for small work (which never pays for loading numba), for compressed shards, and
for what the compiled loop leaves to it (extended headers). `ShardReader` chooses. Links and devices are
refused; a file that changes while read is refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imagesieve.storage.local import file_fingerprint
from imagesieve.tar.compression import compression_of
from imagesieve.tar.listing import KINDS, CorruptTarError, TarEntry, list_members
from imagesieve.tar.names import ShardError, check_member_name
from imagesieve.tar.table import ShardTable, file_version
from imagesieve.tasks import MemberRef

TARFILE_MEMBERS = 25_000  # members a reader lists with tarfile before the compiled parser (`ShardReader`)

if TYPE_CHECKING:
    from imagesieve.tar.headers import Headers


BYTES_A_MEMBER = 4096  # a generous bound on the members a run holds: a caption and a JSON of ~0.5 KB each beside
                      # an image of 10-500 KB make ~4-170 KB a member


class ShardReader:
    """Lists shards for one caller (a worker's reader stage, a check over a run's shards). The rule: a reader
    lists plain shards with tarfile until it has listed `TARFILE_MEMBERS` members so, then with the compiled
    parser (tarfile stops at the shard that would pass that count, which the compiled parser lists again).
    Its count is its only state: a caller reading many shards keeps one reader.

    The count is what loading the compiled parser costs over what it saves a member, so that a small run
    never loads numba and a large one pays at most twice the better choice (rent until the rent paid equals
    the price). Measured by benchmarks/bench_listing.py (CPU time, 2 shared cores, load average 5-9), on
    shards of 1,000 and 50,000 small members, warm: a table by tarfile 32-63 µs a member (the listing alone
    32-55), by the compiled parser 0.8-1.7 µs (0.5-1.0); loading it in a fresh process (numba and the compiled
    loops, from their cache) 0.95-1.2 s. It pays from 20,000-30,000 members."""

    def __init__(self, input_bytes: int = 0) -> None:
        """`input_bytes`: the size of the shards of the whole run, when the caller knows it. A run that surely
        lists more than TARFILE_MEMBERS members (at most one member a `BYTES_A_MEMBER` bytes) starts with the
        compiled parser: renting first would only add the rent (9% of a 100k-sample `remove`)."""
        # members listed with tarfile so far
        self.by_tarfile = TARFILE_MEMBERS if input_bytes >= 2 * TARFILE_MEMBERS * BYTES_A_MEMBER else 0

    def read(self, shard: str) -> ShardTable:
        """The members of a shard, checked for safety and completeness, as a `ShardTable`; both readers list
        the same.

        Directory entries (no sample: a name ending in "/") and PAX global headers (named "") are kept
        as members of no sample, so that writers copy them in place; links and devices are refused.
        The table records the file's version (`file_version`), checked unchanged after reading: stages
        that later read or copy its bytes check it again, so that nothing is copied, hashed or removed
        from a version other than the one whose headers were read."""
        try:
            read_at = os.stat(shard)
            before = file_version(read_at)
            table = self._read(shard)
            if file_version(os.stat(shard)) != before:
                raise ShardError(f"{shard}: the file changed while it was being read; rerun to read it again")
        except OSError as exc:
            raise ShardError(f"{shard}: cannot read ({exc})") from exc
        table.version, table.read_fingerprint = before, file_fingerprint(read_at)
        if table.data is None:  # a plain tar: everything after the last member was checked to be zeros
            table.ending = (int(table.ends.max()) if len(table.ends) else 0, before[2])
        return table

    def _read(self, shard: str) -> ShardTable:
        try:
            compression = compression_of(shard)
            if compression:
                return _table_from_entries(shard, list_members(shard, compression), compression)
            left = TARFILE_MEMBERS - self.by_tarfile
            entries = list_members(shard, limit=left) if left > 0 else None
            if entries is not None:
                self.by_tarfile += len(entries)
                return _table_from_entries(shard, entries, compiled=False)
            self.by_tarfile = max(self.by_tarfile, TARFILE_MEMBERS)
            with open(shard, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise CorruptTarError("empty file")
                headers = _parse_compiled(f.fileno(), size)
            return _table_from_entries(shard, list_members(shard)) if headers is None else \
                _table_from_headers(shard, headers)
        except CorruptTarError as exc:
            raise ShardError(f"{shard}: corrupt tar ({exc})") from exc
        except OSError as exc:
            raise ShardError(f"{shard}: cannot read ({exc})") from exc


def read_table(shard: str, reader: ShardReader | None = None) -> ShardTable:
    """`ShardReader.read`, by `reader` or, for a single shard, a reader of its own."""
    return (reader or ShardReader()).read(shard)


def _parse_compiled(fd: int, size: int) -> Headers | None:
    """`headers.parse_headers`, imported here: importing it loads numba."""
    from imagesieve.tar.headers import BulkParseError, parse_headers

    try:
        return parse_headers(fd, size)
    except BulkParseError as exc:
        raise CorruptTarError(str(exc)) from None


_DIRECTORY, _REGULAR = ord("5"), (ord("0"), 0, ord("7"))
_FLAG_KINDS = {ord(flag): kind for flag, kind in KINDS.items()}


def _table_from_headers(shard: str, headers: Headers) -> ShardTable:
    types = headers.types
    names = _name_array(headers)
    odd = np.flatnonzero(~np.isin(types, [*_REGULAR, _DIRECTORY]))
    if len(odd):
        j = int(odd[0])
        name = names[j].as_py()
        kind = _FLAG_KINDS.get(int(types[j]))
        if kind is None:
            raise CorruptTarError(f"member {name!r} at byte {headers.header_offsets[j]} has unknown type "
                                  f"{bytes([types[j]])!r}")
        raise ShardError(f"{shard}: member {name!r} is a {kind}; refusing the shard")
    # directory entries stay, as members of no sample ("dir/" has no key): copied in place, so a shard
    # with nothing removed is copied byte for byte
    return ShardTable(shard, names, headers.header_offsets, headers.data_offsets, headers.sizes,
                      is_dir=types == _DIRECTORY)


def _name_array(headers: Headers) -> pa.LargeStringArray:
    """The names as an Arrow string array over the parser's bytes, checked to be UTF-8."""
    names = pa.LargeStringArray.from_buffers(len(headers.sizes), pa.py_buffer(headers.name_offsets),
                                             pa.py_buffer(headers.names))
    try:
        names.validate(full=True)
    except pa.ArrowInvalid:
        raw = headers.names.tobytes()
        for start, end in zip(headers.name_offsets[:-1].tolist(), headers.name_offsets[1:].tolist(), strict=True):
            _name(raw[start:end])  # raises, naming the first bad one
        raise
    return names


def _name(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptTarError(f"member name {raw!r} is not UTF-8") from None


def _table_from_entries(shard: str, entries: list[TarEntry], compression: str | None = None,
                        compiled: bool = True) -> ShardTable:
    """From tarfile's entries (`listing`); `compiled=False`: grouped member by member too, without numba. A
    compressed tar's members are held in memory and written again with fresh headers: its directories and
    global headers are left out."""
    kept = []
    for entry in entries:
        if entry.kind == "global header":
            kept.extend([] if compression else [entry._replace(name="")])
            continue
        check_member_name(shard, entry.name)
        if entry.kind not in ("file", "directory"):
            raise ShardError(f"{shard}: member {entry.name!r} is a {entry.kind}; refusing the shard")
        kept.extend([entry] if entry.kind == "file" or not compression else [])
    table = ShardTable(shard, pa.array([e.name for e in kept], pa.large_string()),
                       np.array([-1 if compression else e.header_offset for e in kept], np.int64),
                       np.array([e.data_offset for e in kept], np.int64), np.array([e.size for e in kept], np.int64),
                       is_dir=np.array([e.kind == "directory" for e in kept], bool),
                       compiled=compiled and not compression, data=[e.data for e in kept] if compression else None,
                       headers=[(e.mtime, e.mode) for e in kept] if compression else None)  # written again alike
    table.compression = compression
    return table


@dataclass
class Sample:
    """The members of one sample, in tar order."""

    key: str
    members: dict[str, MemberRef]


def iter_samples(shard: str, loose: list[MemberRef] | None = None, reader: ShardReader | None = None
                 ) -> Iterator[Sample]:
    """The samples of a shard, in order (grouped as `ShardTable` says). Members that belong to no sample go
    to `loose` when given, else they are an error."""
    table = read_table(shard, reader)
    if loose is None and (table.sample_of < 0).any():
        j = int(np.flatnonzero(table.sample_of < 0)[0])
        raise ShardError(f"{shard}: member {table.names[j]!r} has no extension, so it belongs to no sample")
    if loose is not None:
        loose.extend(table.loose())
    for row, key in enumerate(table.keys):
        yield Sample(key, table.members(row))


def samples_with_keys(shard: str, keys: list[str]) -> Iterator[Sample]:
    """The samples of a shard whose key is in `keys`, in shard order: members are made for those only
    (a report wants a few samples of each shard, not a thousand `MemberRef`s per shard)."""
    table = read_table(shard)
    wanted = pc.is_in(table.key_array, value_set=pa.array(keys, table.key_array.type))
    for row in np.flatnonzero(wanted.to_numpy(zero_copy_only=False)).tolist():
        yield Sample(table.key_array[row].as_py(), table.members(row))
