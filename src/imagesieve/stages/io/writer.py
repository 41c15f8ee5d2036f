"""ImageWriterStage: write the kept samples of a batch to an output shard, byte-for-byte.

Per shard it writes, each atomically: the tar, a Parquet index of the kept samples, a Parquet
list of the removed ones (with reasons, from the batch's typed ledger, `ImageBatch.removed`), the shard's
img2dataset metadata table without the removed keys (when there is one), and last a `done`
marker with the counts. A rerun skips shards whose marker exists.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import pyarrow as pa

from imagesieve.executors.accounting import AccountingError, check
from imagesieve.runfolder import (
    batch_relative_path,
    done_marker,
    shard_fingerprint,
    work_path,
    write_json_atomic,
    write_parquet_atomic,
)
from imagesieve.shards import AtomicShardWriter
from imagesieve.stages.base import ProcessingStage
from imagesieve.stages.io.sidecar import filter_sidecar, update_stats
from imagesieve.storage import join, storage_for
from imagesieve.tasks import FileGroupTask, ImageBatch, MemberRef

logger = logging.getLogger(__name__)
check_accounting = check

REMOVED_SCHEMA = pa.schema([("id", pa.string()), ("shard", pa.string()), ("reason", pa.string())])


__all__ = ["AccountingError", "ImageWriterStage", "REMOVED_SCHEMA", "check_accounting"]


def in_shard_order(kept: list[MemberRef], loose: list[MemberRef]) -> list[MemberRef]:
    """Kept members and members of no sample, merged in the order they had in the input shard."""
    if not loose:
        return kept
    return sorted([*kept, *loose], key=lambda ref: ref.header_offset if ref.header_offset >= 0 else ref.offset)


@dataclass
class ImageWriterStage(ProcessingStage[ImageBatch, FileGroupTask]):
    """Writes kept samples to `output_dir`, mirroring the input's shard names."""

    output_dir: str = ""
    fsync: bool = False  # force each shard to disk before renaming it into place
    # the reference's settings; output shards mirror input shards, so only these values apply
    images_per_tar: int | None = None
    verbose: bool = False
    deterministic_name: bool = True
    remove_image_data: bool = False
    name: str = "image_writer"
    storage_options: dict | None = field(default=None, repr=False)  # for an output_dir URL (s3://...)

    def __post_init__(self) -> None:
        if self.images_per_tar is not None:
            raise ValueError("ImageWriterStage: images_per_tar cannot apply here: each output shard holds the kept "
                             "samples of one input shard, under the same name; leave it unset")
        if not self.deterministic_name:
            raise ValueError("ImageWriterStage: deterministic_name=False cannot apply here: output shards always "
                             "carry their input shard's name (that is what makes reruns resume)")

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["image_id", "members"]

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def process(self, task: ImageBatch) -> FileGroupTask:
        if not self.output_dir:
            raise ValueError("ImageWriterStage needs output_dir")
        relative = batch_relative_path(task._metadata, task.task_id)
        shard = task._metadata.get("shard", relative)
        removed = task.removed
        removed_ids = [r.image_id for r in removed]
        samples_in = task.samples_in
        check_accounting(shard, samples_in, len(task.data), len(removed))

        out_path = join(self.output_dir, relative)
        options = self.storage_options
        keys, names, sizes, bytes_out = [], [], [], 0
        loose = task._metadata.get("loose_members", [])
        kept_refs = []
        for image in task.data:
            kept_refs.extend(image.members.values())
            bytes_out += sum(ref.size for ref in image.members.values())
            keys.append(image.image_id)
            names.append([ref.name for ref in image.members.values()])
            sizes.append([ref.size for ref in image.members.values()])
        with storage_for(out_path, options).writable(out_path) as local_out:  # a URL: a spool file, uploaded
            with AtomicShardWriter(local_out, self.fsync) as writer:
                # members of no sample (global headers, README, ._x.jpg) keep their place among the others
                for ref in in_shard_order(kept_refs, loose):
                    writer.add(ref)
            output_size = os.path.getsize(local_out)
        write_parquet_atomic(pa.table({"key": pa.array(keys, pa.string()),
                                       "members": pa.array(names, pa.list_(pa.string())),
                                       "sizes": pa.array(sizes, pa.list_(pa.int64()))}),
                             work_path(self.output_dir, "index", relative, ".parquet"), options)
        write_parquet_atomic(pa.table([removed_ids, [shard] * len(removed),
                                       [r.reason for r in removed]], schema=REMOVED_SCHEMA),
                             work_path(self.output_dir, "removed", relative, ".parquet"), options)
        sidecar = filter_sidecar(shard, relative, self.output_dir, removed_ids, options)
        img2dataset_stats = update_stats(shard, relative, self.output_dir, len(removed), options)
        stats = {"shard": shard, "relative_path": relative,
                 "input_fingerprint": shard_fingerprint(shard, options),
                 "output": out_path, "samples_in": samples_in,
                 "kept": len(task.data), "removed": len(removed), "bytes_out": bytes_out,
                 "output_size": output_size, "sidecar": sidecar,
                 "img2dataset_stats": img2dataset_stats,
                 "loose_members": [ref.name for ref in loose if ref.name]}
        write_json_atomic(stats, done_marker(self.output_dir, relative), options)
        if self.verbose:
            logger.info("Wrote %s: %d kept, %d removed", out_path, len(task.data), len(removed))
        if self.remove_image_data:
            for image in task.data:
                image.image_data = None
        return FileGroupTask(dataset_name=task.dataset_name, data=[out_path], task_id=task.task_id,
                             _metadata=stats)
