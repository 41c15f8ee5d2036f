"""img2dataset's per-shard metadata: `00000.parquet` beside `00000.tar` (one row per attempted sample)
and `00000_stats.json` (counts).

When samples are removed from a shard, the same keys are removed from its sidecar table, so the
output folder stays a complete img2dataset-style dataset. Rows for keys that are not in the shard
(downloads that failed) are kept: they describe no sample. An output sidecar follows its input: one
whose input is gone is deleted (when a record of ours says we wrote it), and the version of a shard's
input covers its sidecars (`input_fingerprint`), so a changed or deleted sidecar redoes the shard.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from imagesieve.storage import join, read_table, storage_for
from imagesieve.storage.ours import delete_if_ours, refuse_replacing_unknown_bytes, small_file_is_ours
from imagesieve.storage.runfolder import (
    read_json,
    shard_fingerprint,
    strip_shard_suffix,
    write_bytes_atomic,
    write_json_atomic,
)


def sidecar_path(shard: str) -> str:
    return strip_shard_suffix(shard) + ".parquet"


def stats_path(shard: str) -> str:
    return strip_shard_suffix(shard) + "_stats.json"


def input_fingerprint(shard: str, storage_options: dict | None = None, sidecars: bool = False,
                      shard_version: str | None = None) -> str:
    """The version of a shard's input: the shard's (`shard_version`, the version read, or its file's
    now: `runfolder.shard_fingerprint`), and with `sidecars` (what removal filters) that of its
    img2dataset table and stats when present: `+table:...+stats:...`. The one rule for both what a
    listing calls the current version and what a done marker records as the version done."""
    version = shard_version or shard_fingerprint(shard, storage_options)
    if sidecars:
        store = storage_for(shard, storage_options)
        for kind, path in (("table", sidecar_path(shard)), ("stats", stats_path(shard))):
            if store.exists(path):
                version += f"+{kind}:{store.fingerprint(path)}"
    return version


class Publishing:
    """The digests of the small outputs a run is about to write (kept in the shard's publishing record
    with what runs killed before it named): a rerun knows such a file as its own though no done marker
    names it yet, to replace it or to delete it when its input has gone."""

    def __init__(self, record: str, storage_options: dict | None) -> None:
        self.record, self.storage_options = record, storage_options
        store = storage_for(record, storage_options)
        self.content = read_json(record, storage_options) if store.exists(record) else {}
        self.named: list[str] = self.content.get("sidecar_digests", [])

    def add(self, data: bytes) -> None:
        self.named = [*self.named[-15:], xxhash.xxh3_128_hexdigest(data)]
        write_json_atomic({**self.content, "sidecar_digests": self.named}, self.record, self.storage_options)


def _drop_stale(output_dir: str, relative_output: str, wrote_before: bool, version: str | None,
                publishing: Publishing, storage_options: dict | None) -> tuple[str, None]:
    """The input has no such sidecar (any more): delete the output one a run of ours wrote (its shard's
    record says so and it is still that version, or a killed run named its bytes), never a file of
    another's. Returns ("none", no version)."""
    target = join(output_dir, relative_output)
    store = storage_for(target, storage_options)
    if store.isfile(target) and small_file_is_ours(target, version, wrote_before and version is None,
                                                   publishing.named, storage_options):
        delete_if_ours(output_dir, relative_output, None, storage_options)
    return "none", None


def _write(data: bytes, target: str, recorded: str | None, wrote_before: bool, publishing: Publishing,
           storage_options: dict | None, mode_of: str) -> str:
    """Write an output sidecar over nothing but ours (`refuse_replacing_unknown_bytes`), its digest recorded
    first; returns its version."""
    refuse_replacing_unknown_bytes(target, data, recorded, wrote_before, storage_options, publishing.named)
    publishing.add(data)
    write_bytes_atomic(data, target, storage_options, mode_of=mode_of)
    return shard_fingerprint(target, storage_options)


def update_stats(shard: str, relative_path: str, output_dir: str, removed: int, publishing: Publishing,
                 storage_options: dict | None = None, previous: dict | None = None) -> tuple[str, str | None]:
    """Write img2dataset's `<shard>_stats.json` with the counts of the output shard: `successes` and
    `count` (and `status_dict["success"]`) less the removed samples, every other field as it was, and
    what imagesieve did under `imagesieve`. Returns what was done and the written file's version, for the
    shard's record. `previous`: the shard's record of an earlier run into `output_dir`, if any."""
    source, previous = stats_path(shard), previous or {}
    wrote_before = previous.get("img2dataset_stats") == "updated"
    if not storage_for(source, storage_options).exists(source):
        return _drop_stale(output_dir, stats_path(relative_path), wrote_before, previous.get("stats_version"),
                           publishing, storage_options)
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
    data = json.dumps(stats, indent=2, sort_keys=True).encode("utf-8")
    return "updated", _write(data, join(output_dir, stats_path(relative_path)), previous.get("stats_version"),
                             wrote_before, publishing, storage_options, source)


def filter_sidecar(shard: str, relative_path: str, output_dir: str, removed_ids: list[str], publishing: Publishing,
                   storage_options: dict | None = None, previous: dict | None = None) -> tuple[str, str | None]:
    """Write the shard's sidecar table without the removed keys; returns what was done and the written
    file's version, for the shard's record. `previous`: the shard's record of an earlier run into
    `output_dir`, if any."""
    source, previous = sidecar_path(shard), previous or {}
    wrote_before = previous.get("sidecar") == "filtered"
    if not storage_for(source, storage_options).exists(source):
        return _drop_stale(output_dir, sidecar_path(relative_path), wrote_before, previous.get("sidecar_version"),
                           publishing, storage_options)
    try:
        table = read_table(source, storage_options)
    except Exception as exc:
        raise ValueError(f"{source}: the shard's metadata table is not readable Parquet ({exc})") from exc
    if "key" not in table.column_names:
        return f"not filtered: {source} has no 'key' column", None
    keep = pc.invert(pc.is_in(table.column("key").cast("string"), value_set=pc.cast(removed_ids or [], "string")))
    sink = pa.BufferOutputStream()
    pq.write_table(table.filter(keep), sink)
    return "filtered", _write(sink.getvalue().to_pybytes(), join(output_dir, sidecar_path(relative_path)),
                              previous.get("sidecar_version"), wrote_before, publishing, storage_options, source)
