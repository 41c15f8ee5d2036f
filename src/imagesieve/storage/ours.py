"""Deleting or replacing an output file only when it is ours: named by a record of ours, a regular file
inside the output folder (never through a link), still the version we recorded (size and modification
time, or the same bytes), or a hard link to its input."""

from __future__ import annotations

import filecmp
import os
import stat

import xxhash

from imagesieve.storage import join, storage_for
from imagesieve.storage.local import file_fingerprint


def delete_if_ours(output_dir: str, relative_path: str, size: int | None, storage_options: dict | None = None,
                   source: str | None = None, version: str | None = None) -> int:
    """Delete OUT/relative_path if it is a regular file inside OUT (not through a link) and still is the
    `version` we recorded (`same_write`; an edit that keeps the size is not), or, for records without a
    version, has the size we recorded (None: any size), or is a hard link to the input file `source` (a
    --link run made it; editing the input in place changed its size too); returns 1 if deleted."""
    path = join(output_dir, relative_path)
    store = storage_for(path, storage_options)
    if not store.remote:
        inside = os.path.realpath(os.path.dirname(path)).startswith(os.path.realpath(output_dir) + os.sep) or \
            os.path.realpath(os.path.dirname(path)) == os.path.realpath(output_dir)
        if not inside or os.path.islink(path):
            return 0
    if not store.isfile(path):
        return 0
    if version is not None:
        ours = same_write(store.fingerprint(path), version)
    else:
        ours = size is None or store.size(path) == size
    if not ours and not same_file(path, source):
        return 0
    store.delete_file(path)
    return 1


def same_file(path: str, source: str | None) -> bool:
    """Whether local `path` and `source` are one file (same device and inode): a hard link."""
    try:
        return source is not None and os.path.samestat(os.stat(path), os.stat(source))
    except OSError:
        return False


def same_write(version: str, recorded: str | None) -> bool:
    """Whether a file's version is the one recorded, or that write still: locally (size-mtime-inode) the
    same modification time and size in another inode (the folder copied with `cp -p` or `rsync -a`), or in
    the same inode with another size (its data lost to a power cut before it reached the disk); an edit
    changes the modification time. An object's version (size and ETag) must be the one recorded."""
    if recorded is None:
        return False
    if version == recorded:
        return True
    here, was = version.split("-"), recorded.split("-")
    if len(here) != 3 or len(was) != 3:
        return False
    return here[1] == was[1] and (here[0] == was[0] or here[2] == was[2])


def refuse_replacing_unknown(path: str, new: str, recorded: list[str | None], old_size: int | None = None,
                             storage_options: dict | None = None, digests: list[str] = ()) -> None:
    """Before the complete local file `new` is published at `path` (renamed there, or uploaded): a file
    already there must be ours: a version a record of ours names (`recorded`: the done marker's, those a
    killed run was about to publish; `same_write`), the size a marker of an earlier imagesieve recorded
    (`old_size`), the bytes a killed run was about to upload (`digests`, by `file_digest`: an object's
    version is known only once it is uploaded), or the very bytes of `new` (publishing them changes
    nothing). A file a user put there or edited since is never replaced. Raises naming it."""
    store = storage_for(path, storage_options)
    if store.remote:
        if not store.exists(path):
            return
        version, size = store.fingerprint(path), store.size(path)
    else:
        st = _existing_file(path)
        if st is None:
            return
        version, size = file_fingerprint(st), st.st_size
    if any(same_write(version, r) for r in recorded) or (old_size is not None and size == old_size):
        return
    if digests or size == os.path.getsize(new):
        with store.local_copy(path) as there:
            digest = file_digest(there)
        if digest in digests or digest == file_digest(new):
            return
    raise _not_ours(path)


def file_digest(path: str) -> str:
    """A digest of a local file's bytes (xxh3, 128 bits), read in chunks."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def refuse_replacing_unknown_copy(target: str, source: str, recorded: str | int | None, named: bool) -> None:
    """Before a kept image is placed at local `target` (an image folder's output): a file already there
    must be ours: a hard link to `source` (`--link`), the same bytes as `source` (an unchanged image),
    the version its chunk's done marker records (`recorded`; a marker of an earlier imagesieve: the size),
    or named by the record a killed run wrote before placing its files (`named`). A file a user put there
    or edited is never replaced."""
    st = _existing_file(target)
    if st is None:
        return
    ours = same_write(file_fingerprint(st), recorded) if isinstance(recorded, str) else st.st_size == recorded
    if named or ours or same_file(target, source) or filecmp.cmp(target, source, shallow=False):
        return
    raise _not_ours(target)


def small_file_is_ours(target: str, recorded: str | None, wrote_before: bool, named: list[str],
                       storage_options: dict | None = None, data: bytes | None = None) -> bool:
    """Whether the small output at `target` (an img2dataset table or stats file) is ours: the version the
    shard's record names (a record of an earlier imagesieve: `wrote_before`, that it wrote one), bytes a
    killed run was about to write there (`named`: their digests), or the very bytes `data` written now."""
    store = storage_for(target, storage_options)
    if same_write(store.fingerprint(target), recorded) if recorded else wrote_before:
        return True
    there = store.read_bytes(target)
    return xxhash.xxh3_128_hexdigest(there) in named or there == data


def refuse_replacing_unknown_bytes(target: str, data: bytes, recorded: str | None, wrote_before: bool,
                                   storage_options: dict | None = None, named: list[str] = ()) -> None:
    """Before `data` (a small output) is written at `target`: a file already there must be ours
    (`small_file_is_ours`)."""
    if storage_for(target, storage_options).exists(target) and \
            not small_file_is_ours(target, recorded, wrote_before, list(named), storage_options, data):
        raise _not_ours(target)


def _existing_file(path: str) -> os.stat_result | None:
    """The local output already at `path` (None: nothing there); anything but a regular file (a link, a
    folder) is never ours to replace."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise _not_ours(path)
    return st


def _not_ours(path: str) -> ValueError:
    return ValueError(f"{path}: this output file is not the one imagesieve wrote there (it was replaced or edited "
                      "since, or no run recorded it), so it is not replaced; move it away and rerun")
