"""FilePartitioningStage: turn a folder, glob or list of shards into `FileGroupTask`s."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from braceexpand import braceexpand

from imagesieve.stages.base import ProcessingStage
from imagesieve.storage import (
    absolute,
    common_folder,
    file_identity,
    is_pattern,
    listed_path,
    local_file,
    local_path,
    parent,
    relative_path,
    separator,
    storage_for,
)
from imagesieve.storage.base import WORK_DIR, is_temp_name, run_folder_on_the_way
from imagesieve.storage.listing import folder_files, refuse_a_users_records_folder, run_folder_test, walk_files
from imagesieve.storage.runfolder import SHARD_SUFFIXES
from imagesieve.tar.names import IMAGE_SUFFIXES
from imagesieve.tasks import EmptyTask, FileGroupTask

__all__ = ["FilePartitioningStage", "list_shards", "refuse_two_names", "walk_files"]  # walk_files: storage.listing's
LONGEST_SHARD_NAME = 255 - len(".parquet")  # a shard's records are named NAME.parquet, NAME.json


def list_shards(source: str | list[str], suffixes: tuple[str, ...] = SHARD_SUFFIXES,
                storage_options: dict | None = None) -> list[tuple[str, str]]:
    """(path, path relative to the input root) of every shard, sorted by the relative path.

    `source` is, as webdataset users write it: a folder (searched recursively, symlinked folders
    followed), a glob (`data/**/*.tar`), a brace pattern (`data/{00000..00999}.tar`), a single
    shard, a text file (`.txt`) listing any of these one per line, or a list of these. Files that
    are not shards (img2dataset's `.parquet` and `_stats.json` beside them) are skipped. Relative
    paths (which name the outputs) are taken from the common folder of all sources. Any of these may be
    a URL (`s3://bucket/shards/{00000..00099}.tar`), listed with `storage_options`.

    Each source leaves out what lies in an earlier run's folder below its root (`run_folder_on_the_way`):
    the folder itself, a glob's fixed part, the folder shared by a brace pattern's or a list file's
    entries. Naming a run's folder (`dedup_out/shards`) or a shard in it as a source reads it.
    """
    sources = [source] if isinstance(source, str) else list(source)
    matched: dict[str, str] = {}  # absolute path -> the root it was found under
    left_out, images = 0, []
    for spec in sources:
        here = {absolute(path): absolute(root or ".") for src in _expand(spec)
                for path, root in _match(src, suffixes, storage_options, images)}
        top = common_folder(list(set(here.values())))
        holds = run_folder_test(storage_options, top)
        for path, root in here.items():
            away = run_folder_on_the_way(path, top, holds)
            if away is None:
                matched.setdefault(path, root)
            else:
                if away.rstrip("/").rsplit(separator(away), 1)[-1] == WORK_DIR:
                    refuse_a_users_records_folder(away, storage_options)
                left_out += 1
    if not matched:
        raise FileNotFoundError(f"no tar shards ({', '.join(suffixes)}) found in {', '.join(map(str, sources))}" + (
            f" but {left_out} in folders of earlier imagesieve runs, whose outputs are never input" if left_out else
            "; a folder of image files is read when it is INPUT itself (not a glob or a list)"))
    if images:  # a run reads one kind: loose images beside shards would be in neither output nor removed list
        raise ValueError(f"the input holds both tar shards ({_a_few(list(matched))}) and loose image files "
                         f"({_a_few(images)}); a run reads one kind: list only the shards, or pass the image "
                         "folder alone as INPUT")
    common = common_folder(list(set(matched.values())))
    found = {path: relative_path(path, common) for path in matched}
    refuse_two_names(list(found))
    for path, relative in found.items():  # names an output: it must lie inside OUT
        if len(os.path.basename(relative).encode("utf-8", "surrogateescape")) > LONGEST_SHARD_NAME:
            raise ValueError(f"{path}: the name is too long for the records kept beside its output (at most "
                             f"{LONGEST_SHARD_NAME} bytes, as `NAME.parquet` must fit in 255); rename it")
        if relative == ".." or relative.startswith(("../", ".." + os.sep)) or os.path.isabs(relative):
            raise ValueError(f"{path}: its path relative to the input ({common}) leaves it ({relative}); "
                             "list the shards under one folder")
    return sorted(found.items(), key=lambda item: item[1])


def _a_few(paths: list[str], count: int = 3) -> str:
    return ", ".join(sorted(paths)[:count]) + (f" and {len(paths) - count} more" if len(paths) > count else "")


def refuse_two_names(paths: list[str]) -> None:
    """One shard listed under two names (a symlinked folder, a hard link) would be read, counted and
    written twice, once under each name: refuse the input, naming both."""
    seen: dict[tuple[int, int], str] = {}
    for path in paths:
        key = file_identity(path)  # links followed: one identity for every name of the file (none for an object)
        if key is None:
            continue
        if key in seen:
            raise ValueError(f"{seen[key]} and {path} are the same file under two names (a symlink or a hard "
                             "link): list it once")
        seen[key] = path


def _expand(spec: str) -> list[str]:
    """A brace pattern's paths, a list file's lines (each expanded again), or the spec itself."""
    spec = local_path(spec)
    if "{" in spec and "}" in spec and is_pattern(spec):
        return list(braceexpand(spec))
    if spec.endswith((".txt", ".lst")) and local_file(spec):
        with open(spec, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        folder = os.path.dirname(spec)
        return [p for line in lines for p in _expand(listed_path(line, folder))]
    return [spec]


def _match(src: str, suffixes: tuple[str, ...], storage_options: dict | None = None,
           images: list[str] | None = None) -> Iterator[tuple[str, str]]:
    """(shard path, root) for one expanded source: a glob, a folder (a prefix, on object storage: listed
    recursively) or one file. The image files it names or holds are added to `images`; a shard named in
    another case (`00001.TAR`) is refused, naming it, never silently skipped."""
    store = storage_for(src, storage_options)
    if glob.has_magic(src) and is_pattern(src) and not (store.remote and store.exists(src)):
        root, paths = _glob_root(src, separator(src)), store.glob(src)
    elif store.isfile(src):
        if not src.endswith(suffixes):
            raise ValueError(f"{src}: not a tar shard (expected a name ending in {', '.join(suffixes)})")
        root, paths = parent(src), [src]
    elif store.isdir(src):
        root, paths = src, folder_files(src, storage_options)  # as `list_shards` would, in one listing
    else:
        raise store.missing(src)
    for path in paths:
        name = path.rsplit(separator(path), 1)[-1]
        if is_temp_name(name):
            continue
        if name.endswith(suffixes):
            yield path, root
        elif images is not None and name.lower().endswith(IMAGE_SUFFIXES):
            images.append(path)
        else:
            refuse_shard_in_other_case(path, suffixes)


def refuse_shard_in_other_case(path: str, suffixes: tuple[str, ...] = SHARD_SUFFIXES) -> None:
    """`00001.TAR` is neither read as a shard nor skipped without a word: refused, naming it."""
    if path.lower().endswith(suffixes) and not path.endswith(suffixes):
        raise ValueError(f"{path}: a tar shard whose extension is not lower case is not read as one; rename it "
                         f"(to {', '.join(suffixes)})")


def _glob_root(pattern: str, sep: str = os.sep) -> str:
    parts = []
    for part in pattern.split(sep):
        if glob.has_magic(part):
            break
        parts.append(part)
    return sep.join(parts)


@dataclass
class FilePartitioningStage(ProcessingStage[EmptyTask, FileGroupTask]):
    """Lists shards and groups them, `files_per_partition` to a task (default one shard per task)."""

    file_paths: str | list[str] = field(default_factory=list)
    files_per_partition: int | None = 1  # None: 1, as in the reference
    file_extensions: tuple[str, ...] | list[str] | None = SHARD_SUFFIXES
    dataset_name: str = "dataset"
    blocksize: int | str | None = None  # the reference's; refused: a shard is never split or merged by size
    storage_options: dict | None = None  # the reference's: for URLs (s3://, gs://), passed to fsspec
    limit: int | None = None  # at most this many tasks
    name: str = "file_partitioning"

    def __post_init__(self) -> None:
        if self.blocksize is not None:
            raise ValueError("FilePartitioningStage: blocksize cannot apply here (tasks are whole shards); "
                             "use files_per_partition")

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def process(self, task: EmptyTask) -> list[FileGroupTask]:
        shards = list_shards(self.file_paths, tuple(self.file_extensions or SHARD_SUFFIXES), self.storage_options)
        size = max(1, self.files_per_partition or 1)
        tasks = [
            FileGroupTask(dataset_name=self.dataset_name, task_id=f"files_{i // size:06d}",
                          data=[p for p, _ in group],
                          _metadata={"relative_paths": {p: rel for p, rel in group}})
            for i in range(0, len(shards), size)
            for group in [shards[i:i + size]]
        ]
        return tasks[:self.limit] if self.limit is not None else tasks
