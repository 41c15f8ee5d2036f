"""Reading a shard: its members listed, checked and grouped into a `ShardTable`, and its samples in order.

A plain tar is listed by the compiled header parser (`headers`) or the Python scanner (`scan`, for
extended headers, and for small runs, which never pay for loading numba); a compressed one through
`tarfile` (`compression`). Links and devices are refused; a file that changes while read is refused.
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
from imagesieve.tar.compression import _iter_compressed, compression_of
from imagesieve.tar.key_hash import COMPILE_FROM
from imagesieve.tar.names import ShardError, check_member_name
from imagesieve.tar.scan import _KINDS, TarEntry, TarScanError, scan
from imagesieve.tar.table import ShardTable, file_version
from imagesieve.tasks import MemberRef

# Loading the compiled header parser (numba) costs a process ~0.5 s (and compiling it ~5 s on a
# machine's first run), what the Python scanner spends on ~90,000 members. So a process reads this
# many members with the Python scanner before it loads the compiled one (rent until the rent paid
# equals the price): a small run never pays for it, a large one at most twice the better choice.
# The same threshold as the key hashes' (`key_hash.COMPILE_FROM`).
SCAN_BEFORE_COMPILING = COMPILE_FROM
_members_scanned = 0  # by the Python scanner in this process

if TYPE_CHECKING:
    from imagesieve.tar.headers import Headers


def read_table(shard: str, scan_first: int = 0) -> ShardTable:
    """The members of a shard, checked for safety and completeness, as a `ShardTable`. The compiled
    parser reads it once this process has read `scan_first` members with the Python scanner (see
    `SCAN_BEFORE_COMPILING`); both list the same members.

    Directory entries (no sample: a name ending in "/") and PAX global headers (named "") are kept
    as members of no sample, so that writers copy them in place; links and devices are refused.
    The table records the file's version (`file_version`), checked unchanged after reading: stages
    that later read or copy its bytes check it again, so that nothing is copied, hashed or removed
    from a version other than the one whose headers were read."""
    try:
        read_at = os.stat(shard)
        before = file_version(read_at)
        table = _read_table(shard, scan_first)
        if file_version(os.stat(shard)) != before:
            raise ShardError(f"{shard}: the file changed while it was being read; rerun to read it again")
    except OSError as exc:
        raise ShardError(f"{shard}: cannot read ({exc})") from exc
    table.version, table.read_fingerprint = before, file_fingerprint(read_at)
    if table.data is None:  # a plain tar: everything after the last member was checked to be zeros
        table.ending = (int(table.ends.max()) if len(table.ends) else 0, before[2])
    return table


def _read_table(shard: str, scan_first: int) -> ShardTable:
    try:
        compression = compression_of(shard)
        if compression:
            refs = list(_iter_compressed(shard))
            table = ShardTable(shard, pa.array([r.name for r in refs], pa.large_string()),
                              np.full(len(refs), -1, np.int64),
                              np.array([r.offset for r in refs], np.int64), np.array([r.size for r in refs], np.int64),
                              data=[r.data for r in refs],
                              headers=[(r.mtime, r.mode) for r in refs])  # written again, compressed alike
            table.compression = compression
            return table
        if _members_scanned < scan_first:
            return _scanned_table(shard)
        with open(shard, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise TarScanError("empty file")
            headers = _parse_compiled(f.fileno(), size)
        return _table_from_entries(shard, scan(shard)) if headers is None else _table_from_headers(shard, headers)
    except TarScanError as exc:
        raise ShardError(f"{shard}: corrupt tar ({exc})") from exc
    except OSError as exc:
        raise ShardError(f"{shard}: cannot read ({exc})") from exc


def _scanned_table(shard: str) -> ShardTable:
    """The table read by the Python scanner, counted towards loading the compiled parser."""
    global _members_scanned
    table = _table_from_entries(shard, scan(shard), compiled=False)
    _members_scanned += len(table.sizes)
    return table


def _parse_compiled(fd: int, size: int) -> Headers | None:
    """`headers.parse_headers`, imported here: importing it loads numba."""
    from imagesieve.tar.headers import BulkParseError, parse_headers

    try:
        return parse_headers(fd, size)
    except BulkParseError as exc:
        raise TarScanError(str(exc)) from None


_DIRECTORY, _REGULAR = ord("5"), (ord("0"), 0, ord("7"))
_FLAG_KINDS = {ord(flag): kind for flag, kind in _KINDS.items()}


def _table_from_headers(shard: str, headers: Headers) -> ShardTable:
    types = headers.types
    names = _name_array(headers)
    odd = np.flatnonzero(~np.isin(types, [*_REGULAR, _DIRECTORY]))
    if len(odd):
        j = int(odd[0])
        name = names[j].as_py()
        kind = _FLAG_KINDS.get(int(types[j]))
        if kind is None:
            raise TarScanError(f"member {name!r} at byte {headers.header_offsets[j]} has unknown type "
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
        raise TarScanError(f"member name {raw!r} is not UTF-8") from None


def _table_from_entries(shard: str, entries: list[TarEntry], compiled: bool = True) -> ShardTable:
    """From the Python scanner's entries: tars with extended headers (PAX, GNU long names), or any tar
    read without numba (`compiled=False`: grouped member by member too)."""
    kept = []
    for entry in entries:
        if entry.kind == "global header":
            kept.append(entry._replace(name=""))
            continue
        check_member_name(shard, entry.name)
        if entry.kind not in ("file", "directory"):
            raise ShardError(f"{shard}: member {entry.name!r} is a {entry.kind}; refusing the shard")
        kept.append(entry)
    return ShardTable(shard, pa.array([e.name for e in kept], pa.large_string()),
                      np.array([e.header_offset for e in kept], np.int64),
                      np.array([e.data_offset for e in kept], np.int64), np.array([e.size for e in kept], np.int64),
                      is_dir=np.array([e.kind == "directory" for e in kept], bool), compiled=compiled)


@dataclass
class Sample:
    """The members of one sample, in tar order."""

    key: str
    members: dict[str, MemberRef]


def iter_samples(shard: str, loose: list[MemberRef] | None = None) -> Iterator[Sample]:
    """The samples of a shard, in order (grouped as `ShardTable` says). Members that belong to no sample go
    to `loose` when given, else they are an error."""
    table = read_table(shard, SCAN_BEFORE_COMPILING)  # (reports, checks: small work, no numba unless it pays)
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
    table = read_table(shard, SCAN_BEFORE_COMPILING)
    wanted = pc.is_in(table.key_array, value_set=pa.array(keys, table.key_array.type))
    for row in np.flatnonzero(wanted.to_numpy(zero_copy_only=False)).tolist():
        yield Sample(table.key_array[row].as_py(), table.members(row))
