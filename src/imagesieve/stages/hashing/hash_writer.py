"""HashWriterStage: one Parquet table of per-image hashes per shard, so hashes are computed once."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import pyarrow as pa

from imagesieve.matching.hashes import PERCEPTUAL
from imagesieve.stages.base import NodeInfo, ProcessingStage, WorkerMetadata
from imagesieve.storage import join
from imagesieve.storage.runfolder import batch_relative_path, mirror_folders, shard_fingerprint, write_parquet_atomic
from imagesieve.tar.names import ShardError
from imagesieve.tar.table import check_source_unchanged
from imagesieve.tasks import FileGroupTask, ImageBatch

PROVENANCE_KEY = b"imagesieve.provenance"
FIRST_COLUMNS = ("id", "shard", "position")  # then the others, sorted by name
BASE_COLUMNS = {"id": pa.string(), "shard": pa.string(), "position": pa.int64(), "width": pa.int64(),
                "height": pa.int64(), "format": pa.string(), "file_size": pa.int64(), "error": pa.string(),
                "bytes_hash": pa.string(), "pixel_hash": pa.string()}


def hash_table_path(hashes_dir: str, relative_path: str) -> str:
    """hashes/<shard path>.parquet: the whole shard name, so that x.tar and x.tar.gz differ."""
    return join(hashes_dir, relative_path + ".parquet")


def schema_provenance(schema: pa.Schema) -> dict:
    metadata = schema.metadata or {}
    try:
        return json.loads(metadata.get(PROVENANCE_KEY, b"{}"))
    except ValueError:
        return {}


def column_type(name: str) -> pa.DataType:
    if name in BASE_COLUMNS:
        return BASE_COLUMNS[name]
    if name.split("_flip")[0] in PERCEPTUAL:
        return pa.uint64()
    return None  # json fields: let Arrow infer


@dataclass
class HashWriterStage(ProcessingStage[ImageBatch, FileGroupTask]):
    """Writes `hashes_dir/<shard>.parquet` (atomically): id, shard, position, size, format, hashes."""

    hashes_dir: str = ""
    settings: dict = field(default_factory=dict)  # recorded with the shard's fingerprint: a rerun reuses
    name: str = "hash_writer"                     # a table only when both still match
    row_group_size: int | None = None  # small groups let a reader fetch one image's row (keypoints) cheaply
    storage_options: dict | None = field(default=None, repr=False)  # for a hashes_dir URL (s3://...)

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["metadata"]

    def setup_on_node(self, node_info: NodeInfo | None = None, worker_metadata: WorkerMetadata | None = None) -> None:
        """pyarrow imports pandas (if installed, ~0.2 s) on its first `pa.array`: do it once here, which on
        the local executor runs before the workers fork, rather than once in every worker."""
        pa.array([0])

    def process(self, task: ImageBatch) -> FileGroupTask:
        relative = batch_relative_path(task._metadata, task.task_id)
        columns: dict[str, list] = {name: [] for name in FIRST_COLUMNS}
        extra = sorted({k for image in task.data for k in image.metadata} - set(columns))
        for name in extra:
            columns[name] = []
        first_row = task._metadata.get("first_row", 0)  # a part of a shard: positions in the shard
        for position, image in enumerate(task.data, first_row):
            columns["id"].append(image.image_id)
            columns["shard"].append(relative)
            columns["position"].append(position)
            for name in extra:
                columns[name].append(image.metadata.get(name))
        table = pa.table({name: pa.array(values, column_type(name)) for name, values in columns.items()})
        check_source_unchanged(task._metadata)  # the hashes are of the version the marker will name
        fingerprint = task._metadata.get("input_fingerprint") or shard_fingerprint(task._metadata["shard"],
                                                                                   self.storage_options)
        provenance = {"shard_fingerprint": fingerprint, **self.settings}
        table = table.replace_schema_metadata({PROVENANCE_KEY: json.dumps(provenance, sort_keys=True)})
        path = hash_table_path(self.hashes_dir, relative)
        root = task._metadata.get("root")  # an image folder: its chunks' tables mirror the folder itself
        mirror_folders(path, os.path.join(root, relative) if root else task._metadata.get("shard", ""), relative)
        errors = sum(1 for image in task.data if "error" in image.metadata)
        metadata = {"samples_in": len(task.data), "errors": errors, "relative_path": relative}
        if "part" in task._metadata:  # the shard's table is written once every part is in (`write_parts`)
            source = task._metadata.get("shard_table")
            metadata.update(part=task._metadata["part"], table=table, shard=task._metadata.get("shard"),
                            source_version=source.version if source is not None else fingerprint)
        else:
            write_parquet_atomic(table, path, self.storage_options, row_group_size=self.row_group_size)
        return FileGroupTask(dataset_name=task.dataset_name, data=[path], task_id=task.task_id, _metadata=metadata)

    def write_parts(self, outputs: list[FileGroupTask]) -> None:
        """Write the table of each shard hashed in parts (`inputs.split_tail`) from its parts' tables."""
        parts: dict[str, list[FileGroupTask]] = {}
        for task in outputs:
            if "part" in task._metadata:
                parts.setdefault(task.data[0], []).append(task)
        for path, tasks in parts.items():
            if len({t._metadata.get("source_version") for t in tasks}) > 1:  # each part read the file itself
                raise ShardError(f"{tasks[0]._metadata.get('shard', path)}: the file changed between the parts of "
                                 "its hashing (replaced or rewritten); no hashes were written for it: rerun")
            tables = [t._metadata["table"] for t in sorted(tasks, key=lambda t: t._metadata["part"])]
            table = pa.concat_tables(tables, promote_options="permissive")  # a column only some parts have: last
            table = table.select([*FIRST_COLUMNS, *sorted(set(table.column_names) - set(FIRST_COLUMNS))])
            write_parquet_atomic(table, path, self.storage_options, row_group_size=self.row_group_size)
