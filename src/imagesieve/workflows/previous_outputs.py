"""Outputs of an earlier run that no longer belong: what its done markers record, and nothing else.

A rerun must not leave behind a shard (or a kept file) that the new run would not write: a shard
that left the input, or, in `dedup`, every output written from a duplicate list that has since
changed. Only files a done marker names are deleted, and only while they still have the size the
marker recorded (a file the user replaced since is left alone); markers and work files go with them.
"""

from __future__ import annotations

import os

from imagesieve.runfolder import WORK_DIR, read_json, work_path
from imagesieve.stages.io.sidecar import sidecar_path, stats_path


def recorded_units(output_dir: str) -> list[str]:
    """The relative paths of every shard or folder chunk a done marker records."""
    done = os.path.join(output_dir, WORK_DIR, "done")
    found = []
    for folder, _, files in os.walk(done):
        for name in files:
            if name.endswith(".json") and not name.startswith("."):
                found.append(os.path.relpath(os.path.join(folder, name), done)[: -len(".json")])
    return sorted(found)


def discard_unit(output_dir: str, relative_path: str) -> int:
    """Delete what the run recorded for one unit; returns how many output files went."""
    marker = work_path(output_dir, "done", relative_path, ".json")
    try:
        stats = read_json(marker)
    except (OSError, ValueError):
        return 0
    sized = stats.get("kept_files") or {relative_path: stats.get("output_size")}
    deleted = sum(delete_if_ours(output_dir, rel, size) for rel, size in sized.items())
    if stats.get("sidecar") == "filtered":
        deleted += delete_if_ours(output_dir, sidecar_path(relative_path), None)
    if stats.get("img2dataset_stats") == "updated":
        deleted += delete_if_ours(output_dir, stats_path(relative_path), None)
    for kind in ("index", "removed"):
        delete_if_ours(output_dir, os.path.join(WORK_DIR, kind, relative_path + ".parquet"), None)
    os.unlink(marker)  # last: until here a rerun still knows what to delete
    return deleted


def discard_units(output_dir: str, relative_paths: list[str]) -> int:
    return sum(discard_unit(output_dir, rel) for rel in relative_paths)


def delete_if_ours(output_dir: str, relative_path: str, size: int | None) -> int:
    """Delete OUT/relative_path if it is a regular file inside OUT (not through a link) and still has
    the size we recorded (None: any size); returns 1 if deleted."""
    path = os.path.join(output_dir, relative_path)
    inside = os.path.realpath(os.path.dirname(path)).startswith(os.path.realpath(output_dir) + os.sep) or \
        os.path.realpath(os.path.dirname(path)) == os.path.realpath(output_dir)
    if not inside or os.path.islink(path) or not os.path.isfile(path):
        return 0
    if size is not None and os.path.getsize(path) != size:
        return 0
    os.unlink(path)
    return 1
