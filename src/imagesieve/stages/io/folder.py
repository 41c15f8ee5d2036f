"""Image folders: read a chunk of image files as an `ImageBatch`, write the kept files to a mirror tree.

An image's ID is its path relative to the input folder (`cats/001.jpg`), the same in hash tables,
duplicate lists, groups and the report. Kept files are copied byte-for-byte (or hard-linked with
`link=True`) to the same relative path under the output folder, each atomically; the input folder
is never written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from dataclasses import dataclass

import pyarrow as pa

from imagesieve.stages.base import ProcessingStage
from imagesieve.stages.io.writer import REMOVED_SCHEMA, check_accounting
from imagesieve.storage.base import temp_name
from imagesieve.storage.local import file_fingerprint
from imagesieve.storage.ours import refuse_replacing_unknown_copy
from imagesieve.storage.runfolder import (
    current_umask,
    done_marker,
    keep_mode_of,
    make_folder,
    mirror_folders,
    naming_errors,
    publishing_record,
    read_json,
    work_path,
    write_json_atomic,
    write_parquet_atomic,
)
from imagesieve.tasks import FileGroupTask, ImageBatch, ImageObject, MemberRef


@dataclass
class ImageFolderReaderStage(ProcessingStage[FileGroupTask, ImageBatch]):
    """One chunk of an image folder (a `FileGroupTask` of image paths) -> one `ImageBatch`."""

    name: str = "image_folder_reader"

    def outputs(self) -> tuple[list[str], list[str]]:  # image_data: decoded on first access
        return ["data"], ["image_id", "image_path", "image_data", "members"]

    def process(self, task: FileGroupTask) -> ImageBatch:
        root = task._metadata["root"]
        images = []
        for path in task.data:
            rel = os.path.relpath(path, root)
            size = os.path.getsize(path)  # 0 bytes: a decode error for the stages that decode (see on_error)
            ext = rel.rsplit(".", 1)[-1]
            images.append(ImageObject(image_path=path, image_id=rel, members={ext: MemberRef(rel, path, 0, size)},
                                      shard=path, image_ext=ext))
        return ImageBatch(dataset_name=task.dataset_name, data=images, task_id=task.task_id,
                          _metadata={"relative_path": task.task_id, **task._metadata, "shard": task.task_id,
                                     "loose_members": []})


def place_file(source: str, target: str, link: bool) -> None:
    """Copy (or hard-link) `source` to `target`, atomically: a temp name, then a rename. A copy keeps
    the source's permission bits (a private file stays private); no link inside OUT is followed. A
    link shares the source's mode, so a file whose mode a copy would not keep (setuid, setgid, or wider
    than the umask allows) is copied instead."""
    make_folder(os.path.dirname(target))
    tmp = temp_name(target)
    mode = stat.S_IMODE(os.stat(source).st_mode)
    try:
        with naming_errors(target):
            if link and mode == mode & 0o777 & ~current_umask():
                os.link(source, tmp)
            else:
                shutil.copyfile(source, tmp)
                keep_mode_of(source, tmp)
            os.replace(tmp, target)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


@dataclass
class ImageFolderWriterStage(ProcessingStage[ImageBatch, FileGroupTask]):
    """Writes the kept images of a chunk to `output_dir/<ID>`, then the chunk's removed list and marker."""

    output_dir: str = ""
    link: bool = False  # hard-link instead of copying (same file system; the output then shares the inode)
    name: str = "image_folder_writer"

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["image_id"]

    def _ours_already(self, relative: str) -> tuple[dict[str, str | int], set[str]]:
        """What this chunk's earlier run recorded (kept file -> its version; a marker of an earlier
        imagesieve: its size) and what a killed run was placing (its publishing record)."""
        marker, record = done_marker(self.output_dir, relative), publishing_record(self.output_dir, relative)
        done = read_json(marker) if os.path.isfile(marker) else {}
        recorded = done.get("kept_versions") or done.get("kept_files", {})
        named = set(read_json(record).get("placing", [])) if os.path.isfile(record) else set()
        return recorded, named

    def process(self, task: ImageBatch) -> FileGroupTask:
        relative = task._metadata.get("relative_path") or task.task_id  # later stages may rename the task
        removed, samples_in = task.removed, task.samples_in
        check_accounting(relative, samples_in, len(task.data), len(removed))
        kept_files = {}
        mirrored = set()
        recorded, named = self._ours_already(relative)
        for image in task.data:  # every file checked before the record names any (a refused run names none)
            refuse_replacing_unknown_copy(os.path.join(self.output_dir, image.image_id), image.image_path,
                                          recorded.get(image.image_id), image.image_id in named)
        write_json_atomic({"placing": sorted(named.union(image.image_id for image in task.data))},
                          publishing_record(self.output_dir, relative))
        versions = {}
        for image in task.data:
            target = os.path.join(self.output_dir, image.image_id)
            if os.path.dirname(image.image_id) not in mirrored:
                mirror_folders(target, image.image_path, image.image_id)
                mirrored.add(os.path.dirname(image.image_id))
            place_file(image.image_path, target, self.link)
            st = os.stat(target)
            kept_files[image.image_id], versions[image.image_id] = st.st_size, file_fingerprint(st)
        write_parquet_atomic(pa.table([[r.image_id for r in removed], [relative] * len(removed),
                                       [r.reason for r in removed]], schema=REMOVED_SCHEMA),
                             work_path(self.output_dir, "removed", relative, ".parquet"))
        stats = {"shard": relative, "relative_path": relative,
                 "input_fingerprint": task._metadata["input_fingerprint"], "samples_in": samples_in,
                 "kept": len(task.data), "removed": len(removed), "bytes_out": sum(kept_files.values()),
                 "kept_files": kept_files, "kept_versions": versions,
                 "input_root": task._metadata["root"]}  # a link to root/ID is ours
        write_json_atomic(stats, done_marker(self.output_dir, relative))
        with contextlib.suppress(FileNotFoundError):  # the marker names the files now
            os.remove(publishing_record(self.output_dir, relative))
        return FileGroupTask(dataset_name=task.dataset_name, data=list(kept_files), task_id=task.task_id,
                             _metadata=stats)
