"""What the report shows, read from a run folder as Arrow columns: every group member with its size and
resolution, groups ordered largest first, and the distribution of distances per method.

Inputs: `groups/*.parquet` (group_id, kept_id, id, method, distance; a copy run adds inliers and
coverage), `hashes/` (or `embeddings/` for a semantic run) and `reference_hashes/` (id, shard, width,
height, file_size), `summary.json`. A member belongs to the input set, except the kept member of a
cross-set group, which is the reference image.

No Python object is made per member here: a million members are a few sorts and lookups in Arrow
and numpy; the page writer turns one page of rows at a time into JSON.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imagesieve.storage.runfolder import parquet_files, read_json

GROUP_COLUMNS = ["group_id", "id", "method", "distance", "inliers", "coverage"]
INFO_COLUMNS = {"shard": pa.string(), "width": pa.int64(), "height": pa.int64(), "file_size": pa.int64(),
                "bytes_hash": pa.string()}  # the bytes the run read: a thumbnail is of those, or of none
SOURCES = ("hashes", "reference_hashes")  # where an input image's and a reference image's sizes are


@dataclass
class ReportData:
    """`members`: one row per group member, groups largest first (then by group_id), the kept member
    first, then by distance and ID; columns id, kept, method, distance, inliers, coverage, source
    (index into SOURCES), shard, width, height, file_size. Group k (0 = largest) is rows
    starts[k]:starts[k + 1]."""

    summary: dict
    members: pa.Table
    starts: np.ndarray
    histograms: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # method -> (value, count)

    @property
    def groups(self) -> int:
        return len(self.starts) - 1


def read_table_dir(folder: str, columns: list[str] | None = None) -> pa.Table | None:
    """The Parquet files of a folder (hidden temp files skipped) as one table, or None."""
    if not os.path.isdir(folder):
        return None
    files = parquet_files(folder)
    if not files:
        return None
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f, columns=[c for c in columns if c in pq.read_schema(f).names]
                                        if columns else None))
        except (OSError, pa.ArrowException) as exc:
            raise ValueError(f"{f}: cannot be read ({exc}); run the find or dedup again to rewrite it") from None
    return pa.concat_tables(tables, promote_options="permissive")


def load_report_data(run_dir: str, max_groups: int | None = None) -> ReportData:
    table = read_table_dir(os.path.join(run_dir, "groups"), GROUP_COLUMNS)
    if table is None:
        raise FileNotFoundError(f"{run_dir} has no groups/: run `imagesieve find` or `imagesieve dedup` into it first")
    if not os.path.exists(os.path.join(run_dir, "summary.json")):
        raise FileNotFoundError(f"{run_dir} has groups/ but no summary.json (deleted?): rerun `imagesieve find` or "
                                "`imagesieve dedup` into it to write it again")
    summary = read_json(os.path.join(run_dir, "summary.json"))
    kept = pc.equal(table.column("method"), "kept").combine_chunks()
    distance = pc.cast(pc.fill_null(table.column("distance"), 0), pa.float64()).combine_chunks()
    hists = histograms(table.column("method"), distance, kept)
    group_ids = table.column("group_id").to_numpy()
    _, inverse, counts = np.unique(group_ids, return_inverse=True, return_counts=True)
    rank = np.empty(len(counts), np.int64)
    rank[np.argsort(-counts, kind="stable")] = np.arange(len(counts))  # largest first, then by group_id
    number = rank[inverse]
    members = pa.table({
        "number": number, "removed": pc.invert(kept), "distance": distance, "id": table.column("id"),
        "method": table.column("method"), "inliers": _column(table, "inliers", pa.int64()),
        "coverage": pc.if_else(kept, pa.scalar(None, pa.float64()), _column(table, "coverage", pa.float64()))})
    if max_groups is not None:
        members = members.filter(pa.array(number < max_groups))
    members = members.sort_by([("number", "ascending"), ("removed", "ascending"), ("distance", "ascending"),
                               ("id", "ascending")])
    number = members.column("number").to_numpy()
    starts = np.append(np.flatnonzero(np.diff(number, prepend=-1) != 0), len(number))
    kept = pc.invert(members.column("removed")).combine_chunks()
    source = pa.array(kept.to_numpy(zero_copy_only=False) & bool(summary.get("reference")), pa.int8())  # 1: reference
    members = members.drop_columns(["number", "removed"]).append_column("kept", kept).append_column("source", source)
    for name, column in _image_info(run_dir, members.column("id"), source).items():
        members = members.append_column(name, column)
    return ReportData(summary, members, starts, hists)


def _column(table: pa.Table, name: str, type_: pa.DataType) -> pa.ChunkedArray:
    if name in table.column_names:
        return pc.cast(table.column(name), type_)
    return pa.chunked_array([pa.nulls(table.num_rows, type_)])


def _image_info(run_dir: str, ids: pa.ChunkedArray, source: pa.Array) -> dict[str, pa.Array]:
    """Each member's shard, width, height and file size (null when its table is missing), by a hash
    lookup of its ID in the hash table of its set (the first row of an ID seen twice)."""
    tables, base, index = [], 0, pa.nulls(len(ids), pa.int64())
    is_reference = pc.equal(source, 1)
    for k, name in enumerate(SOURCES):
        # a semantic run records each image's shard and size with its embedding instead
        for folder in ([name, "embeddings"] if k == 0 else [name]):
            info = read_table_dir(os.path.join(run_dir, folder), ["id", *INFO_COLUMNS])
            if info is not None:
                break
        if info is None:
            continue
        found = pc.add(pc.cast(pc.index_in(ids, value_set=info.column("id").combine_chunks()), pa.int64()), base)
        index = pc.if_else(is_reference if k else pc.invert(is_reference), found, index)
        tables.append(pa.table({c: _column(info, c, t) for c, t in INFO_COLUMNS.items()}))
        base += info.num_rows
    if not tables:
        return {c: pa.nulls(len(ids), t) for c, t in INFO_COLUMNS.items()}
    info = pa.concat_tables(tables).take(index)
    return {c: info.column(c) for c in INFO_COLUMNS}


def histograms(methods: pa.ChunkedArray, distance: pa.Array, kept: pa.Array,
               bins: int = 40) -> dict[str, list[tuple[float, int]]]:
    """Per method, how many removed members lie at each distance: where a threshold falls.
    Integer distances (Hamming) are counted per value; others (1 - cosine) in `bins` bins."""
    removed = pc.invert(kept)
    methods, values = pc.filter(methods, removed), pc.filter(distance, removed).to_numpy()
    result = {}
    for method in sorted(pc.unique(methods).to_pylist()):
        v = values[pc.equal(methods, method).to_numpy(zero_copy_only=False)]
        if not v.any():
            continue  # exact copies: every distance is 0, nothing to choose
        if np.all(v == np.round(v)) and v.min() >= 0:
            counts = np.bincount(v.astype(np.int64))
            result[method] = [(float(d), int(c)) for d, c in enumerate(counts)]
        else:
            counts, edges = np.histogram(v, bins=bins)
            result[method] = [(float(edges[k]), int(c)) for k, c in enumerate(counts)]
    return result
