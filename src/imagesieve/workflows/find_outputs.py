"""What every finder (`find` by hash, `--method semantic`, `--method copy`, `SemanticDeduplicationWorkflow`)
writes at the top of its output folder, written here alone, each file atomically (a temp file, then renamed):

OUT/duplicates/part-00000.parquet   one string column `id`, sorted: the IDs to remove (NeMo Curator's layout)
OUT/groups/part-00000.parquet       group_id, kept_id, id, method ("kept" for the member that stays), distance,
                                    and the finder's own columns, for every member of every group
OUT/skipped.parquet                 images that could not be read: id, (shard,) reason
OUT/summary.json                    the finder's summary: counts, configuration, input
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from imagesieve.storage import join
from imagesieve.storage.runfolder import write_json_atomic, write_parquet_atomic

S = TypeVar("S")


def list_paths(output_dir: str) -> dict[str, list[str]]:
    """The files of the duplicates and groups lists, by part."""
    return {part: [join(output_dir, part, "part-00000.parquet")] for part in ("duplicates", "groups")}


def write_find_outputs(output_dir: str, groups: pa.Table | None, skipped: pa.Table, summarize: Callable[[dict], S],
                       record: dict[str, Any], removable: pa.Array | pa.ChunkedArray | None = None,
                       storage_options: dict | None = None) -> S:
    """Write duplicates/ and groups/ from `groups` (None: neither), skipped.parquet, then summary.json: the
    summary that `summarize` makes of the counts (`groups`, `duplicates`, `by_method` of the removed
    members) with `record` added; returns that summary. `removable`: the only IDs that may be removed (a
    reference set's images are listed in groups/, never removed)."""
    found: dict[str, Any] = {"groups": 0, "duplicates": 0, "by_method": {}}
    if groups is not None:
        removed = groups.filter(pc.not_equal(groups.column("method"), "kept"))
        if removable is not None:
            removed = removed.filter(pc.is_in(removed.column("id"), removable))
        ids = pc.unique(removed.column("id"))
        paths = list_paths(output_dir)
        write_parquet_atomic(pa.table({"id": pc.take(ids, pc.sort_indices(ids))}), paths["duplicates"][0],
                             storage_options)
        write_parquet_atomic(groups, paths["groups"][0], storage_options)
        found = {"groups": len(pc.unique(removed.column("group_id"))), "duplicates": removed.num_rows,
                 "by_method": {row["values"]: row["counts"]
                               for row in pc.value_counts(removed.column("method")).to_pylist()}}
    write_parquet_atomic(skipped, join(output_dir, "skipped.parquet"), storage_options)
    summary = summarize(found)
    write_json_atomic({**asdict(summary), **record}, join(output_dir, "summary.json"), storage_options)
    return summary
