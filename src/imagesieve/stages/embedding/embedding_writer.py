"""EmbeddingWriterStage: one Parquet table of embeddings per shard, computed once and reused.

`OUT/embeddings/<shard>.parquet`: id, embeddings (list<float>, Curator's column names), shard,
position, width, height, file_size, error, json.* fields. The schema metadata records the shard's
fingerprint and the model, and `is_current` tells a rerun whether the table may be reused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imagesieve.stages.base import ProcessingStage
from imagesieve.storage import absolute, storage_for
from imagesieve.storage.runfolder import batch_relative_path, shard_fingerprint, write_parquet_atomic
from imagesieve.tar.names import IMAGE_RULE
from imagesieve.tar.table import check_source_unchanged
from imagesieve.tasks import FileGroupTask, ImageBatch

FINGERPRINT_KEY = b"imagesieve.shard_fingerprint"
SOURCE_KEY = b"imagesieve.shard"  # the shard the table was made from: its embeddings are current while it is


def refuse_stale_tables(paths: list, storage_options: dict | None = None) -> None:
    """Embeddings of a shard that has left the input, or changed since, would keep images no longer in the
    dataset and remove their only copies elsewhere: a table that names its shard (written by this stage)
    is refused, naming both, when that shard is gone or is another version now."""
    for path in paths:
        if not isinstance(path, str) or not path.endswith(".parquet"):
            continue
        meta = pq.read_schema(path).metadata or {}
        if SOURCE_KEY not in meta or FINGERPRINT_KEY not in meta:
            continue
        shard = meta[SOURCE_KEY].decode()
        if not storage_for(shard, storage_options).exists(shard):
            raise ValueError(f"{path}: the embeddings of {shard}, which is no longer there; delete this table (or "
                             "embed again into an empty folder), so that images gone from the input decide nothing")
        if meta[FINGERPRINT_KEY].decode().split("+")[0] != shard_fingerprint(shard, storage_options):
            raise ValueError(f"{path}: the embeddings of an earlier version of {shard}; embed it again")
MODEL_KEY = b"imagesieve.model"
IMAGE_RULE_KEY = b"imagesieve.image_rule"  # which member of a sample was embedded (`names.IMAGE_RULE`)
COLUMNS = {"id": pa.string(), "shard": pa.string(), "position": pa.int64(), "width": pa.int64(),
           "height": pa.int64(), "file_size": pa.int64(), "error": pa.string()}


def embedding_table_path(embeddings_dir: str, relative_path: str) -> str:
    """embeddings/<shard path>.parquet: the whole shard name, so that x.tar and x.tar.gz differ."""
    return os.path.join(embeddings_dir, relative_path + ".parquet")


def is_current(path: str, fingerprint: str, model_id: str, needed: set[str] = frozenset()) -> bool:
    """The table exists, was made from this version of the input (`fingerprint`) by this model, from the
    member the current rule calls each sample's image, and has `needed`."""
    if not os.path.exists(path):
        return False
    schema = pq.read_schema(path)
    meta = schema.metadata or {}
    return (meta.get(FINGERPRINT_KEY, b"").decode() == fingerprint
            and meta.get(MODEL_KEY, b"").decode() == model_id
            and meta.get(IMAGE_RULE_KEY, b"").decode() == str(IMAGE_RULE) and needed <= set(schema.names))


@dataclass
class EmbeddingWriterStage(ProcessingStage[ImageBatch, FileGroupTask]):
    """Writes `embeddings_dir/<shard>.parquet` atomically (see module docstring)."""

    embeddings_dir: str = ""
    model_id: str = ""
    name: str = "embedding_writer"

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["embedding", "metadata"]

    def process(self, task: ImageBatch) -> FileGroupTask:
        relative = batch_relative_path(task._metadata, task.task_id)
        extra = sorted({k for image in task.data for k in image.metadata if k.startswith("json.")})
        columns = {name: [] for name in [*COLUMNS, *extra]}
        vectors = []
        for position, image in enumerate(task.data):
            row = {**image.metadata, "id": image.image_id, "shard": relative, "position": position}
            for name, values in columns.items():
                values.append(row.get(name))
            vectors.append(None if image.embedding is None else np.asarray(image.embedding, np.float32))
        table = pa.table({name: pa.array(values, COLUMNS.get(name)) for name, values in columns.items()})
        table = table.append_column("embeddings", _list_array(vectors))
        check_source_unchanged(task._metadata)  # the embeddings are of the version the table will name
        fingerprint = task._metadata.get("input_fingerprint") or (
            shard_fingerprint(task._metadata["shard"]) if "shard" in task._metadata else "")
        source = {SOURCE_KEY: absolute(task._metadata["shard"]).encode()} if "shard" in task._metadata else {}
        table = table.replace_schema_metadata({FINGERPRINT_KEY: fingerprint.encode(),
                                               MODEL_KEY: self.model_id.encode(),
                                               IMAGE_RULE_KEY: str(IMAGE_RULE).encode(), **source})
        path = embedding_table_path(self.embeddings_dir, relative)
        write_parquet_atomic(table, path)
        errors = sum(1 for image in task.data if "error" in image.metadata)
        return FileGroupTask(dataset_name=task.dataset_name, data=[path], task_id=task.task_id,
                             _metadata={"samples_in": len(task.data), "errors": errors, "relative_path": relative})


def _list_array(vectors: list[np.ndarray | None]) -> pa.Array:
    """list<float> with nulls for images without an embedding, built without a Python loop per value."""
    present = [v for v in vectors if v is not None]
    lengths = np.array([0 if v is None else len(v) for v in vectors], dtype=np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    values = pa.array(np.concatenate(present) if present else np.zeros(0, np.float32), pa.float32())
    mask = pa.array([v is None for v in vectors])
    return pa.ListArray.from_arrays(offsets, values, mask=mask)
