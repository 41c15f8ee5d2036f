"""Build the report folder of a run:

REPORT/index.html            counts, distance histograms, and a pager over the groups
REPORT/data/meta.js          filters (all, and one per method) with their group and page counts
REPORT/data/<filter>/NNNNN.js  one page of groups each, loaded when shown
REPORT/thumbs/<digest>.jpg   one small JPEG per shown image, made once, in parallel

A report of 100k groups opens as fast as one of ten: the page loads one page of groups at a time.
"""

from __future__ import annotations

import json
import os

from imagesieve.executors.base import BaseExecutor
from imagesieve.report.data import Member, load_report_data
from imagesieve.report.page import render_index
from imagesieve.report.thumbs import add_thumbnails
from imagesieve.runfolder import write_text_atomic
from imagesieve.storage import is_remote, join, storage_for
from imagesieve.storage.spool import spool_folder

GROUPS_PER_PAGE = 60


def js_json(value: object) -> str:
    """JSON for a .js data file, with <, > and & escaped: no key or caption can close or open a tag."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def member_row(m: Member) -> list:
    distance = int(m.distance) if float(m.distance).is_integer() else round(m.distance, 6)
    coverage = None if m.coverage is None else round(m.coverage, 3)
    return [m.id, m.kept, m.method, distance, m.width, m.height, m.file_size, m.caption, m.thumb, m.inliers, coverage]


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
    if removal:
        rows += [("samples in", f"{removal['samples_in']:,}"), ("kept", f"{removal['kept']:,}"),
                 ("removed", f"{removal['removed']:,}")]
    return rows


_REPORT_INPUTS = ("groups/", "hashes/", "reference_hashes/", "embeddings/")


def _report_input(rel: str) -> bool:
    """The files of a run folder the report reads."""
    return rel == "summary.json" or (rel.startswith(_REPORT_INPUTS) and rel.endswith(".parquet"))


def write_report(run_dir: str, max_groups: int | None = None, size: int = 150, executor: BaseExecutor | None = None,
                 out_dir: str | None = None, storage_options: dict | None = None) -> str:
    """Write the report folder (default `run_dir/report`); returns the path of its index.html.

    When the run folder's summary.json holds a `removal` (as `imagesieve dedup` writes), the report
    also states what was removed and where the list of removed samples is. A run folder on object
    storage is read through a local spool copy of its tables; the report is built in a spool folder
    and each file published to `out_dir`.
    """
    from imagesieve.executors.local import LocalExecutor

    if is_remote(run_dir):
        store = storage_for(run_dir, storage_options)
        out_dir = out_dir or join(run_dir, "report")
        with store.local_tree(run_dir, _report_input) as local_run, spool_folder() as local_out:
            write_report(local_run, max_groups, size, executor, local_out, storage_options)
            for root, _, names in os.walk(local_out):
                for name in sorted(names):
                    rel = os.path.relpath(os.path.join(root, name), local_out)
                    store.publish(os.path.join(root, name), join(out_dir, *rel.split(os.sep)))
        return join(out_dir, "index.html")

    out_dir = out_dir or os.path.join(run_dir, "report")
    data = load_report_data(run_dir, max_groups)
    add_thumbnails(data.groups, data.summary, os.path.join(out_dir, "thumbs"), size, executor or LocalExecutor(),
                   storage_options)
    removal, removed_list = data.summary.get("removal"), data.summary.get("removed_list")
    numbered = list(enumerate(data.groups, 1))  # groups are numbered in size order, 1 = largest
    filters = {"all": numbered}
    for method in sorted({m.method for g in data.groups for m in g if not m.kept}):
        filters[method] = [(k, g) for k, g in numbered if any(m.method == method for m in g)]
    meta = {"filters": {}}
    for k, (name, groups) in enumerate(filters.items()):
        pages = [groups[i:i + GROUPS_PER_PAGE] for i in range(0, len(groups), GROUPS_PER_PAGE)] or [[]]
        folder = f"f{k}"
        for n, page in enumerate(pages):
            rows = [[number, [member_row(m) for m in g]] for number, g in page]
            write_text_atomic(f"window.reportPage({js_json(name)}, {n}, {js_json(rows)});\n",
                              os.path.join(out_dir, "data", folder, f"{n:05d}.js"))
        label = "all groups" if name == "all" else f"groups with {name} duplicates"
        meta["filters"][name] = {"dir": folder, "label": f"{label} ({len(groups):,})", "groups": len(groups),
                                 "pages": len(pages)}
    write_text_atomic(f"window.REPORT = {js_json(meta)};\n", os.path.join(out_dir, "data", "meta.js"))
    write_text_atomic(render_index(_title(data.summary), headline(data.summary, removal), data.histograms,
                                   _note(len(data.groups), removal, removed_list)),
                      os.path.join(out_dir, "index.html"))
    return os.path.join(out_dir, "index.html")


def _title(summary: dict) -> str:
    source = summary.get("input") or []
    return "duplicates in " + ", ".join(source if isinstance(source, list) else [str(source)])


def _note(groups: int, removal: dict | None, removed_list: str | None) -> str:
    note = f"{groups:,} groups, largest first."
    if removal:
        note += (f" {removal['removed']:,} samples were removed from the output shards; the list, with the reason "
                 f"for each, is {removed_list or 'removed.parquet'}.")
    else:
        note += " Nothing has been removed yet: this lists what `imagesieve remove` would drop."
    return note
