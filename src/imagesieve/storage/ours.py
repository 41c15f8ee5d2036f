"""Deleting an output file only when it is ours: named by a record of ours, a regular file inside the
output folder (never through a link), still at the size we recorded or a hard link to its input."""

from __future__ import annotations

import filecmp
import os
import stat

from imagesieve.storage import is_remote, join, storage_for
from imagesieve.storage.local import file_fingerprint


def delete_if_ours(output_dir: str, relative_path: str, size: int | None, storage_options: dict | None = None,
                   source: str | None = None) -> int:
    """Delete OUT/relative_path if it is a regular file inside OUT (not through a link) and still has
    the size we recorded (None: any size), or is a hard link to the input file `source` (a --link run
    made it; editing the input in place changed its size too); returns 1 if deleted."""
    path = join(output_dir, relative_path)
    store = storage_for(path, storage_options)
    if not is_remote(path):
        inside = os.path.realpath(os.path.dirname(path)).startswith(os.path.realpath(output_dir) + os.sep) or \
            os.path.realpath(os.path.dirname(path)) == os.path.realpath(output_dir)
        if not inside or os.path.islink(path):
            return 0
    if not store.isfile(path) or (size is not None and store.size(path) != size and not same_file(path, source)):
        return 0
    store.delete_file(path)
    return 1


def same_file(path: str, source: str | None) -> bool:
    """Whether local `path` and `source` are one file (same device and inode): a hard link."""
    try:
        return source is not None and os.path.samestat(os.stat(path), os.stat(source))
    except OSError:
        return False


def local_version(path: str) -> str:
    """The version of a local output file a record keeps (`local.file_fingerprint`)."""
    return file_fingerprint(os.stat(path))


def refuse_replacing_unknown(path: str, previous: dict | None, publishing: dict | None) -> None:
    """Before a new output is renamed over local `path`: a file already there must be ours, the version
    the done marker of an earlier run records (`output_version`; a marker of an earlier imagesieve only
    its `output_size`), or the version a killed run was about to publish (`publishing`, recorded just
    before its rename). A file a user put there or edited since is never replaced. Raises naming the file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode):
        version = file_fingerprint(st)
        if any(_same_write(version, r.get("output_version")) for r in (previous, publishing) if r):
            return
        if previous and "output_version" not in previous and previous.get("output_size") == st.st_size:
            return
    raise _not_ours(path)


def _same_write(version: str, recorded: str | None) -> bool:
    """Whether a file's version (size-mtime-inode) is the one recorded, or that write still: the same
    modification time and size in another inode (the folder copied with `cp -p` or `rsync -a`), or in
    the same inode with another size (its data lost to a power cut before it reached the disk). An edit
    changes the modification time."""
    if recorded is None:
        return False
    size, mtime, inode = version.split("-")
    was_size, was_mtime, was_inode = recorded.split("-")
    return mtime == was_mtime and (size == was_size or inode == was_inode)


def refuse_replacing_unknown_copy(target: str, source: str, recorded_size: int | None, named: bool) -> None:
    """Before a kept image is placed at local `target` (an image folder's output): a file already there
    must be ours: a hard link to `source` (`--link`), the same bytes as `source` (an unchanged image),
    the size the chunk's done marker records (`recorded_size`), or named by the record a killed run wrote
    before placing its files (`named`). A file a user put there or edited is never replaced."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode) and (named or st.st_size == recorded_size or same_file(target, source)
                                     or filecmp.cmp(target, source, shallow=False)):
        return
    raise _not_ours(target)


def _not_ours(path: str) -> ValueError:
    return ValueError(f"{path}: this output file is not the one imagesieve wrote there (it was replaced or edited "
                      "since, or no run recorded it), so it is not replaced; move it away and rerun")
