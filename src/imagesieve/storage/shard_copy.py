"""Where a remote shard's bytes are, in a form any process can use: its URL and the version read.

The tar code works on local files (mmap, pread), so an object is streamed once into a private spool
file. A task that names that spool path is only good inside the process that made it: a stage in
another worker pool, or on another Ray node, would read a path that is gone. A `ShardCopy` travels
instead: pickled, it carries (URL, version, storage options) and no path; in each process the first
read makes one local copy, checked to be the version the reader listed, shared by every task of that
shard there (whatever parts or batches they came in), and deleted when the last of them is gone.
"""

from __future__ import annotations

import os
import shutil
import weakref
from typing import Any

from imagesieve.storage.spool import spool_folder_path

# (url, version) -> the local copy this process holds of it, while some task still refers to it
_held: weakref.WeakValueDictionary[tuple[str, str], _LocalFile] = weakref.WeakValueDictionary()


class ShardChangedError(OSError):
    """The object is no longer the version the run listed and read: what was made from it would not match."""


class _LocalFile:
    """One downloaded copy; its spool folder is deleted when no `ShardCopy` refers to it any more."""

    def __init__(self, url: str, version: str | None, storage_options: dict | None) -> None:
        from imagesieve.storage import storage_for

        store = storage_for(url, storage_options)
        found = store.fingerprint(url)
        if version is not None and found != version:
            raise ShardChangedError(f"{url}: the object changed since the run listed it (version {version}, "
                                    f"now {found}); rerun to read it again")
        folder = spool_folder_path()
        self._cleanup = weakref.finalize(self, shutil.rmtree, folder, True)
        self.path = os.path.join(folder, url.rstrip("/").rpartition("/")[2] or "object")
        store.get_file(url, self.path)
        if store.fingerprint(url) != found:
            raise ShardChangedError(f"{url}: the object changed while it was being read; rerun to read it again")
        self.version = found

    @property
    def released(self) -> bool:
        return not self._cleanup.alive

    def release(self) -> None:
        self._cleanup()


class ShardCopy:
    """A remote shard as a local file, made on first use in each process (see the module's docstring)."""

    def __init__(self, url: str, version: str | None = None, storage_options: dict | None = None) -> None:
        self.url, self.version, self.storage_options = url, version, storage_options
        self._file: _LocalFile | None = None

    def path(self) -> str:
        """The local file holding the version read, downloading it if this process has none yet."""
        if self._file is None or self._file.released:
            held = _held.get((self.url, self.version)) if self.version is not None else None
            if held is None or held.released:
                held = _LocalFile(self.url, self.version, self.storage_options)
                self.version = held.version
                _held[(self.url, self.version)] = held
            self._file = held
        return self._file.path

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "version": self.version, "storage_options": self.storage_options, "_file": None}

    def __repr__(self) -> str:
        return f"ShardCopy({self.url!r}, version={self.version!r})"


def shard_copy_of(path: str, storage_options: dict | None = None) -> ShardCopy | None:
    """The `ShardCopy` through which tasks read the shard `path` when it is an object (a URL); None for a
    local file, which every process reads where it lies (mmap, pread: the fast path)."""
    from imagesieve.storage import is_remote

    return ShardCopy(path, storage_options=storage_options) if is_remote(path) else None


def release_local_copies() -> None:
    """Delete every copy this process holds: a worker calls it as it ends, since a worker leaves with
    `os._exit` (or is killed by Ray) and would not run the finalizers. A task still held that reads
    again makes a fresh copy."""
    for held in list(_held.values()):
        held.release()
