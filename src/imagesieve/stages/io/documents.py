"""Curator's way from images to a Parquet table of their fields (its image tutorial writes embeddings
so): `ConvertImageBatchToDocumentBatchStage(fields=...)`, then `ParquetWriter(path=...)`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash

from imagesieve.stages.base import ProcessingStage
from imagesieve.storage import join
from imagesieve.storage.runfolder import write_atomic
from imagesieve.tasks import DocumentBatch, FileGroupTask, ImageBatch


def _column(values: list[Any]) -> pa.Array:
    """A column of image fields; arrays (embeddings) become lists of their values."""
    if any(isinstance(v, np.ndarray) for v in values):
        values = [None if v is None else np.asarray(v).reshape(-1) for v in values]
        kind = next(v.dtype for v in values if v is not None)
        return pa.array(values, pa.list_(pa.from_numpy_dtype(kind)))
    return pa.array(values)


@dataclass
class ConvertImageBatchToDocumentBatchStage(ProcessingStage[ImageBatch, DocumentBatch]):
    """One row per image with the `fields` asked for (default `image_id`), as Curator's stage of the
    same name; a field an image lacks is null."""

    fields: list[str] = field(default_factory=list)
    name: str = "convert_image_batch_to_document_batch"

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], list(self.fields or ["image_id"])

    def process(self, task: ImageBatch) -> DocumentBatch:
        names = self.fields or ["image_id"]
        table = pa.table({name: _column([getattr(image, name, None) for image in task.data]) for name in names})
        return DocumentBatch(dataset_name=task.dataset_name, data=table, task_id=task.task_id,
                             _metadata=task._metadata, _stage_perf=task._stage_perf)


@dataclass
class ParquetWriter(ProcessingStage[DocumentBatch, FileGroupTask]):
    """One Parquet file per task under `path`, written atomically (temp file, then rename), named by a
    digest of the task's source files and ID, so a rerun rewrites the same file. `write_kwargs` as
    Curator's: `storage_options` reaches object storage, the rest goes to `pyarrow.parquet.write_table`;
    `fields` keeps only those columns."""

    path: str
    write_kwargs: dict[str, Any] = field(default_factory=dict)
    fields: list[str] | None = None
    file_extension: str = "parquet"
    name: str = "parquet_writer"
    mode: str = "ignore"  # Curator's; files are only ever added or rewritten here, never deleted

    def process(self, task: DocumentBatch) -> FileGroupTask:
        import pyarrow.parquet as pq

        table = task.to_pyarrow()
        if self.fields is not None:
            table = table.select(self.fields)
        options = dict(self.write_kwargs)
        storage_options = options.pop("storage_options", None)
        options.pop("index", None)  # pandas' option; a pyarrow table has no index
        source = task._metadata.get("source_files") or task._metadata.get("relative_path") or task.dataset_name
        digest = xxhash.xxh3_64(f"{source}\0{task.task_id}".encode()).hexdigest()
        target = join(self.path, f"{digest}.{self.file_extension}")
        write_atomic(target, lambda tmp: pq.write_table(table, tmp, **options), storage_options)
        return FileGroupTask(dataset_name=task.dataset_name, data=[target], task_id=task.task_id,
                             _metadata={**task._metadata, "format": self.file_extension},
                             _stage_perf=task._stage_perf)
