"""A fast, strict scanner of uncompressed tar headers (ustar, GNU and PAX), over a memory map.

Python's `tarfile` spends ~50 µs per member building `TarInfo` objects; shards hold tens of
thousands of small members (`.txt`, `.json`), so listing a shard with it costs more than copying
it. This scanner reads only what removal needs: each member's name, type, size and the
byte range of its headers and data, so that kept members can be copied verbatim, headers
included. Every header's checksum is verified; anything unexpected is an error, never a skip.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
REGULAR_TYPES = (b"0", b"\x00", b"7")
_KINDS = {b"1": "hard link", b"2": "symlink", b"3": "character device", b"4": "block device",
          b"5": "directory", b"6": "fifo", b"S": "sparse file", b"V": "volume label"}


class TarScanError(ValueError):
    """The tar is corrupt or truncated; the message says where."""


class TarEntry(NamedTuple):
    name: str
    kind: str  # "file", "directory", "global header" or one of _KINDS' values
    size: int
    data_offset: int
    header_offset: int  # where this entry's first header (PAX / GNU long-name included) starts

    @property
    def end(self) -> int:
        """End of the data, padded to the block size: the next entry starts here."""
        return self.data_offset + padded(self.size)


def padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def _number(field: bytes, what: str, at: int) -> int:
    try:  # the common case: octal digits padded with NULs or spaces
        return int(field.rstrip(b"\x00 ") or b"0", 8)
    except ValueError:
        pass
    if field and field[0] & 0x80:  # GNU base-256
        return int.from_bytes(field[1:], "big") if field[0] == 0x80 else -1
    text = field.split(b"\x00", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarScanError(f"bad {what} field {field!r} in the header at byte {at}") from None


def _number_or_none(field: bytes) -> int | None:
    try:
        return _number(field, "", 0)
    except TarScanError:
        return None


def _text(raw: bytes, at: int) -> str:
    try:
        return raw.split(b"\x00", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        raise TarScanError(f"member name {raw!r} at byte {at} is not UTF-8") from None


def _pax_records(data: bytes, at: int) -> dict[str, str]:
    records, pos = {}, 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
            key, _, value = data[space + 1:pos + length - 1].partition(b"=")
            records[key.decode("utf-8")] = value.decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise TarScanError(f"malformed PAX header at byte {at}") from None
        if length <= 0:
            raise TarScanError(f"malformed PAX header at byte {at}")
        pos += length
    return records


def _pax_size(value: str, name: str, at: int) -> int:
    """A PAX `size` record: a non-negative decimal integer (a negative one would send the scan backwards)."""
    if not value.isascii() or not value.isdigit():
        raise TarScanError(f"member {name!r} at byte {at} has a bad PAX size {value!r}")
    return int(value)


def scan(path: str) -> list[TarEntry]:
    """Every entry of an uncompressed tar, in order; raises `TarScanError` on any damage."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise TarScanError("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            headers: list[int] = []
            entries = list(_scan(mm, size, headers))
            damage = _verify_checksums(mm, headers)  # a message, not an exception: its traceback would
    if damage:                                       # keep an array of the map alive past its close
        raise TarScanError(damage)
    return entries


def _verify_checksums(mm: mmap.mmap, headers: list[int]) -> str:
    """Check every header's checksum at once: the sum of its bytes, the checksum field read as spaces.
    Returns what is wrong, or ""."""
    if not headers:
        return ""
    data = np.frombuffer(mm, dtype=np.uint8)
    offsets = np.asarray(headers, dtype=np.int64)
    for start in range(0, len(offsets), 8192):  # bounded temporary memory
        chunk = offsets[start:start + 8192]
        blocks = data[chunk[:, None] + np.arange(BLOCK)]
        field = blocks[:, 148:156].astype(np.int64)
        computed = blocks.sum(axis=1, dtype=np.int64) - field.sum(axis=1) + 8 * 32
        digits = field - ord("0")
        leading = np.cumprod((digits >= 0) & (digits <= 7), axis=1).astype(bool)  # the octal digits
        count = leading.sum(axis=1, keepdims=True)
        weights = np.where(leading, 8 ** np.clip(count - 1 - np.arange(8), 0, None), 0)
        stored = (digits * weights).sum(axis=1)
        signed = computed - 256 * ((blocks >= 128).sum(axis=1) - (field >= 128).sum(axis=1))
        padding = (field == 0) | (field == 32)
        odd_tail = (~leading & ~padding).any(axis=1)  # after the digits only NULs or spaces may follow
        for i in np.flatnonzero(((stored != computed) & (stored != signed)) | odd_tail):  # odd or damaged
            offset = int(chunk[i])
            if _number_or_none(mm[offset + 148:offset + 156]) not in (int(computed[i]), int(signed[i])):
                del data, blocks
                return "not a tar file (no valid header at byte 0)" if offset == 0 else \
                    f"bad header checksum at byte {offset}"
    del data
    return ""


# tar tools disagree on where the next header of such an entry is (tarfile and GNU tar skip no data),
# so members could hide in it from one reader and not another
_DIRECTORY_WITH_DATA = "the directory entry at byte {} has a non-zero size; refusing the shard"


def _scan(mm: mmap.mmap, size: int, headers: list[int]) -> Iterator[TarEntry]:
    pos, start, long_name, pax = 0, None, None, {}
    while True:
        if pos + BLOCK > size:
            if pos == size and pos > 0 and start is None:  # no end-of-archive blocks: tolerated, as by tar
                return
            raise TarScanError(f"truncated: the file ends inside the header at byte {pos}")
        header = mm[pos:pos + BLOCK]
        if header == _ZERO_BLOCK:
            if start is not None:
                raise TarScanError(f"an extended header at byte {start} is followed by the end of the archive")
            rest = mm[pos:size]
            if rest.count(0) != len(rest):
                raise TarScanError(f"data after the end-of-archive marker at byte {pos}")
            return
        if pos == 0 and _number_or_none(header[148:156]) != sum(header[:148]) + 256 + sum(header[156:]):
            raise TarScanError("not a tar file (no valid header at byte 0)")
        headers.append(pos)  # checksums are verified for all headers at once, after the scan
        entry_size = _number(header[124:136], "size", pos)
        data_offset = pos + BLOCK
        if entry_size < 0:
            raise TarScanError(f"the header at byte {pos} has a negative size")
        if data_offset + entry_size > size:
            raise TarScanError(f"truncated: the member at byte {pos} ends past the end of the file")
        kind_flag = header[156:157]
        next_pos = data_offset + padded(entry_size)
        if kind_flag in (b"x", b"L", b"K"):
            start = pos if start is None else start
            if kind_flag == b"x":
                pax.update(_pax_records(mm[data_offset:data_offset + entry_size], pos))
            elif kind_flag == b"L":
                long_name = _text(mm[data_offset:data_offset + entry_size], pos)
            pos = next_pos
            continue
        name = _text(header[0:100], pos)
        if header[257:263] == b"ustar\x00" and header[345] != 0:
            name = f"{_text(header[345:500], pos)}/{name}"
        name = pax.get("path", long_name or name)
        if any(key.startswith("GNU.sparse.") for key in pax):  # its data is a sparse map, not the file
            raise TarScanError(f"member {name!r} at byte {pos} is a sparse file; refusing the shard")
        if "size" in pax:
            entry_size = _pax_size(pax["size"], name, pos)
            next_pos = data_offset + padded(entry_size)
            if data_offset + entry_size > size:
                raise TarScanError(f"truncated: the member {name!r} ends past the end of the file")
        if kind_flag == b"5" and entry_size:
            raise TarScanError(_DIRECTORY_WITH_DATA.format(pos))
        if kind_flag in REGULAR_TYPES:
            kind = "file"
        elif kind_flag == b"g":
            kind = "global header"
        elif kind_flag in _KINDS:
            kind = _KINDS[kind_flag]
        else:
            raise TarScanError(f"member {name!r} at byte {pos} has unknown type {kind_flag!r}")
        yield TarEntry(name, kind, entry_size, data_offset, pos if start is None else start)
        pos, start, long_name, pax = next_pos, None, None, {}
