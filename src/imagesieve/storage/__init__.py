"""One storage interface for everything a run reads and writes: local paths and object storage.

`storage_for(path, storage_options)` returns the backend of a path: `LocalStorage` for a local path
(or `file://`), `RemoteStorage` (fsspec: `s3://`, `gs://`, ...) for a URL. Both offer the same few
operations: list, fingerprint, read, atomic publish, stale temp cleanup, a run lock, and a local
file to read (`local_copy`) or write (`writable`). Tar scanning and copying always work on local
files (mmap, pread): a remote shard is streamed once into a private spool file first, and an
output is written to a local spool file and published when complete, so the local fast path is
the only one. `runfolder` lays out a run's output folder over this interface, `listing` lists input.

Only this package tells a local path from a URL (`is_remote`; `tests/test_layering.py` refuses it
elsewhere): code above it asks for what it needs (a local copy, a published file, a path's `parent`,
whether a folder `supports_hard_links`) and the backend decides how.
"""

from __future__ import annotations

import os
import posixpath
import re
from typing import TYPE_CHECKING

from imagesieve.storage.local import LocalStorage, local_path

if TYPE_CHECKING:
    import pyarrow as pa

    from imagesieve.storage.remote import RemoteStorage


def is_remote(path: str) -> bool:
    """A URL of a backend other than the local file system (`s3://`, `gs://`, `memory://`...)."""
    return "://" in path and not path.startswith("file://")


def join(base: str, *parts: str) -> str:
    """Join path parts with "/" for URLs, the OS separator for local paths."""
    return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


_ONE_SLASH_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:/(?!/)")


def as_given(path: str) -> str:
    """A path as the user gave it, made what the rest of the code reads: a `file://` URL is its local path;
    a URL with one slash after its scheme (`file:/x`, `memory:/x`), which would be taken for a local folder
    named `file:` in the current one, is refused, saying how to write it."""
    if path.startswith("file://"):
        return local_path(path)
    if _ONE_SLASH_URL.match(path) and not os.path.exists(path):
        scheme, rest = path.split(":", 1)
        raise ValueError(f"{path!r} reads as a local folder named '{scheme}:' in the current one: write "
                         f"{scheme}://{rest} for a URL, or ./{path} for a local folder")
    return path


def absolute(path: str) -> str:
    """An absolute local path, or the URL unchanged (without a trailing slash)."""
    return path.rstrip("/") if is_remote(path) else os.path.abspath(local_path(path))


def normal_url(url: str) -> str:
    """`url` as overlap checks compare it: one scheme for each fsspec backend's aliases (`s3a://` is s3fs's
    `s3://`, `gcs://` is `gs://`), no leading or trailing slash on the path (`memory:///a` is `memory://a`)."""
    from fsspec.registry import known_implementations

    scheme, rest = url.split("://", 1)
    backend = known_implementations.get(scheme, {}).get("class")
    if backend is not None:
        scheme = min(p for p, spec in known_implementations.items() if spec.get("class") == backend)
    return f"{scheme}://{rest.strip('/')}"


def is_under(path: str, folder: str) -> bool:
    """Whether `path` lies inside `folder` (or is it): real paths for local ones, URL prefixes for URLs
    (compared as `normal_url`s: `s3a://b/x` lies inside `s3://b`)."""
    if is_remote(path) != is_remote(folder):
        return False
    if is_remote(path):
        path, folder = normal_url(path), normal_url(folder)
        return path == folder or path.startswith(folder + "/")
    path, folder = os.path.realpath(local_path(path)), os.path.realpath(local_path(folder))
    return path == folder or path.startswith(folder + os.sep)


def check_url(url: str) -> None:
    """Refuse a URL with an empty path segment (`s3://b//data`): object storage keeps it in the key, so it
    names other objects than `s3://b/data`, a difference no user means and every check would miss."""
    scheme, rest = url.split("://", 1)
    if "//" in rest.strip("/"):
        fixed = f"{scheme}://{'/'.join(p for p in rest.split('/') if p)}"
        raise ValueError(f"{url}: the path has an empty segment ('//'), which object storage keeps in the key, so "
                         f"it names other objects than {fixed}; write {fixed}")


def separator(path: str) -> str:
    """The separator of `path`'s components: "/" in a URL, the OS's in a local path."""
    return "/" if is_remote(path) else os.sep


def parent(path: str) -> str:
    """The folder holding `path`: `os.path.dirname` of a local path, the prefix before a URL's last "/"."""
    return path.rsplit("/", 1)[0] if is_remote(path) else os.path.dirname(path)


def canonical(path: str) -> str:
    """The one spelling of `path` that two names of one file share, to compare them: a local path's real
    path (links resolved), a URL's `normal_url` (`s3a://` is `s3://`)."""
    return normal_url(path) if is_remote(path) else os.path.realpath(local_path(path))


def listed_path(line: str, folder: str) -> str:
    """The path a line of a list file in `folder` names: a URL (`file://` too) as it is, a local path
    relative to `folder` (with `~` expanded)."""
    return line if "://" in line else os.path.join(folder, os.path.expanduser(line))


def local_file(path: str) -> str | None:
    """The local path of `path` when it names a regular file on this machine (`file://` stripped); None
    otherwise, a URL included: what only a local file can be (a list file of shards) is read with `open`."""
    if is_remote(path):
        return None
    path = local_path(path)
    return path if os.path.isfile(path) else None


def local_folder(path: str) -> str | None:
    """The local path of `path` when it names a folder on this machine (`file://` stripped); None otherwise,
    a URL included (an image folder is read only from a local or mounted folder)."""
    if is_remote(path):
        return None
    path = local_path(path)
    return path if os.path.isdir(path) else None


def exists_locally(path: str) -> bool:
    """Whether `path` names something on this machine's file system (False for a URL: it names an object,
    never a local file, whatever local folder happens to be called `s3:`)."""
    return not is_remote(path) and os.path.exists(path)


PATTERN_CHARS = "*?[{"  # a glob's or a brace pattern's


def is_pattern(path: str) -> bool:
    """Whether `path` is a glob or brace pattern: it holds their characters and, locally, names nothing as
    written. A shard that exists under a name like `x[1].tar` or `s{0..1}.tar` is that very file, never
    the others a pattern would match (`x1.tar`); a URL's object is looked up when it is listed."""
    if not any(c in path for c in PATTERN_CHARS):
        return False
    return is_remote(path) or not os.path.lexists(local_path(path))


def missing_locally(path: str) -> bool:
    """Whether `path` is a local path that names nothing (False for a URL: whether an object exists is told
    by listing it, which can say whether the bucket or the path is wrong: `RemoteStorage.missing`)."""
    return not is_remote(path) and not os.path.exists(path)


def can_hold(path: str) -> bool:
    """Whether `path` may hold other paths: a local folder, or any URL (object storage has no folders: any
    prefix may have objects under it, now or later)."""
    return is_remote(path) or os.path.isdir(local_path(path))


def is_link(path: str) -> bool:
    """Whether `path` is a symbolic link (never, on object storage)."""
    return not is_remote(path) and os.path.islink(local_path(path))


def makedirs(path: str) -> None:
    """Make the folder `path` and those above it (`os.makedirs`, existing ones kept); nothing for a URL:
    object storage has no folders, a prefix exists once an object lies under it."""
    if not is_remote(path):
        os.makedirs(local_path(path), exist_ok=True)


def on_local_file_system(path: str) -> bool:
    """Whether `path` lies on a file system this process reaches with plain OS calls (a local or mounted
    folder), not behind an fsspec URL: what a feature needs that writes a tree of plain files, memory-maps
    them or keeps their permission bits (image-folder output, the semantic finder)."""
    return not is_remote(path)


def supports_hard_links(path: str) -> bool:
    """Whether files can be hard-linked into `path` (`--link`): a local folder can (on the input's own file
    system: `same_file_system`); object storage cannot."""
    return not is_remote(path)


def same_file_system(path: str, other: str) -> bool:
    """Whether local `path` (or, when it does not exist yet, the nearest folder above it that does) lies on
    the file system (device) of local `other`: where a hard link from one to the other can be made."""
    existing = os.path.abspath(local_path(path))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    return os.stat(existing).st_dev == os.stat(local_path(other)).st_dev


def file_identity(path: str) -> tuple[int, int] | None:
    """Which file `path` names, whatever name it is reached by (its device and inode, links followed): two
    paths with the same identity are one file under two names. None for a URL: an object has one key."""
    if is_remote(path):
        return None
    st = os.stat(local_path(path))
    return st.st_dev, st.st_ino


def _url_path(url: str) -> str:  # memory:///a and memory://a name the same object; so do s3://b/k and s3:///b/k
    return url.split("://", 1)[1].lstrip("/")


def common_folder(paths: list[str]) -> str:
    """The folder that all `paths` (absolute local paths, or URLs of one scheme) lie in ("" for none);
    local paths and URLs mixed are refused."""
    if len({is_remote(p) for p in paths}) > 1:
        raise ValueError("the input mixes local shards and object storage URLs; list only one kind")
    if len(paths) <= 1:
        return next(iter(paths), "")
    if not is_remote(paths[0]):
        return os.path.commonpath(paths)
    scheme = paths[0].split("://", 1)[0] + "://"
    return scheme + posixpath.commonpath([_url_path(u) for u in paths])


def relative_path(path: str, start: str) -> str:
    """`path` relative to the folder `start` (`os.path.relpath`; for URLs, of their paths after the scheme)."""
    if not is_remote(path):
        return os.path.relpath(path, start)
    return posixpath.relpath(_url_path(path), _url_path(start))


def storage_for(path: str, storage_options: dict | None = None) -> LocalStorage | RemoteStorage:
    """The backend of `path`; `storage_options` go to the fsspec file system (ignored for local paths).
    A URL with an empty path segment is refused (`check_url`)."""
    if is_remote(path):
        check_url(path)
        from imagesieve.storage.remote import RemoteStorage

        return RemoteStorage.for_url(path, storage_options)
    return LocalStorage()


def read_table(path: str, storage_options: dict | None = None, columns: list[str] | None = None) -> pa.Table:
    """A Parquet file, local or remote (read with one GET: our tables are small)."""
    import pyarrow.parquet as pq

    if not is_remote(path):
        path = local_path(path)
        if os.path.isdir(path):
            return pq.read_table(path, columns=columns)
        with pq.ParquetFile(path) as file:  # half the cost of pq.read_table, which goes through a dataset
            return file.read(columns=columns)
    import pyarrow as pa

    with pq.ParquetFile(pa.BufferReader(storage_for(path, storage_options).read_bytes(path))) as file:
        return file.read(columns=columns)


def read_schema(path: str, storage_options: dict | None = None) -> pa.Schema:
    """A Parquet file's schema (with its metadata), local or remote."""
    import pyarrow.parquet as pq

    if not is_remote(path):
        return pq.read_schema(local_path(path))
    import pyarrow as pa

    return pq.read_schema(pa.BufferReader(storage_for(path, storage_options).read_bytes(path)))
