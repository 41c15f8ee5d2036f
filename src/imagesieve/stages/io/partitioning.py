"""FilePartitioningStage: turn a folder, glob or list of shards into `FileGroupTask`s."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

from imagesieve.runfolder import SHARD_SUFFIXES
from imagesieve.stages.base import ProcessingStage
from imagesieve.tasks import EmptyTask, FileGroupTask


def list_shards(source: str | list[str], suffixes: tuple[str, ...] = SHARD_SUFFIXES) -> list[tuple[str, str]]:
    """(path, path relative to the input root) of every shard, sorted.

    `source` is a folder (searched recursively), a glob, a single file or a list of these. Files
    that are not shards (img2dataset's `.parquet` and `_stats.json` beside them) are skipped.
    """
    sources = [source] if isinstance(source, str) else list(source)
    found: dict[str, str] = {}
    for src in sources:
        if glob.has_magic(src):
            root = _glob_root(src)
            matches = [p for p in glob.glob(src, recursive=True) if os.path.isfile(p)]
        elif os.path.isdir(src):
            root = src
            matches = [os.path.join(d, f) for d, _, files in os.walk(src) for f in files]
        elif os.path.isfile(src):
            root = os.path.dirname(src)
            if not src.endswith(suffixes):
                raise ValueError(f"{src}: not a tar shard (expected a name ending in {', '.join(suffixes)})")
            matches = [src]
        else:
            raise FileNotFoundError(f"{src}: no such file or folder")
        for path in matches:
            if path.endswith(suffixes) and ".tmp-" not in os.path.basename(path):
                found[os.path.abspath(path)] = os.path.relpath(path, root or ".")
    if not found:
        raise FileNotFoundError(f"no tar shards ({', '.join(suffixes)}) found in {', '.join(sources)}")
    return sorted(found.items(), key=lambda item: item[1])


def _glob_root(pattern: str) -> str:
    parts = []
    for part in pattern.split(os.sep):
        if glob.has_magic(part):
            break
        parts.append(part)
    return os.sep.join(parts)


@dataclass
class FilePartitioningStage(ProcessingStage[EmptyTask, FileGroupTask]):
    """Lists shards and groups them, `files_per_partition` to a task (default one shard per task)."""

    file_paths: str | list[str] = field(default_factory=list)
    files_per_partition: int | None = 1  # None: 1, as in the reference
    file_extensions: tuple[str, ...] | list[str] | None = SHARD_SUFFIXES
    dataset_name: str = "dataset"
    blocksize: int | str | None = None  # the reference's; refused: a shard is never split or merged by size
    storage_options: dict | None = None  # the reference's; refused unless empty: paths here are local
    limit: int | None = None  # at most this many tasks
    name: str = "file_partitioning"

    def __post_init__(self) -> None:
        if self.blocksize is not None:
            raise ValueError("FilePartitioningStage: blocksize cannot apply here (tasks are whole shards); "
                             "use files_per_partition")
        if self.storage_options:
            raise ValueError("FilePartitioningStage: storage_options cannot apply here: imagesieve reads local "
                             "(or mounted) paths only")

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def process(self, task: EmptyTask) -> list[FileGroupTask]:
        shards = list_shards(self.file_paths, tuple(self.file_extensions or SHARD_SUFFIXES))
        size = max(1, self.files_per_partition or 1)
        tasks = [
            FileGroupTask(dataset_name=self.dataset_name, task_id=f"files_{i // size:06d}",
                          data=[p for p, _ in group],
                          _metadata={"relative_paths": {p: rel for p, rel in group}})
            for i in range(0, len(shards), size)
            for group in [shards[i:i + size]]
        ]
        return tasks[:self.limit] if self.limit is not None else tasks
