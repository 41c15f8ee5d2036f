"""The headers of an uncompressed tar, parsed in bulk into arrays by a compiled loop (numba).

A shard holds tens of thousands of small members; a Python object per header costs more than
copying the shard. `parse_headers` walks the header chain in one compiled loop, verifies every
checksum, and returns offsets, sizes and type flags as arrays and the names as one byte string.
It reads headers with `pread` (called from the compiled loop), a 4 KB window at a time: reading
only the headers, not mapping the file, costs a third as much on large samples (a page fault per
header). A page holds the small members after an image (`.txt`, `.json` of a few hundred bytes
each) and the next sample's header, so a sample usually costs one call; a larger window costs
more than it saves, as copying it is most of the cost (8 KB: 2.35 µs a sample, 4 KB: 1.73). Extended headers
(PAX `x`/`g`, GNU long names `L`/`K`) and numbers in odd encodings are rare: when the loop meets
one it stops, and the caller lists the tar with `tarfile` instead (`listing`, strict by the same rules).
Every kind of damage is reported with its byte offset, as there; a property test holds both against
Python's `tarfile`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, types

from imagesieve.tar.listing import DIRECTORY_WITH_DATA

BLOCK = 512
OK, FALLBACK, FULL = 0, 1, 2
TRUNCATED_HEADER, NOT_A_TAR, BAD_CHECKSUM, PAST_END, AFTER_END, READ_FAILED, DIRECTORY_DATA = 3, 4, 5, 6, 7, 8, 9
_TAIL_CHUNK = 1 << 16
_WINDOW = 1 << 12

# libc's pread, linked by name (so the compiled loop stays in numba's on-disk cache)
_pread = types.ExternalFunction("pread", types.int64(types.int32, types.voidptr, types.uint64, types.int64))


class Headers(NamedTuple):
    """One row per entry (not extended headers), in file order."""

    header_offsets: np.ndarray  # int64
    data_offsets: np.ndarray  # int64
    sizes: np.ndarray  # int64
    types: np.ndarray  # uint8: the type flag byte
    names: np.ndarray  # uint8: every entry's name (ustar prefix + "/" + name when there is a prefix), end to end
    name_offsets: np.ndarray  # int64, one more than entries: entry j's name is names[name_offsets[j]:...[j + 1]]


@njit(cache=True, inline="always")
def _octal(buf, start, width):
    """The value of an octal field (leading spaces, then digits, then NULs/spaces), or -1 if odd."""
    pos, end, value = start, start + width, 0
    while pos < end and buf[pos] == 32:
        pos += 1
    digits = 0
    while pos < end and 48 <= buf[pos] <= 55:
        value = value * 8 + (buf[pos] - 48)
        pos += 1
        digits += 1
    while pos < end:
        if buf[pos] != 0 and buf[pos] != 32:
            return -1
        pos += 1
    return value


@njit(cache=True, inline="always")
def _copy_field(buf, start, width, out, at):
    """Copy a NUL-terminated field to `out` at `at`; returns the new end."""
    n = 0
    while n < width and buf[start + n] != 0:
        out[at + n] = buf[start + n]
        n += 1
    return at + n


@njit(cache=True)
def _walk(fd, size, pos, hdr, data, sizes, types, name_ends, names):
    """Parse entries from `pos` until the end, an extended header, damage, or full arrays.
    Returns (entries parsed, bytes of names written, status, byte offset where it stopped)."""
    buf = np.empty(_TAIL_CHUNK, np.uint8)
    address = buf.ctypes.data
    window_start, window_end = 0, 0  # the bytes of the file now in `window`
    window = np.empty(_WINDOW, np.uint8)
    n = 0
    at = 0
    capacity = hdr.shape[0]
    while True:
        if pos + BLOCK > size:
            if pos == size and pos > 0:  # no end-of-archive blocks: tolerated, as by tar
                return n, at, OK, pos
            return n, at, TRUNCATED_HEADER, pos
        if not (window_start <= pos and pos + BLOCK <= window_end):
            # read a window, not a block: the small members after an image (.txt, .json) and the
            # next sample's header then come with one call
            want = min(_WINDOW, size - pos)
            if _pread(fd, window.ctypes.data, want, pos) != want:
                return n, at, READ_FAILED, pos
            window_start, window_end = pos, pos + want
        h = pos - window_start
        block = window[h:h + BLOCK]
        total = 0
        high = 0  # bytes >= 128: old writers summed bytes as signed, which tar (and tarfile) accept
        for i in range(BLOCK):  # plain sums, which the compiler vectorises
            total += np.int64(block[i])
            high += np.int64(block[i] >> 7)
        zero = total == 0
        for i in range(148, 156):  # the checksum is computed with its own field read as spaces
            total += 32 - np.int64(block[i])
            high -= np.int64(block[i] >> 7)
        if zero:
            tail = pos
            while tail < size:  # everything after the end-of-archive marker must be zeros
                want = min(_TAIL_CHUNK, size - tail)
                if _pread(fd, address, want, tail) != want:
                    return n, at, READ_FAILED, tail
                for i in range(want):
                    if buf[i] != 0:
                        return n, at, AFTER_END, pos
                tail += want
            return n, at, OK, pos
        stored = _octal(block, 148, 8)
        if stored != total and stored != total - 256 * high:
            if stored < 0:
                return n, at, FALLBACK, pos  # an odd encoding: tarfile decides
            return n, at, NOT_A_TAR if pos == 0 else BAD_CHECKSUM, pos
        flag = block[156]
        if flag == 120 or flag == 103 or flag == 76 or flag == 75:  # x g L K
            return n, at, FALLBACK, pos
        entry_size = _octal(block, 124, 12)
        if entry_size < 0:
            return n, at, FALLBACK, pos  # base-256 or odd: tarfile decides
        if flag == 53 and entry_size != 0:
            return n, at, DIRECTORY_DATA, pos
        start = pos + BLOCK
        if start + entry_size > size:
            return n, at, PAST_END, pos
        if n == capacity:
            return n, at, FULL, pos
        hdr[n] = pos
        data[n] = start
        sizes[n] = entry_size
        types[n] = flag
        is_ustar = (block[257] == 117 and block[258] == 115 and block[259] == 116
                    and block[260] == 97 and block[261] == 114 and block[262] == 0)
        if is_ustar and block[345] != 0:
            at = _copy_field(block, 345, 155, names, at)
            names[at] = 47  # "/"
            at += 1
        name_at = at
        at = _copy_field(block, 0, 100, names, at)
        if flag == 0 and entry_size != 0 and at > name_at and names[at - 1] == 47:
            return n, at, DIRECTORY_DATA, pos  # an old-style directory ("name/", type NUL), as tar reads it
        name_ends[n] = at
        n += 1
        pos = start + (entry_size + BLOCK - 1) // BLOCK * BLOCK


class BulkParseError(ValueError):
    """Damage found by the bulk parser: `status` says what, `offset` where."""

    def __init__(self, status: int, offset: int) -> None:
        super().__init__(_MESSAGES[status].format(offset))
        self.status, self.offset = status, offset


_MESSAGES = {
    TRUNCATED_HEADER: "truncated: the file ends inside the header at byte {}",
    NOT_A_TAR: "not a tar file (no valid header at byte 0)",
    BAD_CHECKSUM: "bad header checksum at byte {}",
    PAST_END: "truncated: the member at byte {} ends past the end of the file",
    AFTER_END: "data after the end-of-archive marker at byte {}",
    READ_FAILED: "the file changed or could not be read at byte {}",
    DIRECTORY_DATA: DIRECTORY_WITH_DATA,
}


def parse_headers(fd: int, size: int) -> Headers | None:
    """Every entry of the tar open as `fd` (`size` bytes), or None when it holds extended headers or
    odd number encodings (list it with `listing.list_members` then). Raises `BulkParseError` on damage."""
    if size == 0:
        raise BulkParseError(NOT_A_TAR, 0)
    parts: list[tuple[np.ndarray, ...]] = []
    names: list[np.ndarray] = []
    name_ends: list[np.ndarray] = []
    pos, names_before = 0, 0
    capacity = min(size // BLOCK + 1, 1 << 16)
    while True:
        arrays = (np.empty(capacity, np.int64), np.empty(capacity, np.int64), np.empty(capacity, np.int64),
                  np.empty(capacity, np.uint8))
        ends = np.empty(capacity, np.int64)
        name_bytes = np.empty(capacity * 256, np.uint8)  # prefix 155 + "/" + name 100
        n, at, status, pos = _walk(fd, size, pos, *arrays, ends, name_bytes)
        parts.append(tuple(a[:n] for a in arrays))
        names.append(name_bytes[:at].copy() if status == FULL else name_bytes[:at])
        name_ends.append(ends[:n] + names_before)
        names_before += at
        if status == FULL:
            continue
        if status == FALLBACK:
            return None
        if status != OK:
            raise BulkParseError(status, pos)
        break
    columns = (np.concatenate(column) for column in zip(*parts, strict=True))
    name_offsets = np.concatenate([np.zeros(1, np.int64), *name_ends])
    return Headers(*columns, names[0] if len(names) == 1 else np.concatenate(names), name_offsets)
