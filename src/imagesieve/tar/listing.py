"""A tar's members listed by Python's `tarfile`, strictly: small and compressed shards, and what the compiled
parser (`headers`) leaves to it (extended headers, odd number encodings).

`tarfile` alone is lenient where a shard must not be: past the first member it ends the listing silently at
a damaged or truncated header, ignores whatever follows the end-of-archive marker, reads a directory's data
as headers, takes a PAX size it cannot parse for 0 and walks backwards on a negative one. Every header is
therefore read through `_Header`, which makes each such case an error naming its byte offset, by the compiled
parser's rules (a test holds both to them): anything unexpected is an error, never a skip.

- The end: the file ends right after a member, or a zero block follows it and nothing but zeros after that.
- A header: its checksum matches (unsigned or signed sums, as tarfile and tar take them); its size is not
  negative and its data ends inside the file; a directory has no data (tar tools disagree on where the next
  header is); no sparse member, no Solaris `X` header (tarfile would take it for PAX), no unknown type; a
  name in UTF-8. Its mode, owner, time and device fields, which the compiled parser never reads, are read
  as 0 when they are no number (tarfile would stop there).
- PAX records parse completely and in UTF-8 (in a plain tar; a compressed one is read once, by tarfile's
  parser), and a `size` record is a decimal number.

Each entry's byte range runs from its first header (PAX and GNU long-name headers included:
`TarInfo.offset`) to the end of its data, which writers copy verbatim. A PAX global header is an entry of its
own, its records applied to no member (as the compiled parser reads names from their own headers).
"""

from __future__ import annotations

import os
import tarfile
from typing import NamedTuple

BLOCK = 512
REGULAR_TYPES = (b"0", b"\x00", b"7")
KINDS = {b"1": "hard link", b"2": "symlink", b"3": "character device", b"4": "block device", b"5": "directory",
         b"6": "fifo", b"S": "sparse file", b"V": "volume label", b"g": "global header"}
# tar tools disagree on where the next header of such an entry is (tarfile and GNU tar skip no data),
# so members could hide in it from one reader and not another
DIRECTORY_WITH_DATA = "the directory entry at byte {} has a non-zero size; refusing the shard"


class CorruptTarError(ValueError):
    """The tar is corrupt or truncated; the message says where."""


class TarEntry(NamedTuple):
    name: str
    kind: str  # "file", or one of KINDS' values
    size: int
    data_offset: int
    header_offset: int  # where this entry's first header (PAX / GNU long-name included) starts
    data: bytes | None = None  # a compressed tar's file bytes (it cannot be copied by byte range)
    mtime: int = 0
    mode: int = 0


def padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def list_members(path: str, compression: str | None = None, limit: int | None = None) -> list[TarEntry] | None:
    """Every entry of the tar at `path` in order, with its files' bytes when `compression` ("gz", "bz2", "xz")
    says it is compressed; None as soon as there are more than `limit`. Raises `CorruptTarError` on damage."""
    size = None if compression else os.path.getsize(path)
    if size == 0:
        raise CorruptTarError("empty file")
    entries: list[TarEntry] = []
    try:
        with _Tar.open(path, f"r:{compression or ''}", size=size) as tar:
            while (info := tar.next()) is not None:
                tar.members.clear()  # one TarInfo at a time, not one per member of the shard
                if limit is not None and len(entries) == limit:
                    return None
                entries.append(_entry(tar, info, compression))
    except RecursionError:  # tarfile reads a chain of extended headers recursively
        raise CorruptTarError("too many extended headers in a row") from None
    except CorruptTarError:
        raise
    except (tarfile.TarError, EOFError, ValueError) as exc:  # left to tarfile: a compressed stream's end, sparse maps
        raise CorruptTarError(str(exc)) from None
    return entries


def _entry(tar: tarfile.TarFile, info: tarfile.TarInfo, compression: str | None) -> TarEntry:
    name = info.as_written  # as the compiled parser reads it, where tarfile strips a directory's slashes
    name = info.name + "/" * (info.isdir() and bool(info.name)) if name is None else name
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # (tarfile keeps undecodable bytes as surrogates)
        raise CorruptTarError(f"member name {name.encode('utf-8', 'surrogateescape')!r} at byte {info.offset} is "
                              "not UTF-8") from None
    kind = "file" if info.type in REGULAR_TYPES else KINDS.get(info.type)
    if kind is None:
        raise CorruptTarError(f"member {name!r} at byte {info.offset} has unknown type {info.type!r}")
    data = tar.extractfile(info).read() if compression and kind == "file" else None
    return TarEntry(name, kind, info.size, info.offset_data, info.offset, data, int(info.mtime), info.mode)


class _Tar(tarfile.TarFile):
    """A `TarFile` whose headers are read by `_Header`, knowing its file's size (None: a compressed stream)."""

    def __init__(self, *args, size: int | None = None, **kwargs) -> None:
        self.size = size
        super().__init__(*args, tarinfo=_Header, encoding="utf-8", errors="surrogateescape", **kwargs)


class _Header(tarfile.TarInfo):
    """A header as `tarfile` reads it, with the compiled parser's checks (see the module's docstring)."""

    @classmethod
    def fromtarfile(cls, tar: _Tar) -> tarfile.TarInfo:
        pos, buf = tar.fileobj.tell(), tar.fileobj.read(BLOCK)
        chained = pos != tar.offset  # read for the extended header at tar.offset
        try:
            obj = cls.frombuf(buf, tar.encoding, tar.errors)
        except tarfile.EOFHeaderError:
            if chained:
                raise CorruptTarError(f"an extended header at byte {tar.offset} is followed by the end of the "
                                      "archive") from None
            while chunk := tar.fileobj.read(1 << 16):
                if chunk.count(0) != len(chunk):
                    raise CorruptTarError(f"data after the end-of-archive marker at byte {pos}") from None
            raise  # the end, which tarfile takes as such
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError):
            if buf or chained or pos == 0:
                raise CorruptTarError(f"truncated: the file ends inside the header at byte {pos}") from None
            raise  # no end-of-archive blocks: tolerated, as by tar
        except tarfile.InvalidHeaderError as exc:
            obj = cls.frombuf(_as_compiled_reads_it(buf, pos, exc), tar.encoding, tar.errors)
        obj.offset, obj.as_written = pos, tarfile.nts(buf[:100], tar.encoding, tar.errors)
        if buf[257:263] == b"ustar\x00" and buf[345]:  # only POSIX ustar has a prefix (tarfile joins any format's)
            obj.as_written = f"{tarfile.nts(buf[345:500], tar.encoding, tar.errors)}/{obj.as_written}"
        obj.name = obj.as_written.rstrip("/") if obj.isdir() else obj.as_written
        if obj.size < 0:
            raise CorruptTarError(f"the header at byte {pos} has a negative size")
        if tar.size is not None and pos + BLOCK + obj.size > tar.size:
            raise CorruptTarError(f"truncated: the member at byte {pos} ends past the end of the file")
        if obj.type in (tarfile.GNUTYPE_SPARSE, b"X"):  # (tarfile would take a Solaris X header for PAX)
            raise CorruptTarError(f"member {obj.name!r} at byte {pos} is a sparse file; refusing the shard"
                                  if obj.type == tarfile.GNUTYPE_SPARSE else
                                  f"member {obj.name!r} at byte {pos} has unknown type {obj.type!r}")
        if obj.type == tarfile.XHDTYPE and tar.size is not None:  # what tarfile would skip or take for 0
            _check_records(_pax_records(os.pread(tar.fileobj.fileno(), obj.size, pos + BLOCK), pos), pos)
        try:
            member = obj._proc_member(tar)
        except tarfile.HeaderError:  # a PAX record of length 0
            raise CorruptTarError(f"malformed PAX header at byte {pos}") from None
        if chained:
            return member  # checked as its extended headers leave it, by the call that read the first of them
        if member is not obj:
            member.as_written = None  # named by its extended headers
            _check_records(member.pax_headers, pos, member.name)
            if tar.size is not None and member.offset_data + member.size > tar.size:
                raise CorruptTarError(f"truncated: the member {member.name!r} ends past the end of the file")
        if member.isdir() and member.size:
            raise CorruptTarError(DIRECTORY_WITH_DATA.format(pos))
        return member

    def _proc_member(self, tar: _Tar) -> tarfile.TarInfo:
        if self.type != tarfile.XGLTYPE:
            return super()._proc_member(tar)
        self.offset_data = tar.fileobj.tell()  # a PAX global header: an entry of its own
        tar.offset = self.offset_data + padded(self.size)
        return self


def _as_compiled_reads_it(buf: bytes, pos: int, exc: tarfile.HeaderError) -> bytes:
    """A header tarfile refused: damage when its checksum (or the field holding it) or its size is; else a
    number field the compiled parser never reads (mode, owner, time, device: tarfile reads every one) as 0."""
    if str(exc) == "bad checksum" or not _is_number(buf[148:156]):
        raise CorruptTarError("not a tar file (no valid header at byte 0)" if pos == 0 else
                              f"bad header checksum at byte {pos}") from None
    if buf[156:157] == tarfile.GNUTYPE_SPARSE:  # (tarfile reads its map's numbers too)
        raise CorruptTarError(f"the member at byte {pos} is a sparse file; refusing the shard") from None
    if not _is_number(buf[124:136]):
        raise CorruptTarError(f"bad size field {buf[124:136]!r} in the header at byte {pos}") from None
    block = bytearray(buf)
    for start, end in ((100, 108), (108, 116), (116, 124), (136, 148), (329, 337), (337, 345)):
        block[start:end] = block[start:end] if _is_number(block[start:end]) else bytes(end - start)
    block[148:156] = b"%06o\0 " % (sum(block[:148]) + 8 * 32 + sum(block[156:]))
    return bytes(block)


def _is_number(field: bytes) -> bool:
    try:
        tarfile.nti(field)
    except tarfile.InvalidHeaderError:
        return False
    return True


def _pax_records(data: bytes, at: int) -> dict[str, str]:
    records, pos = {}, 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
            key, _, value = data[space + 1:pos + length - 1].partition(b"=")
            records[key.decode("utf-8")] = value.decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise CorruptTarError(f"malformed PAX header at byte {at}") from None
        if length <= 0:
            raise CorruptTarError(f"malformed PAX header at byte {at}")
        pos += length
    return records


def _check_records(records: dict[str, str], pos: int, name: str | None = None) -> None:
    name = records.get("path", "") if name is None else name
    if any(key.startswith("GNU.sparse.") for key in records):  # its data is a sparse map, not the file
        raise CorruptTarError(f"member {name!r} at byte {pos} is a sparse file; refusing the shard")
    size = records.get("size")
    if size is not None and not (size.isascii() and size.isdigit()):  # tarfile reads "abc" as 0, "-1536" backwards
        raise CorruptTarError(f"member {name!r} at byte {pos} has a bad PAX size {size!r}")
