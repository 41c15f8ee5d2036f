"""Members into samples, for a whole shard in one compiled pass (numba), over the names' bytes.

The rule is WebDataset's: `dir/KEY.ext.more` belongs to sample `dir/KEY` with extension `ext.more`;
consecutive members with one key form a sample; a file name with no extension or starting with a
dot (`README`, macOS's `._0001.jpg`) and directory entries belong to no sample. Done per member in
Python this cost more than copying the shard, so this pass also gives each sample's key bytes (an
Arrow string array, hashed by `key_hash`), its image member (the rule of `names.image_rank`), and
flags the names that `check_member_name` must look at. Anything irregular (a key or a member seen
twice) is left to the exact one-by-one path in `grouping.py`, which says what is wrong. Its byte
comparison (`equal_bytes`) is also `id_verify`'s.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit

from imagesieve.tar.key_hash import hash_strings

OK, REPEATED = 0, 1


def _pattern_table(words: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The words (lower case ASCII, no dot: `_image_rank` relies on it) as rows of bytes, and their lengths."""
    assert all(w == w.lower() and w.isascii() and "." not in w for w in words)
    longest = max(len(w) for w in words)
    table = np.zeros((len(words), longest), np.uint8)
    for i, word in enumerate(words):
        table[i, :len(word)] = np.frombuffer(word.encode("ascii"), np.uint8)
    return table, np.array([len(w) for w in words], np.int64)


@njit(cache=True)
def _listed(buf, start, end, patterns, lengths):
    """Which listed word buf[start:end] is, in any case (ASCII), or -1."""
    n = end - start
    for w in range(patterns.shape[0]):
        if lengths[w] != n:
            continue
        same = True
        for i in range(n):
            c = buf[start + i]
            if 65 <= c <= 90:
                c += 32
            if c != patterns[w, i]:
                same = False
                break
        if same:
            return w
    return -1


@njit(cache=True)
def _image_rank(buf, start, end, patterns, lengths):
    """`names.image_rank` of the extension buf[start:end]: its place in the list when the whole extension
    is listed, else the list's length plus the place of its last dot-part; -1 when it names no image.
    No listed extension holds a dot, so only an extension without one can be listed whole: one comparison
    of the last dot-part decides, as cheap as the first-image test it replaced (measured)."""
    last = start
    for p in range(start, end):
        if buf[p] == 46:
            last = p + 1
    w = _listed(buf, last, end, patterns, lengths)
    if w < 0:
        return -1
    return w if last == start else patterns.shape[0] + w


@njit(cache=True)
def equal_bytes(a, a_start, b, b_start, length):
    """Whether a[a_start:a_start + length] == b[b_start:b_start + length]."""
    for q in range(length):  # noqa: SIM110 (numba compiles no all() over a generator)
        if a[a_start + q] != b[b_start + q]:
            return False
    return True


@njit(cache=True)
def _suspicious(buf, s, e):
    """The cheap test of `check_member_name`: a name that may escape a folder is checked in Python."""
    if e > s and (buf[s] == 47 or buf[s] == 58):
        return True
    if e - s >= 2 and buf[s + 1] == 58:
        return True
    for p in range(s, e):
        c = buf[p]
        if c == 0 or c == 92 or (c == 46 and p + 1 < e and buf[p + 1] == 46):
            return True
    return False


@njit(cache=True)
def _group(buf, offsets, is_dir, patterns, lengths):
    n = len(offsets) - 1
    sample_of = np.full(n, -1, np.int32)
    ext_start = np.full(n, -1, np.int64)  # where each member's extension starts in buf
    suspicious = np.zeros(n, np.bool_)
    key_bytes = np.empty(max(len(buf), 1), np.uint8)
    key_offsets = np.zeros(n + 1, np.int64)
    image_member = np.full(n, -1, np.int64)
    samples, at = 0, 0
    key_start, key_len, first = -1, -1, 0  # the current sample's key, in buf, and its first member
    best = 0  # the rank of the current sample's image member so far (`names.image_rank`; 0: none can beat it)
    for j in range(n):
        s, e = offsets[j], offsets[j + 1]
        suspicious[j] = _suspicious(buf, s, e)
        if is_dir[j]:
            continue
        base = s
        for p in range(s, e):
            if buf[p] == 47:
                base = p + 1
        dot = -1
        for p in range(base, e):
            if buf[p] == 46:
                dot = p
                break
        if dot <= base:
            continue  # no extension, or a hidden file: no sample's member
        length = dot - s
        if not (length == key_len and equal_bytes(buf, s, buf, key_start, length)):
            for q in range(length):  # (a loop: a slice assignment here costs 3 s of compiling)
                key_bytes[at + q] = buf[s + q]
            at += length
            samples += 1
            key_offsets[samples] = at
            key_start, key_len, first = s, length, j
            best = 1 << 30
        else:
            ext_length = e - dot - 1
            for i in range(first, j):  # the same extension twice in one sample
                if sample_of[i] == samples - 1 and offsets[i + 1] - ext_start[i] == ext_length \
                        and equal_bytes(buf, ext_start[i], buf, dot + 1, ext_length):
                    return sample_of, key_bytes[:at], key_offsets[:samples + 1], suspicious, image_member[:samples], \
                        REPEATED
        sample_of[j] = samples - 1
        ext_start[j] = dot + 1
        if best > 0:
            rank = _image_rank(buf, dot + 1, e, patterns, lengths)
            if 0 <= rank < best:
                best = rank
                image_member[samples - 1] = j
    return sample_of, key_bytes[:at], key_offsets[:samples + 1], suspicious, image_member[:samples], OK


def group(buf: np.ndarray, offsets: np.ndarray, is_dir: np.ndarray, image_extensions: tuple[str, ...]
          ) -> tuple[np.ndarray, pa.LargeStringArray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Samples of the members named buf[offsets[j]:offsets[j + 1]] (UTF-8, already validated), as
    `grouping.Grouping`'s fields in order (`table` wraps them, so this kernel needs nothing of it); None
    when a key or a member repeats (the one-by-one path then names it)."""
    patterns, lengths = _pattern_table(image_extensions)
    sample_of, key_bytes, key_offsets, suspicious, image_member, status = _group(
        buf, offsets, is_dir, patterns, lengths)
    if status != OK:
        return None
    keys = pa.LargeStringArray.from_buffers(len(key_offsets) - 1, pa.py_buffer(key_offsets),
                                            pa.py_buffer(key_bytes))
    hashes = hash_strings(keys)
    if len(np.unique(hashes)) != len(hashes):
        return None  # a key seen twice (or, rarely, two keys sharing a hash: the exact path decides)
    return sample_of, keys, hashes, image_member, suspicious
