"""Thumbnails and captions for the report: one small JPEG file per shown image, made once.

Jobs are grouped by shard (each reads its shard once) and run through an executor's `map`, so they
run in parallel processes locally or as tasks on Ray. A thumbnail's file name is a digest of its set,
key, size and the image's bytes as read: keys with any characters make safe names, a rerun skips
thumbnails that exist, and an image changed under the same key gets a new one, never the stale one.
"""

from __future__ import annotations

import io
import os
from collections import defaultdict

import xxhash

from imagesieve.executors.base import BaseExecutor
from imagesieve.images.decode import ImageDecodeError, load, open_image
from imagesieve.stages.io.partitioning import list_shards
from imagesieve.storage import join, parent, storage_for
from imagesieve.storage.runfolder import narrow_mode, write_bytes_atomic
from imagesieve.tar.names import ShardError, image_extension
from imagesieve.tar.read import samples_with_keys

CAPTION_CHARS = 300
CHANGED = "(this image changed in the input since the run: not shown)"  # its caption, instead of a thumbnail


def thumb_name(source: str, key: str, size: int, data: bytes) -> str:
    digest = xxhash.xxh3_128(f"{source}\0{key}\0{size}\0".encode())
    digest.update(data)
    return digest.hexdigest() + ".jpg"


def _thumbnail(source: str, key: str, data: bytes, where: str, thumbs_dir: str, size: int, read: str | None,
               caption: str = "") -> tuple[str, str]:
    """(thumbnail file name or "", caption) of an image whose bytes are now `data`; the run read `read`
    (their digest, None when not recorded): bytes changed since under the same ID get no thumbnail, which
    would show another image in the run's group, and the caption says why."""
    if read is not None and xxhash.xxh3_128_hexdigest(data) != read:
        return "", CHANGED
    return _thumbnail_file(source, key, data, where, thumbs_dir, size), caption


def _thumbnail_file(source: str, key: str, data: bytes, where: str, thumbs_dir: str, size: int) -> str:
    """The name of the thumbnail of `data` under thumbs_dir, made unless it exists; "" when undecodable."""
    name = thumb_name(source, key, size, data)
    path = os.path.join(thumbs_dir, name)
    if not os.path.exists(path):
        thumb = make_thumbnail(data, where, size)
        if thumb is None:
            return ""
        write_bytes_atomic(thumb, path)
    return name


def make_thumbnail(data: bytes, where: str, size: int) -> bytes | None:
    """A JPEG no larger than size x size, or None when the image cannot be decoded."""
    try:
        image = open_image(data, where)
        image.draft("RGB", (size, size))
        image = load(image, where).convert("RGB")
    except ImageDecodeError:
        return None
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def shard_thumbnails(shard: str, source: str, keys: dict[str, str | None], thumbs_dir: str, size: int,
                     storage_options: dict | None = None) -> dict[str, tuple]:
    """Make the thumbnails of `keys` (key -> digest of the bytes the run read) in one shard; returns key ->
    (thumb file name or "", caption)."""
    try:
        with storage_for(shard, storage_options).local_copy(shard) as local:
            return _shard_thumbnails(shard, local, source, keys, thumbs_dir, size)
    except OSError:
        return {}  # the shard moved or changed since the run: those images show as missing


def _shard_thumbnails(shard: str, local: str, source: str, keys: dict[str, str | None], thumbs_dir: str,
                      size: int) -> dict[str, tuple]:
    found = {}
    try:
        for sample in samples_with_keys(local, list(keys)):
            caption = ""
            if "txt" in sample.members:
                caption = sample.members["txt"].read()[:CAPTION_CHARS * 4].decode("utf-8", "replace")
            ext = image_extension(sample.members)
            found[sample.key] = ("", caption[:CAPTION_CHARS]) if ext is None else _thumbnail(
                source, sample.key, sample.members[ext].read(), f"{shard}: sample {sample.key!r}", thumbs_dir, size,
                keys[sample.key], caption[:CAPTION_CHARS])
    except (ShardError, OSError):
        pass  # the shard moved or changed since the run: those images show as missing
    return found


def _shards_by_name(source: str | list[str], storage_options: dict | None = None) -> dict[str, str]:
    """relative path -> path of the run's input shards; {} when they are gone (images show as missing)."""
    try:
        return {rel: path for path, rel in list_shards(source, storage_options=storage_options)}
    except FileNotFoundError:
        return {}


def folder_thumbnails(root: str, source: str, keys: dict[str, str | None], thumbs_dir: str,
                      size: int) -> dict[str, tuple]:
    """Thumbnails of images of an image folder (an ID is the path under `root`); no captions."""
    found = {}
    for key, read in keys.items():
        path = os.path.join(root, key)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            found[key] = ("", "")  # moved or deleted since the run: shows as missing
            continue
        found[key] = _thumbnail(source, key, data, path, thumbs_dir, size, read)
    return found


def add_thumbnails(members: list[tuple[str, str, str, str | None]], summary: dict, thumbs_dir: str, size: int,
                   executor: BaseExecutor, storage_options: dict | None = None) -> dict[tuple[str, str], tuple]:
    """Thumbnails and captions of `members` ((set, shard, ID, digest of the bytes the run read or None); set
    "hashes" is the input, "reference_hashes" the reference set), one job per shard (or 500 images of a
    folder); returns (set, ID) -> (thumb file name or "", caption)."""
    if os.path.islink(thumbs_dir) or (os.path.lexists(thumbs_dir) and not os.path.isdir(thumbs_dir)):
        raise ValueError(f"{thumbs_dir} is a symlink or a file; imagesieve never writes through a link nor replaces "
                         "a file it did not create: remove it, or pass another report folder")
    os.makedirs(thumbs_dir, exist_ok=True)
    inputs = {"hashes": (summary.get("input"), summary.get("input_root")),
              "reference_hashes": (summary.get("reference"), summary.get("reference_root"))}
    shard_paths = {source: _shards_by_name(src, storage_options) for source, (src, root) in inputs.items()
                   if src and not root and any(m[0] == source for m in members)}
    wanted: dict[tuple[str, str], dict[str, str | None]] = defaultdict(dict)
    jobs: list[tuple] = []
    for source, shard, key, read in members:
        root = inputs[source][1]
        path = root or shard_paths.get(source, {}).get(shard)
        if path:
            wanted[source, path][key] = read
    # thumbnails show what the input folders guard: no more open than any of them (`narrow_mode`: a
    # folder on object storage has no permission bits to follow)
    folders = {parent(join(path, key)) if inputs[source][1] else parent(path)
               for (source, path), keys in wanted.items() for key in keys}
    for folder in folders:
        narrow_mode(thumbs_dir, folder)
    for (source, path), keys in sorted(wanted.items()):
        if inputs[source][1]:  # an image folder: `path` is its root
            items = list(keys.items())
            jobs += [(folder_thumbnails, (path, source, dict(items[k:k + 500]), thumbs_dir, size))
                     for k in range(0, len(items), 500)]
        else:
            jobs.append((shard_thumbnails, (path, source, keys, thumbs_dir, size, storage_options)))
    results = executor.map(_run_job, jobs) if jobs else []
    return {(job[1][1], key): value for job, found in zip(jobs, results, strict=True) for key, value in found.items()}


def _run_job(fn, args: tuple) -> dict[str, tuple]:
    return fn(*args)
