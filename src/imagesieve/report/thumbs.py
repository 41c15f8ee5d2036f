"""Thumbnails and captions for the report: one small JPEG file per shown image, made once.

Jobs are grouped by shard (each reads its shard once) and run through an executor's `map`, so they
run in parallel processes locally or as tasks on Ray. A thumbnail's file name is a digest of its
set and key, so keys with any characters make safe names, and a rerun skips thumbnails that exist.
"""

from __future__ import annotations

import io
import os
from collections import defaultdict

import xxhash

from imagesieve.executors.base import BaseExecutor
from imagesieve.imageio import ImageDecodeError, load, open_image
from imagesieve.report.data import Member
from imagesieve.runfolder import write_atomic
from imagesieve.shards import ShardError, image_extension, iter_samples
from imagesieve.stages.io.partitioning import list_shards

CAPTION_CHARS = 300


def thumb_name(source: str, key: str) -> str:
    return xxhash.xxh3_64_hexdigest(f"{source}\0{key}".encode()) + ".jpg"


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


def shard_thumbnails(shard: str, source: str, keys: list[str], thumbs_dir: str, size: int) -> dict[str, tuple]:
    """Make the thumbnails of `keys` in one shard; returns key -> (thumb file name or "", caption)."""
    wanted, found = set(keys), {}
    try:
        for sample in iter_samples(shard, loose=[]):
            if sample.key not in wanted:
                continue
            ext = image_extension(sample.members)
            name = thumb_name(source, sample.key)
            path = os.path.join(thumbs_dir, name)
            if not os.path.exists(path) and ext is not None:
                thumb = make_thumbnail(sample.members[ext].read(), f"{shard}: sample {sample.key!r}", size)
                if thumb is None:
                    name = ""
                else:
                    write_atomic(path, lambda tmp, data=thumb: _write_bytes(tmp, data))
            caption = ""
            if "txt" in sample.members:
                caption = sample.members["txt"].read()[:CAPTION_CHARS * 4].decode("utf-8", "replace")
            found[sample.key] = (name, caption[:CAPTION_CHARS])
    except (ShardError, OSError):
        pass  # the shard moved or changed since the run: those images show as missing
    return found


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _shards_by_name(source: str | list[str]) -> dict[str, str]:
    """relative path -> path of the run's input shards; {} when they are gone (images show as missing)."""
    try:
        return {rel: path for path, rel in list_shards(source)}
    except FileNotFoundError:
        return {}


def add_thumbnails(groups: list[list[Member]], summary: dict, thumbs_dir: str, size: int,
                   executor: BaseExecutor) -> None:
    """Fill in `thumb` and `caption` of every member, one job per shard."""
    os.makedirs(thumbs_dir, exist_ok=True)
    inputs = {"hashes": summary.get("input"), "reference_hashes": summary.get("reference")}
    shard_paths = {source: _shards_by_name(src) for source, src in inputs.items() if src}
    wanted: dict[tuple[str, str], list[str]] = defaultdict(list)
    for member in (m for g in groups for m in g):
        path = shard_paths.get(member.source, {}).get(member.shard)
        if path:
            wanted[member.source, path].append(member.id)
    jobs = [(path, source, keys, thumbs_dir, size) for (source, path), keys in sorted(wanted.items())]
    results = executor.map(shard_thumbnails, jobs) if jobs else []
    made = {(job[1], key): value for job, found in zip(jobs, results, strict=True) for key, value in found.items()}
    for member in (m for g in groups for m in g):
        member.thumb, member.caption = made.get((member.source, member.id), ("", ""))
