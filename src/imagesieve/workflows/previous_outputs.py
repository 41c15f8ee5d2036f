"""Outputs of an earlier run that no longer belong: what its done markers record, and nothing else.

A rerun must not leave behind a shard (or a kept file) that the new run would not write: a shard
that left the input, or, in `dedup`, every output written from a duplicate list that has since
changed. Only files a done marker names are deleted, and only while they still have the size the
marker recorded (a file the user replaced since is left alone) or are a hard link to the input file
(`--link`); markers and work files go with them.
"""

from __future__ import annotations

import os

from imagesieve.stages.io.sidecar import sidecar_path, stats_path
from imagesieve.storage import join, separator, storage_for
from imagesieve.storage.ours import delete_if_ours, same_file
from imagesieve.storage.runfolder import WORK_DIR, read_json, work_path

__all__ = ["delete_if_ours", "discard_unit", "discard_units", "recorded_units", "same_file"]


def recorded_units(output_dir: str, storage_options: dict | None = None) -> list[str]:
    """The relative paths of every shard or folder chunk a done marker records."""
    done = join(output_dir, WORK_DIR, "done")
    store = storage_for(output_dir, storage_options)
    if not store.isdir(done):
        return []
    sep = separator(done)
    mark = f"{sep}{WORK_DIR}{sep}done{sep}"
    found = []
    for path in store.list_files(done):
        rel = path.split(mark, 1)[-1]
        if rel.endswith(".json") and not rel.rsplit(sep, 1)[-1].startswith("."):
            found.append(rel[: -len(".json")])
    return sorted(found)


def discard_unit(output_dir: str, relative_path: str, storage_options: dict | None = None) -> int:
    """Delete what the run recorded for one unit; returns how many output files went."""
    marker = work_path(output_dir, "done", relative_path, ".json")
    try:
        stats = read_json(marker, storage_options)
    except (OSError, ValueError):
        return 0
    sized = stats.get("kept_files") or {relative_path: stats.get("output_size")}
    versions = stats.get("kept_versions") or {relative_path: stats.get("output_version")}
    root = stats.get("input_root")  # an image folder: a kept file may be a --link to root/ID
    deleted = sum(delete_if_ours(output_dir, rel, size, storage_options, root and os.path.join(root, rel),
                                 versions.get(rel)) for rel, size in sized.items())
    if stats.get("sidecar") == "filtered":
        deleted += delete_if_ours(output_dir, sidecar_path(relative_path), None, storage_options,
                                  version=stats.get("sidecar_version"))
    if stats.get("img2dataset_stats") == "updated":
        deleted += delete_if_ours(output_dir, stats_path(relative_path), None, storage_options,
                                  version=stats.get("stats_version"))
    for kind in ("index", "removed"):
        delete_if_ours(output_dir, join(WORK_DIR, kind, relative_path + ".parquet"), None, storage_options)
    storage_for(marker, storage_options).delete_file(marker)  # last: until here a rerun still knows what to delete
    return deleted


def discard_units(output_dir: str, relative_paths: list[str], storage_options: dict | None = None) -> int:
    return sum(discard_unit(output_dir, rel, storage_options) for rel in relative_paths)
