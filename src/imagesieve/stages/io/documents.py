"""Curator's way from images to a Parquet table of their fields (its image tutorial writes embeddings
so): `ConvertImageBatchToDocumentBatchStage(fields=...)`, then `ParquetWriter(path=...)`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash

from imagesieve.stages.base import ProcessingStage
from imagesieve.storage import join, read_schema, storage_for
from imagesieve.storage.runfolder import write_atomic
from imagesieve.tasks import DocumentBatch, FileGroupTask, ImageBatch

WRITTEN_BY = b"imagesieve.written_by"  # in each file's schema: what mode="overwrite" may delete


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
    mode: str = "ignore"  # Curator's: ignore/append add files; overwrite deletes ours first; error refuses a used path

    def __post_init__(self) -> None:
        """As Curator's writer, the mode acts once, when the stage is made (on the driver): "overwrite" starts
        from an empty folder, so that a shard gone from the input leaves no stale rows behind (its
        embeddings would keep images that are no longer in the dataset and remove their only copies). It
        deletes only the files a ParquetWriter wrote (their schema says so); any other file is refused,
        named, with nothing deleted. "error" refuses a path that holds files."""
        if self.mode not in ("ignore", "append", "overwrite", "error"):
            raise ValueError(f"ParquetWriter mode={self.mode!r}: choose ignore, append, overwrite or error")
        if self.mode not in ("overwrite", "error"):
            return
        store = storage_for(self.path, self.write_kwargs.get("storage_options"))
        files = store.list_files(self.path) if store.isdir(self.path) else []
        if files and self.mode == "error":
            raise FileExistsError(f"ParquetWriter(path={self.path!r}, mode='error'): the path already holds files "
                                  f"({files[0]}, ...); choose another path, or mode='overwrite'")
        foreign = [f for f in files if not self._wrote(f)]
        if foreign:
            raise ValueError(f"ParquetWriter(path={self.path!r}, mode='overwrite') deletes only the files a "
                             f"ParquetWriter wrote; {foreign[0]} is not one (and {len(foreign) - 1} more): move them, "
                             "or choose another path")
        for path in files:
            store.delete_file(path)

    def _wrote(self, path: str) -> bool:
        if not path.endswith("." + self.file_extension):
            return False
        try:
            metadata = read_schema(path, self.write_kwargs.get("storage_options")).metadata or {}
        except Exception:
            return False
        return metadata.get(WRITTEN_BY) == self.name.encode()

    def process(self, task: DocumentBatch) -> FileGroupTask:
        import pyarrow.parquet as pq

        table = task.to_pyarrow()
        if self.fields is not None:
            table = table.select(self.fields)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), WRITTEN_BY: self.name})
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
