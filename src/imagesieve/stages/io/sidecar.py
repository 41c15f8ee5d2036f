"""img2dataset's per-shard metadata: `00000.parquet` beside `00000.tar` (one row per attempted sample)
and `00000_stats.json` (counts).

When samples are removed from a shard, the same keys are removed from its sidecar table, so the
output folder stays a complete img2dataset-style dataset. Rows for keys that are not in the shard
(downloads that failed) are kept: they describe no sample.
"""

from __future__ import annotations

import pyarrow.compute as pc

from imagesieve.storage import join, read_table, storage_for
from imagesieve.storage.runfolder import read_json, strip_shard_suffix, write_json_atomic, write_parquet_atomic


def sidecar_path(shard: str) -> str:
    return strip_shard_suffix(shard) + ".parquet"


def stats_path(shard: str) -> str:
    return strip_shard_suffix(shard) + "_stats.json"


def update_stats(shard: str, relative_path: str, output_dir: str, removed: int,
                 storage_options: dict | None = None) -> str:
    """Write img2dataset's `<shard>_stats.json` with the counts of the output shard: `successes` and
    `count` (and `status_dict["success"]`) less the removed samples, every other field as it was, and
    what imagesieve did under `imagesieve`. Returns what was done, for the shard's record."""
    source = stats_path(shard)
    if not storage_for(source, storage_options).exists(source):
        return "none"
    try:
        stats = read_json(source, storage_options)
    except ValueError as exc:
        raise ValueError(f"{source}: the shard's img2dataset stats are not valid JSON ({exc})") from exc
    for field in ("successes", "count"):
        if isinstance(stats.get(field), int):
            stats[field] -= removed
    status = stats.get("status_dict")
    if isinstance(status, dict) and isinstance(status.get("success"), int):
        status["success"] -= removed
    stats["imagesieve"] = {"removed_as_duplicates": removed}
    write_json_atomic(stats, join(output_dir, stats_path(relative_path)), storage_options, mode_of=source)
    return "updated"


def filter_sidecar(shard: str, relative_path: str, output_dir: str, removed_ids: list[str],
                   storage_options: dict | None = None) -> str:
    """Write the shard's sidecar table without the removed keys; returns what was done, for the stats."""
    source = sidecar_path(shard)
    if not storage_for(source, storage_options).exists(source):
        return "none"
    try:
        table = read_table(source, storage_options)
    except Exception as exc:
        raise ValueError(f"{source}: the shard's metadata table is not readable Parquet ({exc})") from exc
    if "key" not in table.column_names:
        return f"not filtered: {source} has no 'key' column"
    keep = pc.invert(pc.is_in(table.column("key").cast("string"), value_set=pc.cast(removed_ids or [], "string")))
    write_parquet_atomic(table.filter(keep), join(output_dir, sidecar_path(relative_path)), storage_options,
                         mode_of=source)
    return "filtered"
