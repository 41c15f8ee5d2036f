"""What the report shows, read from a run folder: the groups, each member's size and resolution, and
the distribution of distances per method.

Inputs: `groups/*.parquet` (group_id, kept_id, id, method, distance; a copy run adds inliers and
coverage), `hashes/` (or `embeddings/` for
a semantic run) and `reference_hashes/` (id, shard, width, height, file_size), `summary.json`. A member belongs to the
input set, except the kept member of a cross-set group, which is the reference image.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imagesieve.runfolder import parquet_files, read_json

INFO_COLUMNS = ["id", "shard", "width", "height", "file_size"]


@dataclass
class Member:
    id: str
    source: str  # "hashes" (input) or "reference_hashes"
    kept: bool
    method: str
    distance: float
    shard: str = ""
    width: int | None = None
    height: int | None = None
    file_size: int | None = None
    caption: str = ""
    thumb: str = ""  # file name under thumbs/, "" when none could be made
    inliers: int | None = None  # copy matches: keypoints that agree, and the share of each image they cover
    coverage: float | None = None


@dataclass
class ReportData:
    summary: dict
    groups: list[list[Member]]  # largest first, kept member first
    histograms: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # method -> (value, count)


def read_table_dir(folder: str, columns: list[str] | None = None) -> pa.Table | None:
    """The Parquet files of a folder (hidden temp files skipped) as one table, or None."""
    if not os.path.isdir(folder):
        return None
    files = parquet_files(folder)
    if not files:
        return None
    tables = [pq.read_table(f, columns=[c for c in columns if c in pq.read_schema(f).names] if columns else None)
              for f in files]
    return pa.concat_tables(tables, promote_options="permissive")


def load_report_data(run_dir: str, max_groups: int | None = None) -> ReportData:
    table = read_table_dir(os.path.join(run_dir, "groups"))
    if table is None or not os.path.exists(os.path.join(run_dir, "summary.json")):
        raise FileNotFoundError(f"{run_dir} has no groups/: run `imagesieve find` or `imagesieve dedup` into it first")
    summary = read_json(os.path.join(run_dir, "summary.json"))
    cross_set = bool(summary.get("reference"))
    rows = table.to_pylist()
    by_group: dict[int, list[Member]] = {}
    for row in rows:
        kept = row["method"] == "kept"
        source = "reference_hashes" if cross_set and kept else "hashes"
        by_group.setdefault(row["group_id"], []).append(
            Member(row["id"], source, kept, row["method"], float(row["distance"] or 0),
                   inliers=row.get("inliers"), coverage=None if kept else row.get("coverage")))
    order = sorted(by_group, key=lambda g: (-len(by_group[g]), g))
    if max_groups is not None:
        order = order[:max_groups]
    groups = [sorted(by_group[g], key=lambda m: (not m.kept, m.distance, m.id)) for g in order]
    _add_image_info(run_dir, groups)
    return ReportData(summary, groups, histograms(rows))


def _add_image_info(run_dir: str, groups: list[list[Member]]) -> None:
    for source in ("hashes", "reference_hashes"):
        wanted = {m.id for g in groups for m in g if m.source == source}
        info = None
        # a semantic run records each image's shard and size with its embedding instead
        for folder in ([source, "embeddings"] if source == "hashes" else [source]):
            info = read_table_dir(os.path.join(run_dir, folder), INFO_COLUMNS) if wanted else None
            if info is not None:
                break
        if info is None:
            continue
        info = info.filter(pc.is_in(info.column("id"), value_set=pa.array(sorted(wanted), pa.string())))
        found = {row["id"]: row for row in info.to_pylist()}
        for member in (m for g in groups for m in g if m.source == source and m.id in found):
            row = found[member.id]
            member.shard = row.get("shard") or ""
            member.width, member.height, member.file_size = row.get("width"), row.get("height"), row.get("file_size")


def histograms(rows: list[dict], bins: int = 40) -> dict[str, list[tuple[float, int]]]:
    """Per method, how many removed members lie at each distance: where a threshold falls.
    Integer distances (Hamming) are counted per value; others (1 - cosine) in `bins` bins."""
    by_method: dict[str, list[float]] = {}
    for row in rows:
        if row["method"] != "kept":
            by_method.setdefault(row["method"], []).append(float(row["distance"] or 0))
    result = {}
    for method, values in sorted(by_method.items()):
        if not any(values):
            continue  # exact copies: every distance is 0, nothing to choose
        if all(v.is_integer() for v in values):
            counts = Counter(values)
            result[method] = [(float(d), counts.get(float(d), 0)) for d in range(int(max(values)) + 1)]
        else:
            counts, edges = np.histogram(values, bins=bins)
            result[method] = [(float(edges[k]), int(c)) for k, c in enumerate(counts)]
    return result
