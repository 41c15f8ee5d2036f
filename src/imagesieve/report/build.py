"""Build the report folder of a run:

REPORT/index.html              counts, distance histograms, a pager over the groups, a search by ID
REPORT/data/meta.js            filters (all, one per method, groups with thumbnails) with their counts
REPORT/data/<filter>/NNNNN.js  ten pages of groups each, loaded when shown
REPORT/data/ids/NNNNN.js       [ID, group] pairs by hash bucket, loaded when an ID is searched
REPORT/thumbs/<digest>.jpg     one small JPEG per image with a thumbnail, made once, in parallel

A report of 100k groups opens as fast as one of ten (the page loads one page of groups at a time) and
costs little more to build: thumbnails are bounded (`report.sample`), and the groups are sorted and
paged as Arrow columns. A rebuild deletes the files of the earlier build that it no longer shows.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imagesieve.executors.base import BaseExecutor
from imagesieve.report.data import SOURCES, ReportData, load_report_data
from imagesieve.report.page import render_index
from imagesieve.report.pages import GROUPS_PER_PAGE, PAGES_PER_FILE, TEXT, js_json, write_filter_pages, write_id_index
from imagesieve.report.prune import prune_report
from imagesieve.report.sample import MAX_THUMBNAILS, thumbnail_rows
from imagesieve.report.thumbs import CHANGED, add_thumbnails
from imagesieve.storage import join, storage_for
from imagesieve.storage.runfolder import refuse_foreign_files, write_text_atomic

__all__ = ["GROUPS_PER_PAGE", "js_json", "write_report"]

WITH_THUMBNAILS = "with thumbnails"
REPORT_MARK = ".imagesieve-report"


def headline(summary: dict, removal: dict | None) -> list[tuple[str, str]]:
    """The counts a person reads first, as (label, value) rows."""
    rows = [("images", f"{summary.get('images', 0):,}")]
    if summary.get("skipped"):
        rows.append(("skipped as unreadable", f"{summary['skipped']:,}"))
    rows.append(("duplicate groups", f"{summary.get('groups', 0):,}"))
    rows.append(("duplicates found", f"{summary.get('duplicates', 0):,}"))
    for method, count in sorted(summary.get("by_method", {}).items()):
        rows.append((f"  by {method}", f"{count:,}"))
    if summary.get("threshold") is not None:
        rows.append(("threshold", str(summary["threshold"])))
    if summary.get("confirm") is not None:
        rows.append(("confirmed by dHash", f"pHash + dHashes within {summary['confirm']} of 192 bits"))
    if removal:
        rows += [("samples in", f"{removal['samples_in']:,}"), ("kept", f"{removal['kept']:,}"),
                 ("removed", f"{removal['removed']:,}")]
    return rows


_REPORT_INPUTS = ("groups/", "hashes/", "reference_hashes/", "embeddings/")


def _report_input(rel: str) -> bool:
    """The files of a run folder the report reads."""
    return rel == "summary.json" or (rel.startswith(_REPORT_INPUTS) and rel.endswith(".parquet"))


def write_report(run_dir: str, max_groups: int | None = None, size: int = 150, executor: BaseExecutor | None = None,
                 out_dir: str | None = None, storage_options: dict | None = None,
                 max_thumbnails: int = MAX_THUMBNAILS) -> str:
    """Write the report folder (default `run_dir/report`); returns the path of its index.html.

    When the run folder's summary.json holds a `removal` (as `imagesieve dedup` writes), the report
    also states what was removed and where the list of removed samples is. A run folder on object
    storage is read through a local spool copy of its tables; the report is built in a spool folder
    and each file published to `out_dir`.
    """
    out_dir = out_dir or join(run_dir, "report")
    with storage_for(run_dir, storage_options).local_tree(run_dir, _report_input) as local_run, \
            storage_for(out_dir, storage_options).writable_tree(out_dir) as local_out:
        _write_report(local_run, max_groups, size, executor, local_out, storage_options, max_thumbnails)
    return join(out_dir, "index.html")


def _write_report(run_dir: str, max_groups: int | None, size: int, executor: BaseExecutor | None, out_dir: str,
                  storage_options: dict | None, max_thumbnails: int) -> None:
    """`write_report` from and into local folders (the run folder's, or a spool copy of the files it reads;
    the report folder, or a spool folder published when complete)."""
    from imagesieve.executors.local import LocalExecutor

    if os.path.islink(out_dir):  # checked before anything is made in it
        raise ValueError(f"{out_dir} is a symlink; imagesieve never writes through a link: remove it, or pass "
                         "another report folder")
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"{out_dir} exists and is not a folder; imagesieve never replaces files it did not create: "
                         "move it, or choose another run folder")
    mark = os.path.join(out_dir, REPORT_MARK)  # written first: a report killed before data/meta.js is still ours
    if not os.path.isfile(os.path.join(out_dir, "data", "meta.js")) and not os.path.isfile(mark):
        refuse_foreign_files(out_dir, ours=(), who="no imagesieve report wrote",
                             advice="pass another report folder, or empty it")
    data = load_report_data(run_dir, max_groups)  # (a folder that is no run's is refused here, nothing made)
    os.makedirs(out_dir, exist_ok=True)
    previous = _files_of(mark)
    if previous is None or not os.path.isfile(mark):
        _record_files(mark, previous or set())
    filters = _filters(data)
    rows = thumbnail_rows(data.starts, _first_pages(filters, data.groups), max_thumbnails)
    shown = _thumbnails(data, rows, os.path.join(out_dir, "thumbs"), size, executor or LocalExecutor(),
                        storage_options)
    made = rows[np.array([bool(name) for name, _ in shown], bool)] if len(rows) else rows
    with_thumbnails = np.unique(np.searchsorted(data.starts, made, side="right") - 1)
    if 0 < len(with_thumbnails) < data.groups:  # the sample, to page through alone
        filters[WITH_THUMBNAILS] = with_thumbnails
    meta: dict = {"filters": {}, "perPage": GROUPS_PER_PAGE, "pagesPerFile": PAGES_PER_FILE}
    written = {"data/meta.js", "index.html"} | {f"thumbs/{name}" for name, _ in shown if name}
    shown_pairs, shown = shown, _shown_column(data.members.num_rows, rows, shown)
    for k, (name, groups) in enumerate(filters.items()):
        folder = f"f{k}"
        written.update(write_filter_pages(out_dir, folder, name, data, groups, shown))
        label = {"all": "all groups", WITH_THUMBNAILS: "groups with thumbnails"}.get(name,
                                                                                      f"groups with {name} duplicates")
        meta["filters"][name] = {"dir": folder, "label": f"{label} ({len(groups):,})", "groups": len(groups),
                                 "pages": max(1, -(-len(groups) // GROUPS_PER_PAGE))}
    meta["ids"], id_files = write_id_index(out_dir, data)
    written.update(id_files)
    write_text_atomic(f"window.REPORT = {js_json(meta)};\n", os.path.join(out_dir, "data", "meta.js"))
    removal, removed_list = data.summary.get("removal"), data.summary.get("removed_list")
    changed = sum(caption == CHANGED for _, caption in shown_pairs)
    write_text_atomic(render_index(_title(data.summary), headline(data.summary, removal), data.histograms,
                                   _note(data.groups, len(rows), data.members.num_rows, removal, removed_list,
                                         changed)),
                      os.path.join(out_dir, "index.html"))
    _record_files(mark, (previous or set()) | written)  # (a build killed before this leaves its files unrecorded)
    prune_report(out_dir, written, previous)
    _record_files(mark, written)


def _files_of(mark: str) -> set[str] | None:
    """The files earlier builds recorded in the report folder's mark: what a rebuild may delete. None for
    a folder marked without a list (or by a version before the mark: its files are known by name alone)."""
    try:
        with open(mark, encoding="utf-8") as f:
            return set(json.load(f)["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _record_files(mark: str, files: set[str]) -> None:
    write_text_atomic(json.dumps({"written_by": "imagesieve report", "files": sorted(files)}) + "\n", mark)


def _filters(data: ReportData) -> dict[str, np.ndarray]:
    """Filter name -> the groups it shows (indices, largest first): all, and one per method of a removed member."""
    filters = {"all": np.arange(data.groups)}
    group_of_row = np.repeat(np.arange(data.groups), np.diff(data.starts))
    methods = data.members.column("method")
    removed = pc.invert(data.members.column("kept"))
    for method in sorted(pc.unique(pc.filter(methods, removed)).to_pylist()):
        rows = pc.and_(pc.equal(methods, method), removed).to_numpy(zero_copy_only=False)
        filters[method] = np.unique(group_of_row[rows])
    return filters


def _first_pages(filters: dict[str, np.ndarray], groups: int) -> np.ndarray:
    """For each group, the earliest page on which any filter shows it."""
    first = np.full(groups, np.iinfo(np.int64).max, np.int64)
    for members in filters.values():
        np.minimum.at(first, members, np.arange(len(members)) // GROUPS_PER_PAGE)
    return first


def _thumbnails(data: ReportData, rows: np.ndarray, thumbs_dir: str, size: int, executor: BaseExecutor,
                storage_options: dict | None) -> list[tuple[str, str]]:
    """(thumbnail name or "", caption) of each of `rows`."""
    if not len(rows):
        return []
    columns = [data.members.column(c).take(rows).to_pylist() for c in ("source", "shard", "id", "bytes_hash")]
    wanted = [(SOURCES[source], shard or "", key, read) for source, shard, key, read in zip(*columns, strict=True)]
    made = add_thumbnails(wanted, data.summary, thumbs_dir, size, executor, storage_options)
    return [made.get((source, key), ("", "")) for source, _, key, _ in wanted]


def _shown_column(members: int, rows: np.ndarray, shown: list[tuple[str, str]]) -> pa.Array:
    """Per member row, `"caption", "thumb"` as JSON for the rows with a thumbnail, null for the others."""
    mask = np.zeros(members, bool)
    mask[rows] = True
    values = pa.array([f"{js_json(caption)}, {js_json(name)}" for name, caption in shown], TEXT)
    return pc.replace_with_mask(pa.nulls(members, TEXT), pa.array(mask), values)


def _title(summary: dict) -> str:
    source = summary.get("input") or []
    return "duplicates in " + ", ".join(source if isinstance(source, list) else [str(source)])


def _where(removed_list: str | None) -> str:
    """Where the removed list is, as the reader finds it: a dedup writes it into its own folder, which may
    have been copied or moved since the run recorded its path, so that one is named by its place."""
    name = os.path.basename(removed_list or "removed.parquet")
    return f"{name} in the run's folder (beside report/)" if name == "removed.parquet" else removed_list


def _note(groups: int, thumbnails: int, members: int, removal: dict | None, removed_list: str | None,
          changed: int = 0) -> str:
    note = f"{groups:,} groups, largest first."
    if changed:
        note += (f" Changed in the input since the run (other bytes under the same ID): {changed:,} of the images "
                 "shown; they have no thumbnail, and their groups may no longer hold: run the find (or dedup) "
                 "again.")
    if removal:
        note += (f" {removal['removed']:,} samples were removed from the output shards; the list, with the reason "
                 f"for each, is {_where(removed_list)}.")
    else:
        note += " Nothing has been removed yet: this lists what `imagesieve remove` would drop."
    if thumbnails < members:
        note += (f" Thumbnails were made for {thumbnails:,} of the {members:,} images: the first pages and a sample "
                 "of the other groups (the filter 'groups with thumbnails'); every group is listed, and the box "
                 "finds any ID.")
    return note
