"""HashWriterStage: one Parquet table of per-image hashes per shard, so hashes are computed once."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow as pa

from imagesieve.dedup.hashes import PERCEPTUAL
from imagesieve.runfolder import batch_relative_path, strip_shard_suffix, write_parquet_atomic
from imagesieve.stages.base import ProcessingStage
from imagesieve.tasks import FileGroupTask, ImageBatch

BASE_COLUMNS = {"id": pa.string(), "shard": pa.string(), "position": pa.int64(), "width": pa.int64(),
                "height": pa.int64(), "format": pa.string(), "file_size": pa.int64(), "error": pa.string(),
                "bytes_hash": pa.string(), "pixel_hash": pa.string()}


def hash_table_path(hashes_dir: str, relative_path: str) -> str:
    return os.path.join(hashes_dir, strip_shard_suffix(relative_path) + ".parquet")


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
    name: str = "hash_writer"

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["metadata"]

    def process(self, task: ImageBatch) -> FileGroupTask:
        relative = batch_relative_path(task._metadata, task.task_id)
        columns: dict[str, list] = {"id": [], "shard": [], "position": []}
        extra = sorted({k for image in task.data for k in image.metadata} - set(columns))
        for name in extra:
            columns[name] = []
        for position, image in enumerate(task.data):
            columns["id"].append(image.image_id)
            columns["shard"].append(relative)
            columns["position"].append(position)
            for name in extra:
                columns[name].append(image.metadata.get(name))
        table = pa.table({name: pa.array(values, column_type(name)) for name, values in columns.items()})
        path = hash_table_path(self.hashes_dir, relative)
        write_parquet_atomic(table, path)
        errors = sum(1 for image in task.data if "error" in image.metadata)
        return FileGroupTask(dataset_name=task.dataset_name, data=[path], task_id=task.task_id,
                             _metadata={"samples_in": len(task.data), "errors": errors, "relative_path": relative})
