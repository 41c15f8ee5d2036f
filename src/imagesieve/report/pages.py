"""The report's data files, written as JSON text built by Arrow string kernels from the members'
columns: no Python object per member, and a million members cost seconds, not minutes.

data/<filter>/NNNNN.js calls window.reportPage(filter, N, groups) with PAGES_PER_FILE pages of
GROUPS_PER_PAGE groups; a group is [number, [member, ...]] and a member the JSON list [id, kept,
method, distance, width, height, file_size, caption, thumb, inliers, coverage]; thumb is a file name
under thumbs/, "" when the image could not be read, and null when none was made for it (beyond the
report's bound). Strings are escaped as `js_json` escapes them: no ID or caption can open or close a
tag, whatever it holds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imagesieve.report.data import ReportData
from imagesieve.report.search import id_buckets
from imagesieve.storage.runfolder import write_text_atomic

GROUPS_PER_PAGE = 60
PAGES_PER_FILE = 10  # a file holds 600 groups: a million images make hundreds of files, not tens of thousands
FILES_PER_BATCH = 20  # files whose JSON is built at once (bounds the memory of the text)
TEXT = pa.large_string()
_ESCAPES = [("\\", "\\\\"), ('"', '\\"'), ("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
            ("\u2028", "\\u2028"), ("\u2029", "\\u2029")]  # the backslash first


def js_json(value: object) -> str:
    """JSON for a .js data file, with <, > and & escaped: no key or caption can close or open a tag."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _text(value: str) -> pa.Scalar:
    return pa.scalar(value, TEXT)


def _join(*parts, separator: str = "") -> pa.Array:
    """Element-wise concatenation of string arrays and str scalars."""
    return pc.binary_join_element_wise(*[_text(p) if isinstance(p, str) else p for p in parts], _text(separator))


def json_strings(values: pa.Array) -> pa.Array:
    """Each string as a JSON string literal ("null" for a null), escaped as `js_json` escapes."""
    values = pc.cast(values, TEXT)
    for old, new in _ESCAPES:
        values = pc.replace_substring(values, old, new)
    if pc.any(pc.match_substring_regex(values, r"[\x00-\x1f]")).as_py():
        for code in range(32):
            values = pc.replace_substring(values, chr(code), f"\\u{code:04x}")
    return pc.fill_null(_join('"', values, '"'), "null")


def json_numbers(values: pa.Array) -> pa.Array:
    return pc.fill_null(pc.cast(values, TEXT), "null")


def member_json(members: pa.Table, shown: pa.Array | None = None) -> pa.Array:
    """Each member row as its JSON list; `shown` holds its caption and thumb, JSON-encoded and joined by
    a comma, or null for a member without a thumbnail."""
    distance = members.column("distance")
    whole = pc.equal(pc.round(distance), distance)
    distance = pc.if_else(whole, pc.cast(pc.cast(pc.round(distance), pa.int64()), TEXT),
                          pc.cast(pc.round(distance, 6), TEXT))
    extra = pc.fill_null(shown, '"", null') if shown is not None else _text('"", null')
    fields = [json_strings(members.column("id")), pc.if_else(members.column("kept"), _text("true"), _text("false")),
              json_strings(members.column("method")), distance, json_numbers(members.column("width")),
              json_numbers(members.column("height")), json_numbers(members.column("file_size")), extra,
              json_numbers(members.column("inliers")), json_numbers(pc.round(members.column("coverage"), 3))]
    return _join("[", _join(*fields, separator=", "), "]")


def _lists(values: pa.Array, lengths: np.ndarray) -> pa.Array:
    """Consecutive runs of `values` of the given lengths, each joined by ", " (as json.dumps separates)."""
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]), pa.int64())
    values = pc.cast(values, TEXT)
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    return pc.binary_join(pa.LargeListArray.from_arrays(offsets, values), _text(", "))


def group_rows(starts: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """The member rows of `groups` (indices), group after group."""
    lengths = starts[groups + 1] - starts[groups]
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts[groups], lengths) + within


def file_bodies(data: ReportData, groups: np.ndarray, shown: pa.Array) -> Iterator[str]:
    """The JSON list of groups of each data file of a filter showing `groups` (indices, in order)."""
    per_file = GROUPS_PER_PAGE * PAGES_PER_FILE
    for first in range(0, len(groups), per_file * FILES_PER_BATCH):
        batch = groups[first:first + per_file * FILES_PER_BATCH]
        rows = pa.array(group_rows(data.starts, batch))
        members = member_json(data.members.take(rows), shown.take(rows))
        sizes = data.starts[batch + 1] - data.starts[batch]
        group_json = _join("[", pc.cast(pa.array(batch + 1), TEXT), ", [", _lists(members, sizes), "]]")
        files = _lists(group_json, np.diff(np.append(np.arange(0, len(batch), per_file), len(batch))))
        for body in files.to_pylist():
            yield f"[{body}]"
    if not len(groups):
        yield "[]"


def write_filter_pages(out_dir: str, folder: str, name: str, data: ReportData, groups: np.ndarray,
                       shown: pa.Array) -> list[str]:
    """data/<folder>/NNNNN.js for one filter; returns their relative paths. `shown`: per member row,
    its caption and thumbnail as `member_json` takes them."""
    written = []
    for n, body in enumerate(file_bodies(data, groups, shown)):
        rel = f"data/{folder}/{n:05d}.js"
        write_text_atomic(f"window.reportPage({js_json(name)}, {n}, {body});\n", os.path.join(out_dir, rel))
        written.append(rel)
    return written


def write_id_index(out_dir: str, data: ReportData) -> tuple[int, list[str]]:
    """data/ids/NNNNN.js: [ID, group number] pairs by bucket (see report.search); returns the number of
    buckets and the relative paths written."""
    ids = data.members.column("id").combine_chunks()
    if not len(ids):
        return 0, []
    numbers = np.repeat(np.arange(1, data.groups + 1), np.diff(data.starts))
    files, order, bounds = id_buckets(ids)
    pairs = _join("[", json_strings(ids.take(pa.array(order))), ", ", pc.cast(pa.array(numbers[order]), TEXT), "]")
    written = []
    for n, body in enumerate(_lists(pairs, np.diff(bounds)).to_pylist()):
        rel = f"data/ids/{n:05d}.js"
        write_text_atomic(f"window.reportIds({n}, [{body}]);\n", os.path.join(out_dir, rel))
        written.append(rel)
    return files, written
