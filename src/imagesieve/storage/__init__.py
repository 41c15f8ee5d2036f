"""One storage interface for everything a run reads and writes: local paths and object storage.

`storage_for(path, storage_options)` returns the backend of a path: `LocalStorage` for a local path
(or `file://`), `RemoteStorage` (fsspec: `s3://`, `gs://`, ...) for a URL. Both offer the same few
operations: list, fingerprint, read, atomic publish, stale temp cleanup, a run lock, and a local
file to read (`local_copy`) or write (`writable`). Tar scanning and copying always work on local
files (mmap, pread): a remote shard is streamed once into a private spool file first, and an
output is written to a local spool file and published when complete, so the local fast path is
the only one. `runfolder` lays out a run's output folder over this interface.
"""

from __future__ import annotations

import os
import posixpath
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
