"""The layout of an output folder and atomic writes into it.

OUTPUT/<shard path>.tar                   kept samples, members byte-for-byte
OUTPUT/removed.parquet                    every removed sample: id, shard, reason
OUTPUT/summary.json                       counts of the whole run
OUTPUT/_imagesieve/index/<shard>.parquet  per kept sample: key, member names, sizes
OUTPUT/_imagesieve/removed/<shard>.parquet  removed samples of one shard
OUTPUT/_imagesieve/done/<shard>.json      written last for a shard: its counts; a rerun skips it
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

WORK_DIR = "_imagesieve"
SHARD_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def strip_shard_suffix(relative_path: str) -> str:
    for suffix in SHARD_SUFFIXES:
        if relative_path.endswith(suffix):
            return relative_path[: -len(suffix)]
    return relative_path


def batch_relative_path(metadata: dict[str, Any], task_id: str) -> str:
    """The input-relative shard path a batch came from, which names its outputs."""
    return metadata.get("relative_path") or f"{task_id or 'shard'}.tar"


def shard_fingerprint(path: str) -> str:
    """Identifies one version of an input file: its size and modification time (ns), as make and
    rsync do. Per-shard results (hash tables, embeddings, done markers) record it, and a rerun
    redoes a shard whose file no longer has it."""
    st = os.stat(path)
    return f"{st.st_size}-{st.st_mtime_ns}"


def work_path(output_dir: str, kind: str, relative_path: str, ext: str) -> str:
    """OUTPUT/_imagesieve/<kind>/<shard without suffix><ext>."""
    return os.path.join(output_dir, WORK_DIR, kind, strip_shard_suffix(relative_path) + ext)


def done_marker(output_dir: str, relative_path: str) -> str:
    return work_path(output_dir, "done", relative_path, ".json")


def is_done(output_dir: str, relative_path: str) -> bool:
    """A shard is done when its marker exists and its output still has the recorded size
    (a file renamed but lost to a power cut before reaching the disk has not)."""
    marker = done_marker(output_dir, relative_path)
    if not os.path.exists(marker):
        return False
    output = os.path.join(output_dir, relative_path)
    return os.path.exists(output) and os.path.getsize(output) == read_json(marker).get("output_size")


def temp_name(path: str) -> str:
    """Where `path` is written before it is renamed into place: hidden (Parquet dataset readers and
    globs skip it) and marked with `.tmp-<pid>` (a rerun deletes what a killed run left)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.tmp-{os.getpid()}")


def remove_stale_temp_files(folder: str) -> None:
    """Delete temp files a killed run left behind; final names are never partial."""
    for root, dirs, files in os.walk(folder):
        for name in files + dirs:
            if ".tmp-" in name:
                path = os.path.join(root, name)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.remove(path)


def write_parquet_atomic(table: pa.Table, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = temp_name(path)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(text: str, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = temp_name(path)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json_atomic(data: dict[str, Any], path: str) -> None:
    write_text_atomic(json.dumps(data, indent=2, sort_keys=True), path)


def read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
