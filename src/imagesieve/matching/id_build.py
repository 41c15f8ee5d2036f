"""Build an ID index from Parquet files in bounded memory, whatever the number of IDs.

Two passes, as an external sort by distribution:
1. stream every file in batches; hash each ID and append (hash, ID) to one of P partition files
   chosen by the hash's top bits, so that partition k holds exactly the hashes of the k-th slice
   of the hash range;
2. for k = 0..P-1: read partition k, sort it by hash (then ID), drop repeated IDs, and append it to
   the index; partitions come in hash order, so the index is sorted as a whole.

P is chosen from the Parquet footers (row counts, column sizes) so that one partition fits the
memory budget; peak memory is one batch in pass 1 and one partition in pass 2, not the whole set.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from imagesieve.matching.id_folder import check_id_column, convert_id_batch
from imagesieve.matching.id_index import IndexWriter, sorted_unique
from imagesieve.tar.key_hash import hash_strings
from imagesieve.util.lifeline import die_with

DEFAULT_BUDGET = 64 << 20  # bytes of memory one partition may take while it is sorted
BATCH_ROWS = 1 << 17
MAX_PARTITIONS = 512  # open files in pass 1
CHILD_PROCESS_ROWS = 1_000_000  # larger builds run in a child process (see build_index_isolated)
# Memory per ID while a partition is sorted, measured (10M 12-byte IDs: ~140 bytes each): the hash,
# offsets and sort indices (~64 bytes), and several copies of the ID's bytes (Arrow's sort and take).
_BYTES_PER_ID, _COPIES_OF_ID = 64, 8


def partition_bits(files: list[str], id_field: str, budget: int) -> int:
    """log2 of the number of partitions such that one partition fits `budget` (from the footers alone)."""
    total = 0
    for path in files:
        meta = pq.ParquetFile(path).metadata
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        column = names.index(id_field) if id_field in names else None
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            id_bytes = group.column(column).total_uncompressed_size if column is not None else 0
            total += _COPIES_OF_ID * id_bytes + group.num_rows * _BYTES_PER_ID
    partitions = min(MAX_PARTITIONS, max(1, math.ceil(total / max(budget, 1))))
    return math.ceil(math.log2(partitions)) if partitions > 1 else 0


def build_index(files: list[str], id_field: str, target: str, budget: int = DEFAULT_BUDGET,
                batch_rows: int = BATCH_ROWS) -> list[str]:
    """Write the index of every ID in `files` into the empty folder `target`; returns the notes
    (integer IDs converted) to show the user."""
    notes: list[str] = []
    for path in files:
        check_id_column(path, id_field)
    bits = partition_bits(files, id_field, budget)
    work = os.path.join(target, "partitions")
    os.makedirs(work)
    try:
        _partition(files, id_field, work, bits, notes, batch_rows)
        writer = IndexWriter(target)
        for k in range(1 << bits):
            path = os.path.join(work, f"{k:04d}.arrow")
            if not os.path.exists(path):
                continue
            with pa.memory_map(path) as source:
                table = ipc.open_stream(source).read_all()
            hashes, ids = sorted_unique(table.column("h").to_numpy(), table.column("id").combine_chunks())
            writer.append(hashes, ids)
            del table, hashes, ids
            os.remove(path)
        writer.finish(sorted(set(notes), key=notes.index))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return notes


def _partition(files: list[str], id_field: str, work: str, bits: int, notes: list[str], batch_rows: int) -> None:
    writers: dict[int, ipc.RecordBatchStreamWriter] = {}
    schema = pa.schema([("h", pa.uint64()), ("id", pa.string())])
    try:
        for path in files:
            parquet = pq.ParquetFile(path)
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=[id_field]):
                ids = convert_id_batch(batch.column(0), path, id_field, notes)
                hashes = hash_strings(ids)
                part = (hashes >> np.uint64(64 - bits)).astype(np.int64) if bits else np.zeros(len(ids), np.int64)
                order = np.argsort(part, kind="stable")
                bounds = np.searchsorted(part[order], np.arange((1 << bits) + 1))
                for k in np.flatnonzero(np.diff(bounds)):
                    rows = pa.array(order[bounds[k]:bounds[k + 1]])
                    if k not in writers:
                        writers[k] = ipc.new_stream(os.path.join(work, f"{k:04d}.arrow"), schema)
                    writers[k].write_batch(pa.record_batch([pa.array(hashes[rows.to_numpy()], pa.uint64()),
                                                            ids.take(rows)], schema=schema))
    finally:
        for writer in writers.values():
            writer.close()


def build_index_isolated(files: list[str], id_field: str, target: str, budget: int = DEFAULT_BUDGET,
                         child_process_rows: int = CHILD_PROCESS_ROWS) -> list[str]:
    """`build_index`, in a child process when the files hold more than `child_process_rows` IDs.

    Memory freed after a build stays with the process (Python's and Arrow's allocators keep it for
    reuse), so a large build in the driver would hold its peak for the rest of the run; a child
    returns all of it when it exits.
    """
    rows = sum(pq.ParquetFile(path).metadata.num_rows for path in files)
    if rows <= child_process_rows:
        return build_index(files, id_field, target, budget)
    request = json.dumps({"files": files, "id_field": id_field, "target": target, "budget": budget,
                          "parent": os.getpid()})
    done = subprocess.run([sys.executable, "-m", "imagesieve.matching.id_build"], input=request, text=True,
                          capture_output=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        raise ValueError(f"building the ID index failed: {lines[-1]}")
    return json.loads(done.stdout)["notes"]


def _child_main() -> None:
    request = json.loads(sys.stdin.read())
    die_with(request["parent"])  # a killed driver leaves no build running
    try:
        notes = build_index(request["files"], request["id_field"], request["target"], request["budget"])
    except Exception as exc:  # the parent shows the last line
        print(f"{exc}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"notes": notes}))


if __name__ == "__main__":
    _child_main()
