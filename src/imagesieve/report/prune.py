"""Delete what an earlier build of a report folder wrote and this one no longer shows.

A report rebuilt with fewer groups (`report --groups 100` after 100k groups), or after the groups
changed, would otherwise keep every old page and thumbnail. Only files named as the report names its
own are deleted, and only in its own folders: data/meta.js is always rewritten; data/f<N>/<NNNNN>.js
(pages), data/ids/<NNNNN>.js (the ID index) and thumbs/<hex digest>.jpg. Symlinks are never followed
nor deleted, and any other file (a user's note, a copied image) is left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat

PAGE = re.compile(r"^\d{5}\.js$")
DATA_DIR = re.compile(r"^(?:f\d+|ids)$")
THUMB = re.compile(r"^[0-9a-f]{16}(?:[0-9a-f]{16})?\.jpg$")  # this digest, and the 16-digit one of earlier versions


def prune_report(out_dir: str, written: set[str], ours: set[str] | None = None) -> list[str]:
    """Delete the report's own files under out_dir whose relative path (with "/") is not in `written`;
    returns the paths deleted. `ours`: the files earlier builds recorded, the only ones deleted (a user's
    file named like a page or a thumbnail is not ours); None for a report made before such records. Folders
    of pages left empty are removed too."""
    deleted = []
    for folder in _own_dirs(os.path.join(out_dir, "data"), DATA_DIR):
        deleted += _prune_files(out_dir, folder, PAGE, written, ours)
        with contextlib.suppress(OSError):
            os.rmdir(folder)  # only succeeds when nothing is left in it
    thumbs = os.path.join(out_dir, "thumbs")
    if _is_real_dir(thumbs):
        deleted += _prune_files(out_dir, thumbs, THUMB, written, ours)
    return deleted


def _is_real_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _own_dirs(parent: str, pattern: re.Pattern) -> list[str]:
    if not _is_real_dir(parent):
        return []
    with os.scandir(parent) as entries:
        return sorted(e.path for e in entries if pattern.match(e.name) and e.is_dir(follow_symlinks=False))


def _prune_files(out_dir: str, folder: str, pattern: re.Pattern, written: set[str], ours: set[str] | None
                 ) -> list[str]:
    deleted = []
    with os.scandir(folder) as entries:
        for entry in entries:
            rel = os.path.relpath(entry.path, out_dir).replace(os.sep, "/")
            mine = ours is None or rel in ours
            if pattern.match(entry.name) and entry.is_file(follow_symlinks=False) and rel not in written and mine:
                os.remove(entry.path)
                deleted.append(entry.path)
    return sorted(deleted)
