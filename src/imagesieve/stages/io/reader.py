"""ImageReaderStage: one tar shard -> one `ImageBatch` of its samples, without reading image bytes."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from imagesieve.stages.base import ProcessingStage
from imagesieve.stages.io.sidecar import input_fingerprint
from imagesieve.storage.shard_copy import shard_copy_of
from imagesieve.tar.names import ShardError
from imagesieve.tar.read import ShardReader, read_table
from imagesieve.tasks import FileGroupTask, ImageBatch

logger = logging.getLogger(__name__)


def part_rows(n: int, part: tuple[int, int]) -> np.ndarray:
    """The rows of part `(index, count)` of `n` samples: one of `count` nearly equal runs, in order."""
    index, count = part
    return np.arange(n * index // count, n * (index + 1) // count)


@dataclass
class ImageReaderStage(ProcessingStage[FileGroupTask, ImageBatch]):
    """Reads the samples of each shard. `image_id` is the WebDataset key, never a position.

    Every member of a sample (image, `.txt`, `.json`, ...) is carried as a reference to its bytes;
    pixels are decoded only by stages that ask for them (`ImageObject.image_data`, decoded on first
    access). Each batch's ledger starts at its sample count (`ImageBatch.samples_in`).

    A shard on object storage (`s3://...`, with `storage_options`) is streamed once into a private
    spool file. Its batch and member references carry the object's URL and the version read
    (`ShardCopy`), so a stage in another worker pool or on another node makes its own copy of that
    version; each copy is deleted when no task of that shard in its process is left.
    """

    # the reference's DALI settings: accepted so its pipelines run unchanged; nothing is decoded here
    dali_batch_size: int = 100
    verbose: bool = False
    num_threads: int = 8
    num_gpus_per_worker: float = 0.0
    name: str = "image_reader"
    storage_options: dict | None = field(default=None, repr=False)
    # lists this worker's shards, with tarfile until the compiled parser pays (`tar.read.ShardReader`)
    input_bytes: int = 0  # the size of the run's shards, when known: a large run lists with the compiled parser
    _reader: ShardReader | None = field(default=None, init=False, repr=False, compare=False)

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def outputs(self) -> tuple[list[str], list[str]]:  # image_data: decoded on first access
        return ["data"], ["image_id", "image_path", "image_data", "members"]

    def process(self, task: FileGroupTask) -> list[ImageBatch]:
        relative = task._metadata.get("relative_paths", {})
        if self.verbose:
            logger.info("Reading %d shard(s): %s", len(task.data), ", ".join(task.data))
        batches = [self.read_shard(path, relative.get(path, os.path.basename(path)), task.dataset_name,
                                   task._metadata.get("part")) for path in task.data]
        listed = task._metadata.get("input_fingerprint")
        sidecars = bool(task._metadata.get("sidecars"))
        for batch in batches:  # what later stages record as done: the version read, for a local shard (with
            read = batch._metadata["shard_table"].fingerprint  # its sidecars' versions, as the listing takes them)
            batch._metadata["input_fingerprint"] = listed if read is None else \
                input_fingerprint(batch._metadata["shard"], self.storage_options, sidecars, read)
        return batches

    def read_shard(self, shard: str, relative_path: str, dataset_name: str = "dataset",
                   part: tuple[int, int] | None = None) -> ImageBatch:
        copy = shard_copy_of(shard, self.storage_options)
        if copy is None:  # a local file: read where it lies
            return self._read_local(shard, shard, relative_path, dataset_name, part)
        local = copy.path()
        try:
            batch = self._read_local(shard, local, relative_path, dataset_name, part)
        except ShardError as exc:
            raise ShardError(str(exc).replace(local, shard)) from exc
        table = batch._metadata["shard_table"]
        table.version = None  # a spool copy: the object's version is the copy's (checked by every process)
        table.source = copy
        return batch

    def _read_local(self, shard: str, local: str, relative_path: str, dataset_name: str,
                    part: tuple[int, int] | None) -> ImageBatch:
        """Samples of the tar at `local` (the shard itself, or its spool file), named after `shard`; with
        `part`, only that part of them (`inputs.split_tail`), whose first row the batch records."""
        if self._reader is None:
            self._reader = ShardReader(self.input_bytes)
        table = read_table(local, self._reader)
        table.display_shard = shard
        missing = np.flatnonzero(table.image_member < 0)
        if len(missing):
            row = int(missing[0])
            raise ShardError(f"{shard}: sample {table.keys[row]!r} has no image member "
                             f"(members: {', '.join(ref.name for ref in table.members(row).values())})")
        metadata = {"shard": shard, "relative_path": relative_path, "loose_members": table.loose(),
                    "shard_table": table}
        if part is None:
            return ImageBatch.from_table(table, dataset_name, relative_path, metadata)
        rows = part_rows(len(table), part)
        return ImageBatch.from_table(table, dataset_name, relative_path,
                                     {**metadata, "part": part, "first_row": int(rows[0]) if len(rows) else 0}, rows)
