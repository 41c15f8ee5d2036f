"""ImageWriterStage: write the kept samples of a batch to an output shard, byte-for-byte.

Per shard it writes, each atomically: the tar, a Parquet index of the kept samples, a Parquet
list of the removed ones (with reasons, from the batch's typed ledger, `ImageBatch.removed`), the shard's
img2dataset metadata table without the removed keys (when there is one), and last a `done`
marker with the counts. A rerun skips shards whose marker exists.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imagesieve.stages.base import ProcessingStage, WorkerMetadata
from imagesieve.stages.io.sidecar import Publishing, filter_sidecar, update_stats
from imagesieve.storage import is_under, join, storage_for
from imagesieve.storage.local import file_fingerprint
from imagesieve.storage.ours import file_digest, refuse_replacing_unknown
from imagesieve.storage.runfolder import (
    WORK_DIR,
    batch_relative_path,
    done_marker,
    live_holder,
    make_folder,
    mirror_folders,
    publishing_record,
    read_json,
    refuse_foreign_files,
    run_owner,
    shard_fingerprint,
    work_path,
    write_json_atomic,
    write_parquet_atomic,
)
from imagesieve.tar.names import split_key
from imagesieve.tar.table import ShardTable
from imagesieve.tar.write import AtomicShardWriter
from imagesieve.tasks import (
    AccountingError,
    FileGroupTask,
    ImageBatch,
    ImageObject,
    MemberRef,
    check_accounting,
    table_rows,
)

logger = logging.getLogger(__name__)

REMOVED_SCHEMA = pa.schema([("id", pa.string()), ("shard", pa.string()), ("reason", pa.string())])


__all__ = ["AccountingError", "ImageWriterStage", "REMOVED_SCHEMA", "check_accounting"]


def in_shard_order(kept: list[MemberRef], loose: list[MemberRef]) -> list[MemberRef]:
    """Kept members and members of no sample, merged in the order they had in the input shard
    (whatever order a stage left the images in: output shards keep the input's order)."""
    return sorted([*kept, *loose], key=lambda ref: ref.header_offset if ref.header_offset >= 0 else ref.offset)


INDEX_SCHEMA = pa.schema([("key", pa.string()), ("members", pa.list_(pa.string())), ("sizes", pa.list_(pa.int64()))])


def refuse_moved_images(images: list, table: ShardTable) -> None:
    """A batch is written to its own shard's output: an image read from another shard (a stage with a
    `batch_size` that merged batches, or moved an image from one to another) would land in the wrong
    output and leave its own shard short, with every count still balanced. Refused, naming both shards."""
    for image in images:
        source = image.__dict__.get("_source")
        if source is not None and source[0] is not table and getattr(source[0], "shard", None) != table.shard:
            raise AccountingError(f"{table.shard}: its batch holds sample {image.image_id!r} read from "
                                  f"{source[0].shard}; a stage moved images between batches, which would write "
                                  "a sample into another shard's output: a stage returns each batch's own images")


def kept_rows(task: ImageBatch, table: ShardTable | None) -> np.ndarray | None:
    """The table rows of the batch's images when every one still has the members read from `table` and
    they are in shard order: then the output is copied as byte ranges of the table, with no per-member
    objects. None otherwise (a stage made or changed images), and the members are written one by one."""
    if table is None or table.data is not None:
        return None
    if task.lazy_rows is not None:
        return task.lazy_rows  # no stage asked for the images: the reader's rows, in order
    rows = table_rows(task.data, table)
    if rows is None:
        return None
    rows = np.sort(np.array(rows, np.int64))  # output shards keep the input's order
    return rows if (np.diff(rows) > 0).all() else None


def write_from_table(writer: AtomicShardWriter, table: ShardTable, rows: np.ndarray) -> pa.Table:
    """Copy the kept samples (`rows`) and every member of no sample, in shard order; returns the index."""
    keep = np.zeros(len(table), bool)
    keep[rows] = True
    in_sample = table.sample_of >= 0
    member_kept = ~in_sample  # members of no sample (global headers, README, ._x.jpg) keep their place
    member_kept[in_sample] = keep[table.sample_of[in_sample]]
    writer.add_ranges(table.shard, table.header_offsets[member_kept], table.ends[member_kept])
    members = table.grouped[keep[table.sample_of[table.grouped]]]
    offsets = pa.array(np.concatenate([[0], np.cumsum(np.diff(table.starts)[rows])]), pa.int32())
    return pa.table([table.key_array.take(pa.array(rows, pa.int64())).cast(pa.string()),
                     pa.ListArray.from_arrays(offsets, table.name_array.take(pa.array(members, pa.int64()))
                                              .cast(pa.string())),
                     pa.ListArray.from_arrays(offsets, pa.array(table.sizes[members], pa.int64()))],
                    schema=INDEX_SCHEMA)


def write_members(writer: AtomicShardWriter, images: list[ImageObject], loose: list[MemberRef]) -> pa.Table:
    """Write each kept image's members (and the members of no sample) in shard order; returns the index."""
    keys, names, sizes, kept_refs = [], [], [], []
    for image in images:
        refs = list(image.members.values())
        if not refs:
            raise AccountingError(f"{image.image_path or 'a stage'}: sample {image.image_id!r} has no members read "
                                  "from a shard (a stage added it); output shards hold samples as read, byte-for-byte, "
                                  "so an image a stage makes cannot be written here: write it with your own writer")
        parts = split_key(refs[0].name)
        read_as = parts[0] if parts else image.image_id
        if read_as != image.image_id:
            raise AccountingError(f"{refs[0].shard}: a stage changed the image_id of sample {read_as!r} to "
                                  f"{image.image_id!r}; output shards keep samples as read (their member names), "
                                  "and removal and accounting follow IDs, so an ID may not change")
        kept_refs.extend(refs)
        keys.append(image.image_id)
        names.append([ref.name for ref in refs])
        sizes.append([ref.size for ref in refs])
    for ref in in_shard_order(kept_refs, loose):
        writer.add(ref)
    return pa.table([keys, names, sizes], schema=INDEX_SCHEMA)


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
    _folder_checked: bool = field(default=False, init=False, repr=False)  # output_dir passed, for this run

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        self._folder_checked = False  # a new run: output_dir may have changed hands since

    def __post_init__(self) -> None:
        if self.images_per_tar is not None:
            raise ValueError("ImageWriterStage: images_per_tar cannot apply here: each output shard holds the kept "
                             "samples of one input shard, under the same name; leave it unset")
        if not self.deterministic_name:
            raise ValueError("ImageWriterStage: deterministic_name=False cannot apply here: output shards always "
                             "carry their input shard's name (that is what makes reruns resume)")

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["image_id", "members"]

    def refuse_overwriting(self, shard: str, out_path: str) -> None:
        """The checks a run folder gets from the commands, for the stage used alone in a pipeline: never
        write over the input (an input shard inside `output_dir`), never replace a file that no imagesieve
        run wrote: a folder without `_imagesieve/` records (made before the first shard) must be empty."""
        if is_under(shard, self.output_dir):
            raise ValueError(f"{shard}: this input shard lies inside the output folder {self.output_dir}, so writing "
                             "would replace input; nothing was written for it: write to a folder outside the input")
        if self._folder_checked:  # the folder checks hold for the whole run: not redone per shard
            return
        store = storage_for(out_path, self.storage_options)
        records = join(self.output_dir, WORK_DIR)
        if store.exists(join(records, "run.json")) and live_holder(self.output_dir, self.storage_options) is None:
            owner = run_owner(self.output_dir, self.storage_options)
            raise ValueError(f"{self.output_dir} is the folder of an imagesieve {owner} run; writing {shard} there "
                             "would replace what that run wrote and leave its lists "
                             "wrong: write to another folder")
        if not store.isdir(records):
            if store.isdir(self.output_dir):
                refuse_foreign_files(self.output_dir, self.storage_options)
            make_folder(records)  # (object storage has none to make)
        self._folder_checked = True

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def _previous_record(self, relative: str) -> dict | None:
        """This shard's done marker from an earlier run into `output_dir` (None if none, or unreadable):
        it names the sidecars that run wrote, so that one whose input has gone since goes too."""
        marker = done_marker(self.output_dir, relative)
        try:
            if storage_for(marker, self.storage_options).exists(marker):
                return read_json(marker, self.storage_options)
        except (OSError, ValueError):
            pass
        return None

    def _before_publish(self, out_path: str, relative: str, previous: dict | None, temp_path: str) -> None:
        """Just before the complete file is published at `out_path`: a file there must be ours
        (`refuse_replacing_unknown`). What is about to be published is recorded first, with what runs
        killed before it were about to publish: locally its version, on object storage (where an object's
        version exists only once uploaded) a digest of its bytes; so a run killed right after its rename
        or upload still knows the file as its own."""
        options = self.storage_options
        record = publishing_record(self.output_dir, relative)
        store = storage_for(record, options)
        named = read_json(record, options) if store.exists(record) else {}
        versions, digests = named.get("output_versions", []), named.get("output_digests", [])
        old_size = previous.get("output_size") if previous and "output_version" not in previous else None
        refuse_replacing_unknown(out_path, temp_path, [(previous or {}).get("output_version"), *versions],
                                 old_size, options, digests)
        if store.remote:  # (what else the record names, a killed run's sidecars, stays)
            write_json_atomic({**named, "output_digests": [*digests[-7:], file_digest(temp_path)]}, record, options)
        else:
            write_json_atomic({**named, "output_versions": [*versions[-7:], file_fingerprint(os.stat(temp_path))]},
                              record)

    def process(self, task: ImageBatch) -> FileGroupTask:
        if not self.output_dir:
            raise ValueError("ImageWriterStage needs output_dir")
        relative = batch_relative_path(task._metadata, task.task_id)
        shard = task._metadata.get("shard", relative)
        removed = task.removed
        removed_ids = [r.image_id for r in removed]
        samples_in = task.samples_in
        check_accounting(shard, samples_in, task.num_items, len(removed))

        out_path = join(self.output_dir, relative)
        options = self.storage_options
        self.refuse_overwriting(shard, out_path)
        table = task._metadata.get("shard_table")
        if table is not None and task.lazy_rows is None:
            refuse_moved_images(task.data, table)
        rows = kept_rows(task, table)
        loose = task._metadata.get("loose_members", [])
        mirror_folders(out_path, shard, relative)
        previous = self._previous_record(relative)  # what an earlier run wrote for this shard, if recorded
        with storage_for(out_path, options).writable(out_path) as local_out:  # a URL: a spool file, uploaded
            versions = {table.shard: table.version} if table is not None and table.version else None
            compression = table.compression if table is not None else "by name"
            with AtomicShardWriter(local_out, self.fsync, versions, compression, mode_of=shard,
                                   before_publish=partial(self._before_publish, out_path, relative, previous)
                                   ) as writer:
                index = write_from_table(writer, table, rows) if rows is not None else \
                    write_members(writer, task.data, loose)
                if table is not None and table.ending is not None:  # a plain tar: the output ends as it did
                    writer.end_as(table.shard, *table.ending)  # (so a shard with nothing removed is identical)
            output_size = os.path.getsize(local_out)
        # keys and member names are all distinct: a dictionary would only cost time (a third of the write)
        write_parquet_atomic(index, work_path(self.output_dir, "index", relative, ".parquet"), options,
                             use_dictionary=False)
        bytes_out = int(pc.sum(pc.list_flatten(index.column("sizes"))).as_py() or 0)
        write_parquet_atomic(pa.table([removed_ids, [shard] * len(removed),
                                       [r.reason for r in removed]], schema=REMOVED_SCHEMA),
                             work_path(self.output_dir, "removed", relative, ".parquet"), options)
        publishing = Publishing(publishing_record(self.output_dir, relative), options)
        sidecar, sidecar_version = filter_sidecar(shard, relative, self.output_dir, removed_ids, publishing, options,
                                                  previous)
        img2dataset_stats, stats_version = update_stats(shard, relative, self.output_dir, len(removed), publishing,
                                                        options, previous)
        stats = {"shard": shard, "relative_path": relative,
                 "input_fingerprint": task._metadata.get("input_fingerprint") or shard_fingerprint(shard, options),
                 "output": out_path, "samples_in": samples_in,
                 "kept": task.num_items, "removed": len(removed), "bytes_out": bytes_out,
                 "output_size": output_size, "output_version": shard_fingerprint(out_path, options),
                 "sidecar": sidecar, "sidecar_version": sidecar_version,
                 "img2dataset_stats": img2dataset_stats, "stats_version": stats_version,
                 "loose_members": [ref.name for ref in loose if ref.name]}
        write_json_atomic(stats, done_marker(self.output_dir, relative), options)
        record = publishing_record(self.output_dir, relative)  # the done marker records the output now
        with contextlib.suppress(OSError):  # (a record left behind names only versions of ours)
            storage_for(record, options).delete_file(record)
        if self.verbose:
            logger.info("Wrote %s: %d kept, %d removed", out_path, task.num_items, len(removed))
        if self.remove_image_data and task.lazy_rows is None:  # (a lazy batch holds no decoded images)
            for image in task.data:
                image.image_data = None
        return FileGroupTask(dataset_name=task.dataset_name, data=[out_path], task_id=task.task_id,
                             _metadata=stats)
