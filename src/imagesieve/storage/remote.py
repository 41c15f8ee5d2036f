"""Object storage and other fsspec file systems (`s3://`, `gs://`, `az://`, `memory://` ...).

Reads: a shard is streamed once, whole, into a private spool file (`local_copy`), since a tar's
headers are spread through the whole file and removal needs most of its bytes; the tar code then
works on the local file unchanged. Writes: an output is written to a spool file, uploaded to a
temporary key of our own naming (`.NAME.imagesieve-tmp-PID`; S3 and GCS show an object only once its
upload completed) and copied to its final key, so a reader never sees a half-written object.
Listings and `info` are never served from fsspec's listing cache: workers write while the driver reads.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from imagesieve.storage.base import (
    OutputInUseError,
    is_temp_name,
    listed_runs,
    outside_run_folders,
    run_folder_on_the_way,
    temp_name,
)
from imagesieve.storage.spool import spool_folder

logger = logging.getLogger(__name__)

CLOUD_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


class StorageError(OSError):
    """Object storage cannot be used as asked: no credentials, no endpoint, a missing backend package."""


@contextmanager
def clear_errors(url: str) -> Iterator[None]:
    """Turn a backend's exception into one that names the URL and says what to do."""
    try:
        yield
    except FileNotFoundError as exc:
        text = str(exc)
        if "bucket" in text.lower():
            raise FileNotFoundError(f"{url}: the bucket does not exist (or is not visible with these "
                                    f"credentials): {text}") from exc
        raise
    except PermissionError as exc:
        raise PermissionError(f"{url}: access denied ({exc}); check the credentials and the bucket's "
                              "permissions") from exc
    except Exception as exc:
        name = type(exc).__name__
        if name == "NoCredentialsError" or "credentials" in str(exc).lower():
            raise StorageError(f"{url}: no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                               "(or AWS_PROFILE), or pass --storage-option key=... --storage-option secret=...") \
                from exc
        if "connect" in name.lower() or "connect" in str(exc).lower():
            raise StorageError(f"{url}: cannot reach the storage endpoint ({exc}); check endpoint_url") from exc
        raise


@dataclass
class RemoteStorage:
    """An fsspec file system, used with URLs (paths carry their protocol in and out)."""

    fs: Any
    remote = True

    @classmethod
    def for_url(cls, url: str, storage_options: dict | None = None) -> RemoteStorage:
        import fsspec

        protocol = url.split("://", 1)[0]
        options = dict(storage_options or {})
        if protocol in CLOUD_PACKAGES:
            options.setdefault("use_listings_cache", False)
        try:
            fs, _ = fsspec.core.url_to_fs(url, **options)
        except ImportError as exc:
            package = CLOUD_PACKAGES.get(protocol, "the fsspec backend")
            raise StorageError(f"{url}: reading {protocol}:// needs {package}: pip install 'imagesieve[cloud]'") \
                from exc
        return cls(fs)

    def _path(self, url: str) -> str:
        return self.fs._strip_protocol(url)

    def url(self, path: str) -> str:
        return self.fs.unstrip_protocol(path)

    def exists(self, url: str) -> bool:
        with clear_errors(url):
            return self.fs.exists(self._path(url))

    def isfile(self, url: str) -> bool:
        with clear_errors(url):
            return self.fs.isfile(self._path(url))

    def isdir(self, url: str) -> bool:
        with clear_errors(url):
            return self.fs.isdir(self._path(url))

    def size(self, url: str) -> int:
        with clear_errors(url):
            return int(self.fs.size(self._path(url)))

    def fingerprint(self, url: str) -> str:
        """Size and ETag (or generation, or modification time): one version of an object."""
        with clear_errors(url):
            info = self.fs.info(self._path(url))
        version = (info.get("ETag") or info.get("etag") or info.get("generation") or info.get("md5Hash")
                   or info.get("LastModified") or info.get("mtime") or info.get("updated") or info.get("created") or "")
        return f"{info['size']}-{str(version).strip(chr(34))}"

    def missing(self, url: str) -> FileNotFoundError:
        """The error for a URL that names nothing: says whether the bucket or the path under it is wrong
        (and raises the backend's error, made clear, when the bucket cannot be read at all)."""
        bucket = self._path(url).split("/", 1)[0]
        try:
            with clear_errors(url):
                self.fs.info(bucket)
        except FileNotFoundError:
            return FileNotFoundError(f"{url}: the bucket {bucket!r} does not exist (or is not visible with these "
                                     "credentials)")
        return FileNotFoundError(f"{url}: no such object or prefix in the bucket {bucket!r} (is the path right?)")

    def read_bytes(self, url: str) -> bytes:
        with clear_errors(url):
            return self.fs.cat_file(self._path(url))

    def list_files(self, folder: str) -> list[str]:
        """Every object under `folder` (recursively), as URLs, sorted."""
        with clear_errors(folder):
            return sorted(self.url(p) for p in self.fs.find(self._path(folder).rstrip("/")))

    def delete_file(self, url: str) -> None:
        """Delete one object (only ever one the run's records name)."""
        with clear_errors(url):
            self.fs.rm_file(self._path(url))

    def glob(self, pattern: str) -> list[str]:
        with clear_errors(pattern):
            return sorted(self.url(p) for p in self.fs.glob(self._path(pattern)) if self.fs.isfile(p))

    def get_file(self, url: str, local: str) -> None:
        """Stream the object (one GET) into the local file `local`."""
        with clear_errors(url):
            self.fs.get_file(self._path(url), local)

    @contextmanager
    def local_copy(self, url: str) -> Iterator[str]:
        """The object streamed (one GET) into a private spool file, deleted when the block ends."""
        with spool_folder() as folder:
            local = os.path.join(folder, posixpath.basename(url.rstrip("/")) or "object")
            self.get_file(url, local)
            yield local

    def list_folder(self, folder: str) -> list[str]:
        """The objects right under the prefix `folder` (not in "subfolders" of it), sorted, as URLs spelled
        as `folder` is (`memory://a` and `memory:///a`, `s3a://` and `s3://`, list alike)."""
        root = self._path(folder).rstrip("/")
        with clear_errors(folder):
            found = self.fs.find(root)
        return sorted(f"{folder.rstrip('/')}/{posixpath.basename(p)}" for p in found if posixpath.dirname(p) == root)

    @contextmanager
    def local_tree(self, folder: str, include: Callable[[str], bool]) -> Iterator[str]:
        """The objects under `folder` whose relative path `include` accepts, downloaded into a private
        spool folder with the same relative tree (deleted when the block ends). An error raised in the
        block that names the spool folder names `folder` instead: the folder the user gave."""
        root = self._path(folder).rstrip("/")
        with clear_errors(folder):
            found = self.fs.find(root) if self.fs.isdir(root) else []
        paths = [p for p in found if include(posixpath.relpath(p, root))]
        if not found:
            raise self.missing(folder)
        with spool_folder() as spool:
            for path in paths:
                local = os.path.join(spool, posixpath.relpath(path, root))
                os.makedirs(os.path.dirname(local), exist_ok=True)
                with clear_errors(folder):
                    self.fs.get_file(path, local)
            try:
                yield spool
            except (OSError, ValueError) as exc:
                if spool not in str(exc):
                    raise
                raise type(exc)(str(exc).replace(spool, folder.rstrip("/"))) from exc

    @contextmanager
    def writable(self, url: str) -> Iterator[str]:
        """A spool file to write `url` to; published (atomically) when the block ends without error."""
        with spool_folder() as folder:
            local = os.path.join(folder, posixpath.basename(url.rstrip("/")) or "object")
            yield local
            self.publish(local, url)

    @contextmanager
    def writable_tree(self, folder: str) -> Iterator[str]:
        """A spool folder to write the files of `folder` into; each file is published (atomically) under
        `folder`, by its path in the spool folder, when the block ends without error."""
        with spool_folder() as spool:
            yield spool
            for root, _, names in os.walk(spool):
                for name in sorted(names):
                    rel = os.path.relpath(os.path.join(root, name), spool)
                    self.publish(os.path.join(root, name), posixpath.join(folder, *rel.split(os.sep)))

    def publish(self, local: str, url: str) -> None:
        """Upload `local` to a temp key of ours, then copy it to `url` and delete the temp key."""
        temp = self._path(temp_name(url))
        with clear_errors(url):
            try:
                self.fs.put_file(local, temp)
                self.fs.copy(temp, self._path(url))
            finally:
                if self.fs.exists(temp):
                    self.fs.rm_file(temp)

    def remove_stale_temp_files(self, folder: str) -> list[str]:
        """Delete the temp keys a killed run left under `folder` (only keys of our temp naming), never in
        a run folder nested in it (`outside_run_folders`): those are that run's."""
        listing = self.list_files(folder) if self.exists(folder) else []
        stale = [url for url in outside_run_folders(listing, folder, own_records=True)
                 if is_temp_name(posixpath.basename(url))]
        for url in stale:
            with clear_errors(url):
                self.fs.rm_file(self._path(url))
        return stale + self._abort_stale_uploads(folder, listing)

    def _abort_stale_uploads(self, folder: str, objects: list[str]) -> list[str]:
        """Abort the S3 multipart uploads to temp keys of ours that a killed run left open: no listing
        shows them, but the bucket's owner pays for their parts until they are aborted. Not in a run
        folder nested in `folder` (which `objects`, the folder's listing, shows)."""
        if "s3" not in tuple(self.fs.protocol) or not hasattr(self.fs, "call_s3"):
            return []
        bucket, _, prefix = self._path(folder).rstrip("/").partition("/")
        aborted: list[str] = []
        holds = listed_runs(objects)
        markers: dict[str, str] = {}
        with clear_errors(folder):
            while True:
                listing = self.fs.call_s3("list_multipart_uploads", Bucket=bucket,
                                          Prefix=prefix + "/" if prefix else "", **markers)
                for upload in listing.get("Uploads", []):
                    url = self.url(f"{bucket}/{upload['Key']}")
                    if is_temp_name(posixpath.basename(upload["Key"])) and \
                            run_folder_on_the_way(url, folder, holds, own_records=True) is None:
                        self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=upload["Key"],
                                        UploadId=upload["UploadId"])
                        aborted.append(url + " (an unfinished upload)")
                if not listing.get("IsTruncated"):
                    return aborted
                markers = {"KeyMarker": listing["NextKeyMarker"], "UploadIdMarker": listing["NextUploadIdMarker"]}

    @contextmanager
    def lock(self, folder: str, command: str, url: str) -> Iterator[None]:
        """The lock of `folder`: the object `url` (OUTPUT/_imagesieve/lock, which the run folder names),
        created only if absent (a conditional put, `If-None-Match: *` on S3), holding who runs. A second
        run fails at once; the lock of a run on this machine whose process is gone is taken over; the
        object is deleted at the end only while it is still ours."""
        mine = {"command": command, "host": socket.gethostname(), "pid": os.getpid(),
                "pid_started": _process_start(os.getpid()), "token": uuid.uuid4().hex,
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for attempt in (1, 2):
            if self._create(url, json.dumps(mine).encode()):
                break
            holder = self._read_lock(url)
            if attempt == 1 and holder is not None and _is_dead_here(holder):
                logger.warning("taking over the lock of a run that is gone: %s", holder)
                with clear_errors(url):
                    self.fs.rm_file(self._path(url))
                continue
            raise OutputInUseError(f"{folder} is being written by another imagesieve run ({_describe(holder)}); "
                                   f"wait for it to finish, or choose another output folder. If that run is no "
                                   f"longer alive, delete {url} and rerun")
        try:
            yield
        finally:
            holder = self._read_lock(url)
            if holder is not None and holder.get("token") == mine["token"]:
                self.fs.rm_file(self._path(url))

    def live_holder(self, url: str) -> str | None:
        """Who holds the lock object `url` (None: none, or a run on this machine that is gone)."""
        holder = self._read_lock(url)
        return None if holder is None or _is_dead_here(holder) else _describe(holder)

    def _create(self, url: str, data: bytes) -> bool:
        """Write `url` only if no object is there; False when one is."""
        with clear_errors(url):
            try:
                self.fs.pipe_file(self._path(url), data, mode="create")
                return True
            except FileExistsError:
                return False
            except (NotImplementedError, TypeError):  # a backend without exclusive creation
                if self.fs.exists(self._path(url)):
                    return False
                logger.warning("%s: this storage cannot create an object only if absent, so two runs started at "
                               "the same moment into this folder are not prevented", url)
                self.fs.pipe_file(self._path(url), data)
                return True

    def _read_lock(self, url: str) -> dict | None:
        try:
            return json.loads(self.fs.cat_file(self._path(url)))
        except FileNotFoundError:
            return None
        except ValueError:
            return {}


def _process_start(pid: int) -> str:
    """When a process started (clock ticks since boot), so a reused PID is not taken for the holder."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _is_dead_here(holder: dict) -> bool:
    """The lock's holder ran on this machine and that process no longer exists."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    if not os.path.isdir("/proc/self"):  # no way to tell here: never assume the holder is gone
        return False
    started = _process_start(holder["pid"])
    return not started or started != holder.get("pid_started")


def _describe(holder: dict | None) -> str:
    if not holder:
        return "unknown holder"
    return f"imagesieve {holder.get('command')}, host {holder.get('host')}, pid {holder.get('pid')}, " \
           f"since {holder.get('since')}"
