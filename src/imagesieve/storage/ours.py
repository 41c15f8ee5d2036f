"""Deleting an output file only when it is ours: named by a record of ours, a regular file inside the
output folder (never through a link), still at the size we recorded or a hard link to its input."""

from __future__ import annotations

import os

from imagesieve.storage import is_remote, join, storage_for


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
