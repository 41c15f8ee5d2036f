"""ImageWriterStage: write the kept samples of a batch to an output shard, byte-for-byte.

Per shard it writes, each atomically: the tar, a Parquet index of the kept samples, a Parquet
list of the removed ones (with reasons, from the batch's `removed` metadata), the shard's
img2dataset metadata table without the removed keys (when there is one), and last a `done`
marker with the counts. A rerun skips shards whose marker exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow as pa

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
from imagesieve.tasks import FileGroupTask, ImageBatch, MemberRef

REMOVED_SCHEMA = pa.schema([("id", pa.string()), ("shard", pa.string()), ("reason", pa.string())])


class AccountingError(RuntimeError):
    """Samples in != kept + removed: something was lost or counted twice."""


def check_accounting(where: str, samples_in: int, kept: int, removed: int) -> None:
    if samples_in != kept + removed:
        raise AccountingError(f"{where}: {samples_in} samples in but {kept} kept + {removed} removed "
                              f"= {kept + removed}; refusing to finish")


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
    name: str = "image_writer"

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["image_id", "members"]

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def process(self, task: ImageBatch) -> FileGroupTask:
        if not self.output_dir:
            raise ValueError("ImageWriterStage needs output_dir")
        relative = batch_relative_path(task._metadata, task.task_id)
        shard = task._metadata.get("shard", relative)
        removed = task._metadata.get("removed", [])
        removed_ids = [r["id"] for r in removed]
        samples_in = task._metadata.get("samples_in", len(task.data) + len(removed))
        check_accounting(shard, samples_in, len(task.data), len(removed))

        out_path = os.path.join(self.output_dir, relative)
        keys, names, sizes, bytes_out = [], [], [], 0
        loose = task._metadata.get("loose_members", [])
        kept_refs = []
        for image in task.data:
            kept_refs.extend(image.members.values())
            bytes_out += sum(ref.size for ref in image.members.values())
            keys.append(image.image_id)
            names.append([ref.name for ref in image.members.values()])
            sizes.append([ref.size for ref in image.members.values()])
        with AtomicShardWriter(out_path, self.fsync) as writer:
            # members of no sample (global headers, README, ._x.jpg) keep their place among the others
            for ref in in_shard_order(kept_refs, loose):
                writer.add(ref)
        write_parquet_atomic(pa.table({"key": pa.array(keys, pa.string()),
                                       "members": pa.array(names, pa.list_(pa.string())),
                                       "sizes": pa.array(sizes, pa.list_(pa.int64()))}),
                             work_path(self.output_dir, "index", relative, ".parquet"))
        write_parquet_atomic(pa.table([removed_ids, [shard] * len(removed),
                                       [r["reason"] for r in removed]], schema=REMOVED_SCHEMA),
                             work_path(self.output_dir, "removed", relative, ".parquet"))
        sidecar = filter_sidecar(shard, relative, self.output_dir, removed_ids)
        img2dataset_stats = update_stats(shard, relative, self.output_dir, len(removed))
        stats = {"shard": shard, "relative_path": relative, "input_fingerprint": shard_fingerprint(shard),
                 "output": out_path, "samples_in": samples_in,
                 "kept": len(task.data), "removed": len(removed), "bytes_out": bytes_out,
                 "output_size": os.path.getsize(out_path), "sidecar": sidecar,
                 "img2dataset_stats": img2dataset_stats,
                 "loose_members": [ref.name for ref in loose if ref.name]}
        write_json_atomic(stats, done_marker(self.output_dir, relative))
        return FileGroupTask(dataset_name=task.dataset_name, data=[out_path], task_id=task.task_id,
                             _metadata=stats)
