"""What a run reads, as units of per-shard work: tar shards, or chunks of a folder of image files.

A unit has a relative name (which names its outputs and work files), a fingerprint of the version
of the input it covers (so results of another version are never reused), and the task that reads
it. An image folder (INPUT holds image files and no tar shards) is cut into chunks of
`FOLDER_CHUNK` files in path order; an image's ID there is its path relative to INPUT.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from functools import cached_property

import xxhash

from imagesieve.runfolder import shard_fingerprint, strip_shard_suffix
from imagesieve.stages.io.partitioning import list_shards, walk_files
from imagesieve.stages.io.sidecar import sidecar_path
from imagesieve.storage import is_remote, is_under, join, storage_for
from imagesieve.tasks import FileGroupTask

FOLDER_CHUNK = 1000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class InputUnit:
    rel: str  # e.g. "sub/00000.tar", or "chunk-00000" of an image folder
    paths: tuple[str, ...]  # the tar shard, or the chunk's files (absolute)
    root: str = ""  # image folders: INPUT, against which IDs are taken
    storage_options: dict | None = field(default=None, compare=False, repr=False)  # for a URL (s3://...)

    @property
    def is_folder_chunk(self) -> bool:
        return bool(self.root)

    @cached_property
    def fingerprint(self) -> str:
        """The input version this unit covers, taken once: the listing decides what is done and what is
        redone, and the task records the same value (a folder chunk costs a stat per file)."""
        if not self.is_folder_chunk:
            return shard_fingerprint(self.paths[0], self.storage_options)
        digest = xxhash.xxh3_128()
        for path in self.paths:
            digest.update(f"{os.path.relpath(path, self.root)}\0{shard_fingerprint(path)}\0".encode())
        return digest.hexdigest()

    def task(self) -> FileGroupTask:
        metadata = {"relative_paths": {p: self.rel for p in self.paths}, "input_fingerprint": self.fingerprint}
        if self.is_folder_chunk:
            metadata.update(root=self.root, relative_path=self.rel)
        return FileGroupTask(dataset_name="input", data=list(self.paths), task_id=self.rel, _metadata=metadata)


def split_tail(tasks: list[FileGroupTask], workers: int) -> list[FileGroupTask]:
    """`tasks` with each of the last `workers` (tar shards, one each) cut into `workers` parts, read as
    `("part": (index, count))` says: the workers then finish together, where whole shards would leave
    one of them hashing a last shard alone while the others idle (a tenth of a run of ten shards).
    Only a stage that knows parts may come after the reader (the hash writer)."""
    if workers < 2:
        return tasks
    tail = len(tasks) - min(workers, len(tasks))
    parts = [replace(task, task_id=f"{task.task_id}#{index}", _metadata={**task._metadata, "part": (index, workers)})
             for task in tasks[tail:] for index in range(workers)]
    return tasks[:tail] + parts


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


RESERVED = ("summary.json", "removed.parquet", "_imagesieve")  # the run's own names at the top of an output


def input_units(input_path: str | list[str], output_dir: str, exclude: str | None = None,
                storage_options: dict | None = None) -> list[InputUnit]:
    """The units of work of INPUT: its tar shards, or the chunks of an image folder. Anything under
    `output_dir` (our own earlier output) or `exclude` is left out; an input inside the output folder
    is refused before anything is read or written."""
    check_input_outside(input_path, output_dir, storage_options)
    if isinstance(input_path, str) and os.path.isdir(input_path) and not _has_shards(input_path):
        return folder_units(input_path, exclude or output_dir)
    return [InputUnit(rel, (path,), storage_options=storage_options)
            for path, rel in input_shards(input_path, exclude or output_dir, storage_options)]


def check_input_outside(input_path: str | list[str], output_dir: str, storage_options: dict | None = None) -> None:
    """An output folder that holds the input would have the run clean up, write and list inside the
    input: refuse it (an output folder inside the input is fine, and left out of it)."""
    for source in [input_path] if isinstance(input_path, str) else input_path:
        if is_under(source, output_dir) and storage_for(source, storage_options).exists(source):
            raise ValueError(f"the input {source} lies inside the output folder {output_dir}; choose an output "
                             "folder outside the input")


def check_input_first(input_path: str | list[str], output_dir: str, storage_options: dict | None = None) -> None:
    """What must hold before a run creates anything (its output folder, its lock): each input path
    exists (patterns are checked when listed) and none lies inside the output folder."""
    for source in [input_path] if isinstance(input_path, str) else input_path:
        if not is_remote(source) and not any(c in source for c in "*?[{") and not os.path.exists(source):
            hint = " (a quoted '~' is not expanded by the shell: give the path without quotes)" \
                if source.startswith("~") else ""
            raise FileNotFoundError(f"input {source} does not exist{hint}")
    check_input_outside(input_path, output_dir, storage_options)


def _has_shards(folder: str) -> bool:
    try:
        return bool(list_shards(folder))
    except FileNotFoundError:
        return False


def folder_units(root: str, output_dir: str, chunk: int = FOLDER_CHUNK) -> list[InputUnit]:
    """Chunks of the image files under `root`, in path order (files under `output_dir` left out)."""
    out = os.path.realpath(output_dir)
    if os.path.realpath(root) == out:
        raise ValueError(f"output folder {output_dir} is the input folder; choose another output folder")
    files = [p for p in walk_files(root) if not os.path.realpath(p).startswith(out + os.sep)]
    clashes = [p for p in files if os.path.relpath(p, root).split(os.sep)[0] in RESERVED]
    if clashes:
        raise ValueError(f"{clashes[0]}: the output keeps its own {', '.join(RESERVED)} at the top of the tree, so "
                         "this input file would be overwritten there; rename or move it")
    images = sorted((p for p in files if is_image(p)), key=lambda p: os.path.relpath(p, root))
    if not images:
        raise FileNotFoundError(f"no tar shards and no image files ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    return [InputUnit(f"chunk-{k // chunk:05d}", tuple(os.path.abspath(p) for p in images[k:k + chunk]),
                      os.path.abspath(root)) for k in range(0, len(images), chunk)]


def other_files(root: str, output_dir: str) -> list[str]:
    """Files of an image folder that are not images (captions, notes), relative to it."""
    out = os.path.realpath(output_dir)
    return sorted(os.path.relpath(p, root) for p in walk_files(root)
                  if not is_image(p) and not os.path.realpath(p).startswith(out + os.sep))


def input_shards(input_path: str | list[str], output_dir: str,
                 storage_options: dict | None = None) -> list[tuple[str, str]]:
    """The shards to read: those of `input_path`, minus any inside `output_dir` (our own earlier output).

    Refuses an output folder that is the input folder, since output shards would replace inputs.
    """
    shards = []
    for path, rel in list_shards(input_path, storage_options=storage_options):
        if is_under(path, output_dir):
            if is_under(path, join(output_dir, rel)):  # the output shard would replace this input shard
                raise ValueError(f"output folder {output_dir} is where the input shard {path} lies; "
                                 "choose another output folder")
            continue
        shards.append((path, rel))
    if not shards:
        raise FileNotFoundError(f"no input shards in {input_path} outside the output folder {output_dir}")
    check_sidecars_distinct(shards, storage_options)
    return shards


def check_sidecars_distinct(shards: list[tuple[str, str]], storage_options: dict | None = None) -> None:
    """x.tar and x.tar.gz would both filter x.parquet into the same output file: refuse that input."""
    by_stem: dict[str, str] = {}
    for path, rel in shards:
        stem = strip_shard_suffix(rel)
        if stem in by_stem and storage_for(path, storage_options).exists(sidecar_path(path)):
            raise ValueError(f"{by_stem[stem]} and {path} share the metadata table {sidecar_path(path)}; "
                             "keep only one of the two shards in the input")
        by_stem[stem] = path
