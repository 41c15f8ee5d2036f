"""Where built ID indexes are kept between runs: a cache private to the user, keyed by content.

An index decides what is deleted, so the cache must be impossible to poison: it lives in the
user's own cache folder (never the shared system temp folder), in a subfolder created with mode
0700 whose owner is checked before every use, symlinks are never followed, and an entry is named
by the digest of the ID files' content and checked against that name when loaded. It holds at
most `max_entries` indexes; the least recently used are deleted (only entries of its own naming,
inside its own private folder).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import stat
import tempfile

import xxhash

from imagesieve.matching.id_build import DEFAULT_BUDGET, build_index_isolated
from imagesieve.matching.id_folder import check_id_column, check_id_folder, content_digest, list_parquet_files
from imagesieve.matching.id_index import FORMAT, IdIndex
from imagesieve.util.cache_dir import default_cache_dir

MAX_ENTRIES = 8
_ENTRY = re.compile(r"^[0-9a-f]{32}$")
_BUILD_PREFIX = ".build-"


class CacheError(RuntimeError):
    """The cache folder cannot be trusted (another owner, a symlink, writable by others)."""


def private_folder(path: str) -> str:
    """Create `path` (mode 0700) or check that it is a real folder of this user that no one else can write."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise CacheError(f"cache folder {path} is a symlink or not a folder; refusing to use it "
                         "(pass another --cache-dir)")
    if info.st_uid != os.getuid():
        raise CacheError(f"cache folder {path} belongs to another user (uid {info.st_uid}); refusing to use it "
                         "(pass another --cache-dir)")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)  # ours: make it private before trusting what is in it
    return path


INDEX_FOLDER = f"id-index-v{FORMAT}"  # one per format: versions sharing a cache never see each other's entries


def build_shared_index(directory: str, id_field: str, cache_dir: str | None = None,
                       max_entries: int = MAX_ENTRIES, check_folder: bool = True, budget: int = DEFAULT_BUDGET) -> str:
    """The folder of the index of the IDs under `directory`: built once (under a lock, in at most about
    `budget` bytes of memory), then reused by every worker and by later runs with the same content."""
    files = list_parquet_files(directory)
    if check_folder:
        check_id_folder(directory, files)
    for path in files:  # here too, not only when building: an index cached by an older version is no answer
        check_id_column(path, id_field)
    root = private_folder(os.path.join(cache_dir or default_cache_dir(), INDEX_FOLDER))
    key = content_digest(files, id_field)
    target = os.path.join(root, key)
    lock_fd = os.open(target + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        if not _valid_entry(target, key):
            _remove_entry(target)
            for name in os.listdir(root):  # what a killed build of this key left
                if name.startswith(f"{_BUILD_PREFIX}{key}-"):
                    shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            _build(files, id_field, target, key, budget)
        os.utime(target)  # recently used: pruned last
    finally:
        os.close(lock_fd)
    prune(root, max_entries, keep=key)
    return target


def _build(files: list[str], id_field: str, target: str, key: str, budget: int) -> None:
    building = tempfile.mkdtemp(prefix=f"{_BUILD_PREFIX}{key}-", dir=os.path.dirname(target))
    try:
        build_index_isolated(files, id_field, building, budget)
        with open(os.path.join(building, "entry.json"), "w", encoding="utf-8") as f:
            json.dump({"key": key, "files": files, "id_field": id_field, "digest": _entry_digest(building)}, f)
        os.rename(building, target)
    finally:
        shutil.rmtree(building, ignore_errors=True)


def _valid_entry(target: str, key: str) -> bool:
    """A complete entry of this key, of ours (a real folder, not a link)."""
    try:
        info = os.lstat(target)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            return False
        with open(os.path.join(target, "entry.json"), encoding="utf-8") as f:
            entry = json.load(f)
        return (entry.get("key") == key and IdIndex.files_complete(target)
                and entry.get("digest") == _entry_digest(target))
    except (OSError, ValueError):
        return False


def _entry_digest(folder: str) -> str:
    """A digest of the index's files: a damaged cache (a flipped byte, the same size) is rebuilt, not
    trusted, since a damaged index would report listed IDs as absent. Read once per run (by the
    driver), at page-cache speed: ~0.3 s for 100M IDs."""
    digest = xxhash.xxh3_128()
    for name in ("hashes.bin", "offsets.bin", "ids.bin", "fence.bin", "index.json"):
        with open(os.path.join(folder, name), "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def _remove_entry(target: str) -> None:
    if os.path.islink(target) or os.path.isfile(target):
        os.remove(target)
    elif os.path.isdir(target):
        shutil.rmtree(target)


def prune(root: str, max_entries: int, keep: str) -> list[str]:
    """Delete the least recently used entries beyond `max_entries`.

    Only names this module makes are touched, inside the private folder; an entry whose lock is
    held (being built or checked) is skipped. Workers that mapped a deleted entry keep their mapping.
    """
    removed = []
    names = os.listdir(root)
    entries = sorted((os.lstat(os.path.join(root, n)).st_mtime, n) for n in names if _ENTRY.match(n))
    excess = [n for _, n in entries if n != keep][:max(0, len(entries) - max_entries)]
    for name in excess:
        path = os.path.join(root, name)
        lock = os.path.join(root, name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _remove_entry(path)
            os.remove(lock)
            removed.append(path)
        except BlockingIOError:
            continue  # being built or checked by another run
        finally:
            os.close(fd)
    return removed
