"""WebDataset tar shards: list the members of a shard safely, group them into samples, write shards.

Reading never loads member bytes: it records where each member's headers and data lie
(`MemberRef`), so that removal copies kept members verbatim (headers included, with the kernel's
`copy_file_range`) and never touches removed ones. The key rule is WebDataset's: a member
`dir/KEY.ext.more` belongs to sample `dir/KEY` with extension `ext.more`.
"""

from __future__ import annotations

import functools
import gzip
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from imagesieve.runfolder import naming_errors, temp_name
from imagesieve.tarscan import _KINDS, BLOCK, TarEntry, TarScanError, padded, scan
from imagesieve.tasks import ImageObject, MemberRef, image_from_table

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
_RECORD = 20 * BLOCK  # tar files are padded to whole records, as tar and Python's tarfile do
# Loading the compiled header parser (numba) costs a process ~0.5 s, what the Python scanner spends
# on ~90,000 members. A workflow that decodes images spends far more on each image than on its
# headers, so it reads this many members with the Python scanner before it loads the compiled one
# (rent until the rent paid equals the price): a small run never pays for it, a large one at most
# twice the better choice. Removal, which spends a few µs on a member in all, loads it at once.
SCAN_BEFORE_COMPILING = 80_000
_members_scanned = 0  # by the Python scanner in this process

if TYPE_CHECKING:
    from imagesieve.tar_headers import Headers


class ShardError(ValueError):
    """A shard cannot be read safely; the message names the shard and the member."""


def split_key(member_name: str) -> tuple[str, str] | None:
    """`dir/KEY.ext` -> (`dir/KEY`, `ext`); None when the file name has no extension or starts with a dot.

    The same split as webdataset's `^((?:.*/|)[^.]+)[.]([^/]*)$`, with string methods (5x faster).
    """
    start = member_name.rfind("/") + 1
    dot = member_name.find(".", start)
    if dot <= start:
        return None
    return member_name[:dot], member_name[dot + 1:]


def image_extension(exts: Iterable[str]) -> str | None:
    """The sample's image member: the first extension, in tar order, that names an image format."""
    for ext in exts:
        if ext.lower().rsplit(".", 1)[-1] in IMAGE_EXTENSIONS:
            return ext
    return None


def check_member_name(shard: str, name: str) -> None:
    """Refuse names that could write outside an output folder when extracted."""
    if ".." not in name and "\\" not in name and "\x00" not in name and ":" not in name[:2] \
            and not name.startswith("/"):
        return  # the common, safe case, without regular expressions
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[/\\]", name):
        raise ShardError(f"{shard}: member {name!r} has an absolute path; refusing the shard")
    if ".." in re.split(r"[/\\]", name):
        raise ShardError(f"{shard}: member {name!r} contains '..'; refusing the shard")
    if "\x00" in name:
        raise ShardError(f"{shard}: member {name!r} contains a NUL byte; refusing the shard")


class ShardTable:
    """The members of a shard as arrays, grouped into samples: what reading, removal and writing need,
    without a Python object per member. `MemberRef`s are made only for the samples that ask."""

    def __init__(self, shard: str, names: list[str], header_offsets: np.ndarray, data_offsets: np.ndarray,
                 sizes: np.ndarray, data: list[bytes | None] | None = None,
                 headers: list[tuple[int, int]] | None = None) -> None:
        self.shard = shard
        self.names = names  # per member; "" for a PAX global header
        self.header_offsets, self.data_offsets, self.sizes = header_offsets, data_offsets, sizes
        self.ends = data_offsets + (sizes + BLOCK - 1) // BLOCK * BLOCK  # the next entry starts here
        self.data = data  # member bytes, for compressed tars only
        self.display_shard = shard  # the shard's name in images (its URL when `shard` is a spool copy)
        self.headers = headers or []  # (mtime, mode) per member, for compressed tars only
        self.sample_of, self.keys, self.exts = group_members(shard, names)
        grouped = np.flatnonzero(self.sample_of >= 0)
        self.grouped = grouped  # member indices, sample by sample, in file order
        self.starts = np.searchsorted(self.sample_of[grouped], np.arange(len(self.keys) + 1))

    def __len__(self) -> int:
        return len(self.keys)

    def member_rows(self, row: int) -> np.ndarray:
        return self.grouped[self.starts[row]:self.starts[row + 1]]

    def ref(self, j: int) -> MemberRef:
        if self.data is not None:
            mtime, mode = self.headers[j]
            return MemberRef(self.names[j], self.shard, int(self.data_offsets[j]), int(self.sizes[j]), mtime, mode,
                             data=self.data[j])
        return MemberRef(self.names[j], self.shard, int(self.data_offsets[j]), int(self.sizes[j]),
                         header_offset=int(self.header_offsets[j]))

    def members(self, row: int) -> dict[str, MemberRef]:
        return {self.exts[j]: self.ref(j) for j in self.member_rows(row).tolist()}

    @functools.cached_property
    def image_member(self) -> np.ndarray:
        """Per sample, the member that holds its image (the first image extension in tar order), or -1."""
        is_image = {ext: image_extension([ext]) is not None for ext in set(self.exts)}
        image = np.flatnonzero(np.fromiter((is_image[e] for e in self.exts), bool, len(self.exts))
                               & (self.sample_of >= 0))
        first = np.full(len(self.keys), -1, np.int64)
        samples, at = np.unique(self.sample_of[image], return_index=True)
        first[samples] = image[at]
        return first

    def image(self, row: int) -> ImageObject:
        """The `ImageObject` of one sample; its members made on demand."""
        j = int(self.image_member[row])
        return image_from_table(self, row, f"{self.display_shard}/{self.names[j]}", self.keys[row], self.display_shard,
                                self.exts[j])

    def loose(self) -> list[MemberRef]:
        return [self.ref(j) for j in np.flatnonzero(self.sample_of < 0).tolist()]


def read_table(shard: str, scan_first: int = 0) -> ShardTable:
    """The members of a shard, checked for safety and completeness, as a `ShardTable`. The compiled
    parser reads it once this process has read `scan_first` members with the Python scanner (see
    `SCAN_BEFORE_COMPILING`); both list the same members.

    Directory entries (no sample: a name ending in "/") and PAX global headers (named "") are kept
    as members of no sample, so that writers copy them in place; links and devices are refused."""
    try:
        if _is_compressed(shard):
            refs = list(_iter_compressed(shard))
            return ShardTable(shard, [r.name for r in refs], np.full(len(refs), -1, np.int64),
                              np.array([r.offset for r in refs], np.int64), np.array([r.size for r in refs], np.int64),
                              data=[r.data for r in refs],
                              headers=[(r.mtime, r.mode) for r in refs])  # written again into the new gzip
        if _members_scanned < scan_first:
            return _scanned_table(shard)
        with open(shard, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise TarScanError("empty file")
            headers = _parse_compiled(f.fileno(), size)
        table = None if headers is None else _table_from_headers(shard, headers)
        return table or _table_from_entries(shard, scan(shard))
    except TarScanError as exc:
        raise ShardError(f"{shard}: corrupt tar ({exc})") from exc
    except OSError as exc:
        raise ShardError(f"{shard}: cannot read ({exc})") from exc


def _scanned_table(shard: str) -> ShardTable:
    """The table read by the Python scanner, counted towards loading the compiled parser."""
    global _members_scanned
    table = _table_from_entries(shard, scan(shard))
    _members_scanned += len(table.names)
    return table


def _parse_compiled(fd: int, size: int) -> Headers | None:
    """`tar_headers.parse_headers`, imported here: importing it loads numba."""
    from imagesieve.tar_headers import BulkParseError, parse_headers

    try:
        return parse_headers(fd, size)
    except BulkParseError as exc:
        raise TarScanError(str(exc)) from None


_DIRECTORY, _REGULAR = ord("5"), (ord("0"), 0, ord("7"))
_FLAG_KINDS = {ord(flag): kind for flag, kind in _KINDS.items()}


def _table_from_headers(shard: str, headers: Headers) -> ShardTable | None:
    types = headers.types
    odd = np.flatnonzero(~np.isin(types, [*_REGULAR, _DIRECTORY]))
    names = _decode_names(shard, headers)
    if names is None:
        return None
    if len(odd):
        j = int(odd[0])
        kind = _FLAG_KINDS.get(int(types[j]))
        if kind is None:
            raise TarScanError(f"member {names[j]!r} at byte {headers.header_offsets[j]} has unknown type "
                               f"{bytes([types[j]])!r}")
        raise ShardError(f"{shard}: member {names[j]!r} is a {kind}; refusing the shard")
    # directory entries stay, as members of no sample ("dir/" has no key): copied in place, so a shard
    # with nothing removed is copied byte for byte
    for j in np.flatnonzero(types == _DIRECTORY).tolist():
        names[j] = names[j].rstrip("/") + "/"
    return ShardTable(shard, names, headers.header_offsets, headers.data_offsets, headers.sizes)


def _decode_names(shard: str, headers: Headers) -> list[str] | None:
    """Every member name, decoded at once (one decode, one split) and checked; None when a name holds
    a newline (then the split is not exact: the caller reads the shard with the Python scanner)."""
    try:
        text = headers.names.decode("utf-8")
    except UnicodeDecodeError:
        return [_name(shard, raw) for raw in headers.names.split(b"\n")[:-1]]  # names the bad one
    names = text.split("\n")[:-1]
    if len(names) != len(headers.header_offsets):
        return None
    if ".." in text or "\\" in text or ":" in text or text.startswith("/") or "\n/" in text:
        for name in names:  # the fast test failed for some name: check each, to name the bad one
            check_member_name(shard, name)
    return names


def _name(shard: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TarScanError(f"member name {raw!r} is not UTF-8") from None


def _table_from_entries(shard: str, entries: list[TarEntry]) -> ShardTable:
    """From the Python scanner's entries: tars with extended headers (PAX, GNU long names)."""
    kept = []
    for entry in entries:
        if entry.kind == "global header":
            kept.append(entry._replace(name=""))
            continue
        check_member_name(shard, entry.name)
        if entry.kind not in ("file", "directory"):
            raise ShardError(f"{shard}: member {entry.name!r} is a {entry.kind}; refusing the shard")
        kept.append(entry)
    names = [e.name.rstrip("/") + "/" if e.kind == "directory" else e.name for e in kept]  # no sample's member
    return ShardTable(shard, names, np.array([e.header_offset for e in kept], np.int64),
                      np.array([e.data_offset for e in kept], np.int64), np.array([e.size for e in kept], np.int64))


def group_members(shard: str, names: list[str]) -> tuple[np.ndarray, list[str], list[str]]:
    """Which sample each member belongs to (-1: none), the samples' keys and each member's extension.

    Consecutive members with one key form a sample; a key seen again later in the shard is an error.
    Members of no sample: PAX global headers ("") and files with no extension or a hidden name
    (`README`, macOS's `._0001.jpg`), which webdataset skips; writers copy them unchanged.
    Split with numpy's string functions over the whole shard; a shard with a repeated name takes
    the member-by-member path, which says exactly what is wrong."""
    if not names:
        return np.empty(0, np.int32), [], []
    text = np.array(names)
    start = np.strings.rfind(text, "/") + 1
    dot = np.strings.find(text, ".", start)
    grouped = np.flatnonzero(dot > start)
    keys_of = np.strings.slice(text[grouped], 0, dot[grouped])
    first = np.ones(len(keys_of), bool)
    first[1:] = keys_of[1:] != keys_of[:-1]
    keys = keys_of[first].tolist()
    if len(set(keys)) != len(keys) or len({names[j] for j in grouped.tolist()}) != len(grouped):
        return _group_members_one_by_one(shard, names)
    sample_of = np.full(len(names), -1, np.int32)
    sample_of[grouped] = np.cumsum(first) - 1
    exts = np.full(len(names), "", dtype=text.dtype)
    exts[grouped] = np.strings.slice(text[grouped], dot[grouped] + 1, None)
    return sample_of, keys, exts.tolist()


def _group_members_one_by_one(shard: str, names: list[str]) -> tuple[np.ndarray, list[str], list[str]]:
    sample_of = np.empty(len(names), np.int32)
    keys: list[str] = []
    exts: list[str] = []
    seen: set[str] = set()
    current, current_exts = None, set()
    for j, name in enumerate(names):
        parts = split_key(name)
        if parts is None:
            sample_of[j] = -1
            exts.append("")
            continue
        key, ext = parts
        exts.append(ext)
        if key != current:
            if key in seen:
                raise ShardError(f"{shard}: key {key!r} appears twice in the shard (members not adjacent)")
            seen.add(key)
            keys.append(key)
            current, current_exts = key, set()
        elif ext in current_exts:
            raise ShardError(f"{shard}: sample {key!r} has two {ext!r} members")
        current_exts.add(ext)
        sample_of[j] = len(keys) - 1
    return sample_of, keys, exts


def _is_compressed(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(6)
    return head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ"))


def _iter_compressed(shard: str) -> Iterator[MemberRef]:
    """Compressed tars cannot be copied by byte range; their members' bytes are read into memory."""
    try:
        with tarfile.open(shard, mode="r:*") as tar:
            for info in tar:
                check_member_name(shard, info.name)
                if info.isdir():
                    continue
                if not info.isreg():
                    kind = "symlink" if info.issym() else "hard link" if info.islnk() else "special file"
                    raise ShardError(f"{shard}: member {info.name!r} is a {kind}; refusing the shard")
                yield MemberRef(info.name, shard, info.offset_data, info.size, int(info.mtime), info.mode,
                                data=tar.extractfile(info).read())
    except (tarfile.TarError, EOFError) as exc:
        raise ShardError(f"{shard}: corrupt compressed tar ({exc})") from exc


@dataclass
class Sample:
    """The members of one sample, in tar order."""

    key: str
    members: dict[str, MemberRef]


def iter_samples(shard: str, loose: list[MemberRef] | None = None) -> Iterator[Sample]:
    """The samples of a shard, in order (see `group_members`). Members that belong to no sample go
    to `loose` when given, else they are an error."""
    table = read_table(shard)
    if loose is None and (table.sample_of < 0).any():
        j = int(np.flatnonzero(table.sample_of < 0)[0])
        raise ShardError(f"{shard}: member {table.names[j]!r} has no extension, so it belongs to no sample")
    if loose is not None:
        loose.extend(table.loose())
    for row, key in enumerate(table.keys):
        yield Sample(key, table.members(row))


class AtomicShardWriter:
    """Writes a tar to a temporary name beside its final path and renames it when complete.

    With `fsync`, the data is forced to disk before the rename (survives power loss, not only a
    killed process). Members read from plain tars are copied verbatim (headers and data, byte ranges merged when
    adjacent); members held in memory get a fresh PAX header with their original name, size,
    mode and mtime.
    """

    def __init__(self, final_path: str, fsync: bool = False) -> None:
        self.final_path = final_path
        self.fsync = fsync
        self.temp_path = temp_name(final_path)
        os.makedirs(os.path.dirname(final_path) or ".", exist_ok=True)
        self._raw = open(self.temp_path, "wb")
        # a .tar.gz/.tgz input is written back gzip-compressed (its members come from memory)
        gzipped = final_path.endswith((".gz", ".tgz"))
        self._out = gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0) if gzipped else self._raw
        self._sources: dict[str, int] = {}
        self._pending: tuple[str, int, int] | None = None  # (shard, start, end) not yet copied
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

    def _add_range(self, shard: str, start: int, end: int) -> None:
        if self._pending and self._pending[0] == shard and self._pending[2] == start:
            self._pending = (shard, self._pending[1], end)
        else:
            self._flush()
            self._pending = (shard, start, end)

    def _add(self, ref: MemberRef) -> None:
        if ref.data is None and ref.header_offset >= 0:
            self._add_range(ref.shard, ref.header_offset, ref.offset + padded(ref.size))
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
            src = self._sources[shard] = os.open(shard, os.O_RDONLY)
        self._out.flush()
        copy_range(src, self._out.fileno(), start, end - start)
        self._out.seek(0, os.SEEK_END)
        self.bytes_written += end - start

    def commit(self) -> None:
        with naming_errors(self.final_path):
            self._commit()

    def _commit(self) -> None:
        self._flush()
        end = self.bytes_written + 2 * BLOCK
        self._write(bytes(2 * BLOCK + (-end) % _RECORD))
        self._out.flush()
        if self._out is not self._raw:
            self._out.close()  # writes the gzip trailer
        self._raw.flush()
        if self.fsync:
            os.fsync(self._raw.fileno())
        self._close()
        os.replace(self.temp_path, self.final_path)

    def abort(self) -> None:
        self._close()
        if os.path.exists(self.temp_path):
            os.remove(self.temp_path)

    def _close(self) -> None:
        self._out.close()
        self._raw.close()
        for fd in self._sources.values():
            os.close(fd)
        self._sources.clear()

    def __enter__(self) -> AtomicShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def copy_range(src_fd: int, dst_fd: int, offset: int, count: int) -> None:
    """Append `count` bytes of `src_fd` from `offset` to `dst_fd`.

    A plain pread/write loop: measured faster here than `copy_file_range` on many small ranges.
    """
    while count > 0:
        chunk = os.pread(src_fd, min(count, 1 << 22), offset)
        if not chunk:
            raise ShardError(f"source ended early while copying {count} bytes at offset {offset}")
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst_fd, view):]
        offset += len(chunk)
        count -= len(chunk)
