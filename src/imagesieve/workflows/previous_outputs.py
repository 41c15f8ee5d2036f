"""Outputs of an earlier run that no longer belong: what its done markers record, and nothing else.

A rerun must not leave behind a shard (or a kept file) that the new run would not write: a shard
that left the input, or, in `dedup`, every output written from a duplicate list that has since
changed. Only files a done marker names are deleted, and only while they still have the size the
marker recorded (a file the user replaced since is left alone) or are a hard link to the input file
(`--link`); markers and work files go with them.
"""

from __future__ import annotations

import contextlib
import os

from imagesieve.stages.io.sidecar import sidecar_path, stats_path
from imagesieve.storage import join, separator, storage_for
from imagesieve.storage.ours import delete_if_ours, file_digest, same_file, same_write, small_file_is_ours
from imagesieve.storage.runfolder import WORK_DIR, publishing_record, read_json, work_path

__all__ = ["delete_if_ours", "discard_unit", "discard_units", "recorded_units", "same_file"]


def recorded_units(output_dir: str, storage_options: dict | None = None, kind: str = "done") -> list[str]:
    """The relative paths of every shard or folder chunk a done marker (or another record `kind`) records."""
    done = join(output_dir, WORK_DIR, kind)
    store = storage_for(output_dir, storage_options)
    if not store.isdir(done):
        return []
    sep = separator(done)
    mark = f"{sep}{WORK_DIR}{sep}{kind}{sep}"
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


def discard_published(output_dir: str, relative_path: str, keep: set[str], storage_options: dict | None = None
                      ) -> int:
    """Delete what a killed run was about to publish for one unit (its publishing record) and no done
    marker records: the shard still the version (or bytes) it named, its tables still the bytes it named,
    an image folder chunk's files it named (but those in `keep`, kept files of chunks that stay done);
    then the record. Returns how many output files went."""
    record = publishing_record(output_dir, relative_path)
    try:
        named = read_json(record, storage_options)
    except (OSError, ValueError):
        return 0
    deleted = 0
    shard = join(output_dir, relative_path)
    store = storage_for(shard, storage_options)
    if not named.get("placing") and store.isfile(shard):
        version = store.fingerprint(shard)
        ours = any(same_write(version, v) for v in named.get("output_versions", []))
        if not ours and named.get("output_digests"):
            with store.local_copy(shard) as there:
                ours = file_digest(there) in named["output_digests"]
        deleted += delete_if_ours(output_dir, relative_path, None, storage_options) if ours else 0
    for table_of in (sidecar_path, stats_path):
        table = join(output_dir, table_of(relative_path))
        if store.isfile(table) and small_file_is_ours(table, None, False, named.get("sidecar_digests", []),
                                                      storage_options):
            deleted += delete_if_ours(output_dir, table_of(relative_path), None, storage_options)
    for name in named.get("placing", []):
        if name not in keep:
            deleted += delete_if_ours(output_dir, name, None, storage_options)
    store.delete_file(record)
    return deleted


def discard_killed_runs_outputs(output_dir: str, redo: set[str], storage_options: dict | None = None) -> int:
    """What killed runs were about to publish for units that are to be redone or have left the input
    (`redo`: every unit of this run but those done) and no done marker records: deleted before the run
    (`discard_published`), so that nothing it left stays in the output uncounted."""
    units = [rel for rel in recorded_units(output_dir, storage_options, "publishing") if rel in redo
             or not storage_for(output_dir, storage_options).exists(work_path(output_dir, "done", rel, ".json"))]
    if not units:
        return 0
    keep = set()
    for rel in set(recorded_units(output_dir, storage_options)) - redo:
        with contextlib.suppress(OSError, ValueError):  # (a damaged marker: its chunk is redone anyway)
            keep.update(read_json(work_path(output_dir, "done", rel, ".json"), storage_options).get("kept_files", {}))
    return sum(discard_published(output_dir, rel, keep, storage_options) for rel in units)
