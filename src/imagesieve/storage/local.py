"""The local file system: plain POSIX calls, the fast path (shards are read and copied with mmap/pread)."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def local_path(path: str) -> str:
    """`file:///data/x` -> `/data/x`; anything else unchanged."""
    return path[len("file://"):] if path.startswith("file://") else path


def file_fingerprint(st: os.stat_result) -> str:
    """One version of a local file, as runs record it: size and modification time (ns), as make and rsync
    compare files, and the inode, so that a file replaced by another of the same size and time (a copy
    made with `cp -p`, a restored backup) is another version. Not the ctime: hard links made by
    `--link` change it without changing the content."""
    return f"{st.st_size}-{st.st_mtime_ns}-{st.st_ino}"


class LocalStorage:
    """Local paths (and `file://` URLs). Atomic writes, locks and temp cleanup are `runfolder`'s."""

    remote = False

    def exists(self, path: str) -> bool:
        return os.path.exists(local_path(path))

    def isfile(self, path: str) -> bool:
        return os.path.isfile(local_path(path))

    def isdir(self, path: str) -> bool:
        return os.path.isdir(local_path(path))

    def size(self, path: str) -> int:
        return os.path.getsize(local_path(path))

    def fingerprint(self, path: str) -> str:
        return file_fingerprint(os.stat(local_path(path)))

    def list_files(self, folder: str) -> list[str]:
        """Every regular file under `folder` (recursively, links not followed), sorted."""
        return sorted(os.path.join(root, name) for root, _, names in os.walk(local_path(folder)) for name in names)

    def list_folder(self, folder: str) -> list[str]:
        """The paths of the entries right in `folder` (not below it), in no particular order."""
        return [os.path.join(folder, name) for name in os.listdir(local_path(folder))]

    def glob(self, pattern: str) -> list[str]:
        """The regular files matching `pattern` (`**` reaches into subfolders), sorted."""
        return sorted(p for p in glob.glob(local_path(pattern), recursive=True) if os.path.isfile(p))

    def delete_file(self, path: str) -> None:
        """Delete one regular file inside its folder, never through a link (only files the run's records name)."""
        path = local_path(path)
        if os.path.islink(path) or os.path.realpath(os.path.dirname(path)) != os.path.abspath(os.path.dirname(path)):
            raise OSError(f"{path}: not deleted, a symlink is on its way")
        os.unlink(path)

    def missing(self, path: str) -> FileNotFoundError:
        """The error for a path that names nothing."""
        return FileNotFoundError(f"{path}: no such file or folder")

    def read_bytes(self, path: str) -> bytes:
        with open(local_path(path), "rb") as f:
            return f.read()

    @contextmanager
    def local_copy(self, path: str) -> Iterator[str]:
        """A local file with the content of `path`: the file itself."""
        yield local_path(path)

    @contextmanager
    def local_tree(self, folder: str, include: Callable[[str], bool]) -> Iterator[str]:
        """A local folder holding the files of `folder` that `include` accepts: the folder itself."""
        yield local_path(folder)

    @contextmanager
    def writable(self, path: str) -> Iterator[str]:
        """Where to write `path`: the path itself (writers rename a temp file into place)."""
        yield local_path(path)

    @contextmanager
    def writable_tree(self, folder: str) -> Iterator[str]:
        """Where to write the files of `folder`: the folder itself (each file written atomically)."""
        yield local_path(folder)
